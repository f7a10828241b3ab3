"""benchmarks/gpu_check.py on a machine without a usable GPU (issue 24 item 1): no GPU → "no GPU" and exit 0; a
visible but unusable GPU → the reason and exit 2; the JSON report's schema as benchmarks/README.md documents it; and
the timing loop itself (frozen + unfrozen warm-up, timed unfrozen steps) on the CPU with the tiny config."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO
from tests.helpers.pretrain import subprocess_env, tiny_config

GPU_CHECK = REPO / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("bench_gpu_check", GPU_CHECK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


class FakeCuda:
    """A ``torch.cuda`` stand-in: what a machine's CUDA looks like to the probe."""

    def __init__(self, available: bool, count: int, warning: str | None = None, build: str | None = "13.0"):
        self.available, self.count, self.warning, self.build_version = available, count, warning, build

    def is_available(self) -> bool:
        if self.warning:
            import warnings

            warnings.warn(self.warning, UserWarning)
        return self.available

    def device_count(self) -> int:
        return self.count


def test_probe_tells_no_gpu_from_an_unusable_one(gpu_check):
    none = gpu_check.probe_gpu(FakeCuda(False, 0), device_nodes=lambda: [], smi=lambda: ([], None))
    assert none.status == "no_gpu" and none.reason is None
    old_driver = gpu_check.probe_gpu(
        FakeCuda(False, 1, "CUDA initialization: The NVIDIA driver on your system is too old (found version 12020)"),
        device_nodes=lambda: ["/dev/nvidia0"], smi=lambda: (["NVIDIA A100-SXM4-80GB"], "535.104"))
    assert old_driver.status == "unusable"
    assert "driver on your system is too old" in old_driver.reason and "535.104" in old_driver.reason
    cpu_wheel = gpu_check.probe_gpu(FakeCuda(False, 0, build=None), device_nodes=lambda: ["/dev/nvidia0"],
                                    smi=lambda: (["NVIDIA H100 80GB HBM3"], "580.65"))
    assert cpu_wheel.status == "unusable" and "has no CUDA" in cpu_wheel.reason


def test_main_exit_codes_and_report(gpu_check, tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = gpu_check.main(["--out", str(out)], probe=lambda: gpu_check.GpuProbe("no_gpu", torch="2.14"))
    assert rc == 0 and "no GPU" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert tuple(report) == gpu_check.REPORT_KEYS and report["schema"] == gpu_check.SCHEMA
    assert report["status"] == "no_gpu" and report["pretrain"] == []
    rc = gpu_check.main(["--out", str(out)], probe=lambda: gpu_check.GpuProbe("unusable", "driver 535 too old"))
    assert rc == 2 and "driver 535 too old" in capsys.readouterr().err
    assert json.loads(out.read_text())["reason"] == "driver 535 too old"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a usable GPU")
def test_the_real_check_on_this_machine(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(GPU_CHECK), "--out", str(out)], capture_output=True, text=True,
                          timeout=300, env=subprocess_env())
    report = json.loads(out.read_text())
    if report["status"] == "no_gpu":
        assert proc.returncode == 0 and "no GPU" in proc.stdout
    else:  # a GPU this torch cannot use: said, and a failure
        assert proc.returncode == 2 and report["reason"] and report["reason"] in proc.stderr


def test_readme_documents_the_schema(gpu_check):
    readme = (REPO / "benchmarks" / "README.md").read_text()
    section = readme[readme.index("## GPU check"):]
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", section, flags=re.M))
    assert gpu_check.SCHEMA in section
    assert set(gpu_check.REPORT_KEYS) | set(gpu_check.PRETRAIN_KEYS) <= documented


def test_timing_loop_warms_both_phases_then_times_the_unfrozen_one(gpu_check, fixture_root):
    cfg = tiny_config(fixture_root, 40, **{"warm_start.freeze_backbone_steps": 4, "warm_start.backbone_ramp_steps": 2,
                                           "optim.warmup_epochs": 0, "optim.freeze_last_layer_epochs": 0})
    planned = {"peak_memory_gb": 1.0, "step_s": {"A100-40": 0.1}, "gpu": None}
    r = gpu_check.time_pretraining(cfg, torch.device("cpu"), steps=3, warmup=2, planned=planned)
    assert tuple(r) == gpu_check.PRETRAIN_KEYS
    assert r["warmup_steps"] == 4 and r["steps"] == 3 and r["finite"] is True
    assert r["step_s"] > 0 and 0 <= r["data_wait_fraction"] < 1 and r["counted_flops_per_step"] > 0
    assert r["mfu"] is None and r["peak_memory_gb"] is None  # the CPU: no peak to divide by, no CUDA memory
