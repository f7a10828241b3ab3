"""Hostile inputs to the labels store (issue 25 rows 1, 5, 6, 18): an index CSV whose plate folder climbs out of
the output folder, runs killed between the store's writes, cut or non-UTF-8 files in the store, and a second run
while one writes. Each is refused with one line naming the file, or repaired on the next run."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dinocell_core.cli import main
from dinocell_core.jump.index import index_fields, write_index_csv
from dinocell_core.labels.qc import QC_COLUMNS, QC_CSV
from dinocell_core.labels.store import LabelStore, field_key
from dinocell_core.synthetic.fixture import make_jump_fixture
from tests.helpers.hostile import files_under, one_error_line

PARAMS = ["--no-illum", "--qc-fields", "0", "--workers", "1", "--param", "min_diameter=5", "--param",
          "nuclei_bounds=0.008,1"]


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_jump_fixture(tmp_path_factory.mktemp("fx"), plates=1, wells=3, sites=2, size=96, seed=2)


@pytest.fixture(scope="module")
def labelled(fx, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store") / "LABELS"
    assert main(["jump", "label", str(fx.root), "-o", str(out), *PARAMS]) == 0
    return out


def _copy(store: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(store, tmp_path / "LABELS"))


def _qc_rows(store: Path) -> list[dict[str, str]]:
    with open(store / QC_CSV, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.hostile(row=1, case="index CSV with plate_folder=../../../x given to `jump label IDX -o LAB`")
def test_an_index_row_cannot_write_outside_the_store(fx, tmp_path, capsys):
    fields = index_fields(fx.root).fields
    for f in fields:  # absolute image paths, as an index someone hands you has them
        f.plate_folder = "../../../x"
        f.paths = {ch: str(fx.root / rel) for ch, rel in f.paths.items()}
    idx = tmp_path / "idx.csv"
    write_index_csv(fields, idx)
    out = tmp_path / "a" / "b" / "c" / "LAB"
    before = files_under(tmp_path)
    assert main(["jump", "label", str(idx), "-o", str(out), *PARAMS]) == 1
    err = one_error_line(capsys.readouterr().err)
    assert f"{idx}:2: bad index row (plate folder '../../../x' is not a plain folder name" in err
    assert files_under(tmp_path, skip=out) == before  # nothing written outside LAB
    assert not list(out.rglob("*.tiff"))
    LabelStore.open(out)  # and the store still opens


def _label(fx, store: Path) -> int:
    return main(["jump", "label", str(fx.root), "-o", str(store), *PARAMS])


@pytest.mark.hostile(row=5, case="kill -9 right after the labels.csv flush, or a qc.csv cut mid-line, then resume")
@pytest.mark.parametrize("kept", [0, 1.5])
def test_qc_rows_lost_to_a_kill_or_a_cut_are_rebuilt(fx, labelled, tmp_path, capsys, kept):
    store = _copy(labelled, tmp_path)
    full = {(r["plate_folder"], r["well"], r["site"]): r for r in _qc_rows(store)}
    assert len(full) == len(LabelStore.open(store).rows) >= 4
    lines = (store / QC_CSV).read_text().splitlines(keepends=True)
    cut = "".join(lines[: 1 + int(kept)]) + (lines[2][: len(lines[2]) // 2] if kept % 1 else "")
    (store / QC_CSV).write_text(cut)
    assert _label(fx, store) == 0
    assert f"{len(full) - int(kept)} qc.csv rows rebuilt from their masks" in capsys.readouterr().out
    rebuilt = {(r["plate_folder"], r["well"], r["site"]): r for r in _qc_rows(store)}
    assert rebuilt.keys() == full.keys()
    described = [c for c in QC_COLUMNS if not c.endswith("_threshold")]  # thresholds are not in the masks
    assert all({c: r[c] for c in described} == {c: full[k][c] for c in described} for k, r in rebuilt.items())


@pytest.mark.hostile(row=6, case="kill -9 during a labels-store manifest write, then a successful resume")
def test_temp_files_of_a_killed_write_are_removed_on_resume(fx, labelled, tmp_path):
    store = _copy(labelled, tmp_path)
    plate = next(p for p in store.iterdir() if p.is_dir())
    leftovers = [store / ".manifest.json.k1ll3d.tmp", store / ".labels.csv.a1.tmp", store / ".qc.csv.b2.tmp",
                 plate / ".r01c01f01p01_nuclei.tiff.c3.tmp"]
    for p in leftovers:
        p.write_bytes(b"half a file")
    users = store / ".notes.tmp"  # not a name the store writes: never touched
    users.write_text("mine")
    assert _label(fx, store) == 0
    assert [p for p in leftovers if p.exists()] == [] and users.read_text() == "mine"
    first = tmp_path / "first"  # killed during the very first write: only a temp file and the lock
    first.mkdir()
    (first / ".labels.csv.d4.tmp").write_bytes(b"plate,well")
    (first / ".labels.lock").write_text("{}")
    assert _label(fx, first) == 0
    assert not (first / ".labels.csv.d4.tmp").exists() and len(LabelStore.open(first).rows) == len(LabelStore.open(store).rows)


@pytest.mark.hostile(row=18, case="a truncated mask in a labels store: rerun relabels it, `models report` goes on")
def test_a_cut_mask_is_relabelled_and_the_report_leaves_it_out(fx, labelled, tmp_path, capsys, caplog):
    from dinocell_core.seg.report import models_report
    from tests.helpers.bundles import tiny_dna_bundle

    store = _copy(labelled, tmp_path)
    rows = LabelStore.open(store).rows
    mask = store / rows[0].nuclei
    whole = mask.read_bytes()
    mask.write_bytes(whole[: len(whole) // 2])  # an interrupted copy
    models = tmp_path / "models"
    tiny_dna_bundle(models, "dna")
    report = models_report(models, store, device="cpu")
    assert [r["fields"] for r in report if r["source"] == "auto"] == [len(rows) - 1]
    assert any(str(mask) in r.message and "left out of the report" in r.message for r in caplog.records)
    assert _label(fx, store) == 0
    assert f"1 with unreadable masks labelled again (e.g. {mask}: truncated" in capsys.readouterr().out
    assert mask.read_bytes() == whole  # labelled again, identically
    assert LabelStore.open(store).read_pair(LabelStore.open(store).rows[0])[0].max() > 0


@pytest.mark.hostile(row=18, case="a non-UTF-8 qc.csv: rerun and a saved correction rebuild it, naming the file")
def test_a_non_utf8_qc_csv_is_rebuilt_naming_it(fx, labelled, tmp_path, caplog):
    store = _copy(labelled, tmp_path)
    n = len(_qc_rows(labelled))
    (store / QC_CSV).write_bytes(b"plate,well\n\xff\xfe\x00garbage\n")
    assert _label(fx, store) == 0
    assert any(f"{store / QC_CSV}: not a readable qc.csv" in r.message for r in caplog.records)
    assert len(_qc_rows(store)) == n
    (store / QC_CSV).write_bytes(b"\xff\xfe\x00garbage\n")
    caplog.clear()
    s = LabelStore.open(store)
    f = next(f for f in index_fields(fx.root, channels=(3, 5)).fields if s.best(field_key(f)) is not None)
    nuc, cells = s.read_pair(s.best(field_key(f)))
    assert s.write_field(f, nuc, cells, "corrected").source == "corrected"  # the napari save goes through
    assert any(f"{store / QC_CSV}: not a readable qc.csv" in r.message for r in caplog.records)
    assert [r["source"] for r in _qc_rows(store)] == ["corrected"]


HOLD_RUN = ("import sys, time; from dinocell_core.labels.store import StoreLock; "
            "StoreLock(sys.argv[1], task='run').acquire(); print('held', flush=True); time.sleep(600)")


@pytest.mark.hostile(row=18, case="a second `jump label` while one runs: refusal worded for a run, not a save")
def test_a_second_run_is_told_a_run_holds_the_store(fx, labelled, tmp_path, capsys):
    store = _copy(labelled, tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_RUN, str(store)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = files_under(store)
        assert _label(fx, store) == 1
        err = one_error_line(capsys.readouterr().err)
        assert f"being written by pid {holder.pid}" in err and "(a `jump label` run;" in err
        assert "wait for it to finish, or label into another folder" in err and "save again" not in err
        assert files_under(store) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
