"""Costs of the shared-cluster safeguards, and the hostile-input cases tried / held.

    python benchmarks/hardening.py [--state-mb 200] [--timeout 1 --attempts 3] [--cases-only | --no-cases]

Prints: lock acquire/probe time; checkpoint save and verified-load throughput (the digest covers metadata and
tensors); seconds until a TCP endpoint that never answers ends in a StorageError; seconds from a process-group
SIGTERM to a checkpointed "stopped" exit of a tiny CPU pretraining run with 2 DataLoader workers. Then the table of
issue 25's hostile cases: every test marked ``hostile(row, case)`` in the hostile test modules is run (pytest) and
each case is printed with its row, surface, the variants tried and how many held.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# this folder holds benchmarks/profile.py, which would shadow the standard library's profile (torch imports it)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: one module per surface (labels, profiling, plate, bundles, configs, resume)
HOSTILE_MODULES = {
    "labels": "tests/core/labels/test_hostile.py",
    "profiling": "tests/core/profiling/test_hostile.py",
    "plate": "tests/core/seg/test_hostile_plate.py",
    "bundles": "tests/core/seg/test_hostile_bundles.py",
    "configs": "tests/core/test_hostile_configs.py",
    "resume": "tests/core/ssl/test_hostile_resume.py",
}


def bench_lock(tmp: Path, n: int = 200) -> None:
    from dinocell_core.runs.rundir import RunLock

    lock = RunLock(tmp / "run")
    t0 = time.perf_counter()
    for _ in range(n):
        lock.acquire()
        lock.release()
    t1 = time.perf_counter()
    for _ in range(n):
        lock.probe()
    t2 = time.perf_counter()
    print(f"run lock: acquire+release {1e3 * (t1 - t0) / n:.3f} ms, probe {1e3 * (t2 - t1) / n:.3f} ms")


def bench_digest(tmp: Path, mb: int) -> None:
    from dinocell_core.io.checkpoint import load_state, save_state

    n = mb * 2**20 // 4
    state = {"step": 1, "w": torch.randn(n // 4), "opt": {"m": torch.randn(n // 4), "v": torch.randn(n // 2)},
             "config": {"k": list(range(1000))}}
    path = tmp / "step_00000001.safetensors"
    t0 = time.perf_counter()
    save_state(path, state)
    t1 = time.perf_counter()
    load_state(path)
    t2 = time.perf_counter()
    size = path.stat().st_size / 2**20
    print(f"checkpoint {size:.0f} MB: save {size / (t1 - t0):.0f} MB/s, verified load {size / (t2 - t1):.0f} MB/s")


def bench_tarpit(timeout: float, attempts: int) -> None:
    from dinocell_core.io.storage import S3Storage, StorageError

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []

    def accept_forever() -> None:  # accept every connection, answer none
        while True:
            held.append(srv.accept()[0])

    threading.Thread(target=accept_forever, daemon=True).start()
    store = S3Storage(endpoint_url=f"http://127.0.0.1:{srv.getsockname()[1]}", timeout_s=timeout, attempts=attempts)
    t0 = time.perf_counter()
    try:
        list(store.list_tree("s3://bucket/prefix/"))
        outcome = "no error (unexpected)"
    except StorageError:
        outcome = "StorageError"
    print(f"silent endpoint ({attempts} attempts × {timeout:g} s): {outcome} after {time.perf_counter() - t0:.1f} s")


def bench_stop(tmp: Path) -> None:
    from dinocell_core.runs.rundir import RunDir, read_metrics
    from dinocell_core.synthetic.fixture import make_jump_fixture

    root = make_jump_fixture(tmp / "fx", plates=1, wells=2, sites=2, size=128, seed=0).root
    run = tmp / "stop"
    ov = [f"data.root={root}", "data.global_size=32", "data.local_size=16", "data.n_local=2", "data.num_workers=2",
          "model.kwargs={depth: 2}", "heads.out_dim=64", "heads.ibot_out_dim=64", "heads.hidden_dim=32",
          "heads.bottleneck_dim=16", "train.batch_size=4", "train.steps_per_epoch=1000", "train.epochs=1",
          "train.log_every=1", "train.checkpoint_every=100000", "train.progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "dinocell_core.cli", "pretrain", str(REPO / "configs" / "pretrain_demo.yaml"), *ov,
           "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    while not read_metrics(run / "metrics.jsonl") or read_metrics(run / "metrics.jsonl")[-1]["step"] < 3:
        if proc.poll() is not None:
            raise SystemExit("the run ended early")
        time.sleep(0.05)
    t0 = time.perf_counter()
    os.killpg(proc.pid, signal.SIGTERM)
    code = proc.wait()
    status = RunDir(run).read_status()
    print(f"process-group SIGTERM → exit {code}, state {status['state']}, checkpoint at step {status['step']} "
          f"in {time.perf_counter() - t0:.2f} s")


class _Cases:
    """pytest plugin: the outcome of every test marked ``hostile``, by (row, surface, case)."""

    def __init__(self) -> None:
        self.marks: dict[str, tuple[int, str, str]] = {}
        self.outcomes: dict[str, bool] = {}

    def pytest_collection_modifyitems(self, items: list) -> None:
        surfaces = {str(REPO / path): name for name, path in HOSTILE_MODULES.items()}
        for item in items:
            mark = item.get_closest_marker("hostile")
            if mark is not None:
                self.marks[item.nodeid] = (int(mark.kwargs["row"]), surfaces.get(str(item.path), "?"),
                                           str(mark.kwargs["case"]))

    def pytest_runtest_logreport(self, report) -> None:
        if report.nodeid in self.marks and (report.when == "call" or report.failed or report.skipped):
            self.outcomes[report.nodeid] = self.outcomes.get(report.nodeid, True) and report.passed

    def table(self) -> list[tuple[int, str, str, int, int]]:
        """(row, surface, case, variants tried, variants held), in row order."""
        cases: dict[tuple[int, str, str], list[bool]] = {}
        for nodeid, key in self.marks.items():
            cases.setdefault(key, []).append(self.outcomes.get(nodeid, False))
        return [(*key, len(v), sum(v)) for key, v in sorted(cases.items())]


def bench_cases() -> bool:
    """Run the hostile test modules and print the cases tried / held; True when every case held."""
    import contextlib
    import io

    import pytest

    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    cases = _Cases()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = pytest.main(["-q", "-p", "no:cacheprovider", "-m", "hostile", *HOSTILE_MODULES.values()],
                         plugins=[cases])
    if rc not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        raise SystemExit(f"the hostile test modules did not run (pytest exit {rc!r}): run "
                         f"pytest -m hostile {' '.join(HOSTILE_MODULES.values())} to see why")
    rows = cases.table()
    print(f"hostile cases (issue 25), {time.perf_counter() - t0:.0f} s:")
    width = max((len(r[2]) for r in rows), default=4)
    print(f"{'row':>3}  {'surface':<9}  {'case':<{width}}  tried  held")
    for row, surface, case, tried, held in rows:
        verdict = "yes" if held == tried else f"NO ({held}/{tried})"
        print(f"{row:>3}  {surface:<9}  {case:<{width}}  {tried:>5}  {verdict}")
    n_held = sum(held == tried for *_, tried, held in rows)
    missing = sorted(set(range(1, 19)) - {r[0] for r in rows})
    print(f"{n_held} of {len(rows)} cases held ({sum(r[3] for r in rows)} variants) over rows "
          f"{min(r[0] for r in rows)}–{max(r[0] for r in rows)}" + (f"; rows without a case: {missing}" if missing
                                                                    else "; every row has a case"))
    return n_held == len(rows) and not missing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state-mb", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--attempts", type=int, default=3)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--cases-only", action="store_true", help="only the table of hostile cases")
    which.add_argument("--no-cases", action="store_true", help="only the costs")
    args = ap.parse_args()
    if not args.cases_only:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            bench_lock(tmp)
            bench_digest(tmp, args.state_mb)
            bench_tarpit(args.timeout, args.attempts)
            bench_stop(tmp)
    if not args.no_cases and not bench_cases():
        raise SystemExit(1)


if __name__ == "__main__":
    main()
