"""`jump label` end to end on the fixture: it recovers the true masks, the store contract, resume, bad fields,
imports, other-layout stores and corrected-label preference."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from dinocell_core.cli import main
from dinocell_core.jump.index import Field, index_fields
from dinocell_core.labels.cellprofiler import outline, relabel, touching_border
from dinocell_core.labels.qc import field_qc
from dinocell_core.labels.store import (
    GROUND_TRUTH_DIR,
    LabelsError,
    LabelStore,
    field_key,
)
from dinocell_core.seg.config import SegDataConfig
from dinocell_core.seg.data import load_samples
from dinocell_core.seg.metrics import evaluate_pairs
from dinocell_core.synthetic.fixture import make_jump_fixture

# The fixture's cells are smaller and dimmer than CPJUMP1's at 0.598 µm/px: its small nuclei (area 55–130 px) sit
# under the pipeline's 10-px minimum diameter and its dimmest nuclei (~0.01 after illumination division) under the
# 0.014 lower threshold bound. These two settings are scaled to the fixture; every other one, the cells' RNA
# threshold bounds (0.005, 0.014) included, is CPJUMP1's (all defaults: nuclei AP@0.5 0.89, cells 0.84 against the
# same border-free truth).
FIXTURE_PARAMS = ["--param", "min_diameter=5", "--param", "nuclei_bounds=0.008,1"]


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_jump_fixture(tmp_path_factory.mktemp("fx"), plates=2, wells=4, sites=2, size=192, seed=5)


@pytest.fixture(scope="module")
def labelled(fx, tmp_path_factory):
    out = tmp_path_factory.mktemp("labels") / "LABELS"
    before = tree_digest(fx.root)
    assert main(["jump", "label", str(fx.root), "-o", str(out), "--workers", "2", *FIXTURE_PARAMS]) == 0
    assert tree_digest(fx.root) == before  # the source tree is never written
    return out


def _scores(fx, store: LabelStore) -> dict[str, dict]:
    truth = LabelStore.open(fx.source_root / GROUND_TRUTH_DIR)
    pairs: dict[str, list] = {"nuclei": [], "cells": []}
    pairs_all: dict[str, list] = {"nuclei": [], "cells": []}
    for row in store.rows:
        gt_n, gt_c = truth.read_pair(truth.best(row.key))
        nuc, cells = store.read_pair(row)
        keep = ~touching_border(gt_n)  # CellProfiler discards border nuclei (and their cells) by design
        pairs["nuclei"].append((relabel(gt_n, keep), nuc))
        pairs["cells"].append((relabel(gt_c, keep), cells))
        pairs_all["nuclei"].append((gt_n, nuc))
        pairs_all["cells"].append((gt_c, cells))
    return {k: {"border_free": evaluate_pairs(pairs[k], [0.5]).as_dict(),
                "all": evaluate_pairs(pairs_all[k], [0.5]).as_dict()} for k in pairs}


def test_jump_label_recovers_the_fixture_ground_truth(fx, labelled, capsys) -> None:
    store = LabelStore.open(labelled)
    assert store.counts()["auto"] == fx.n_fields == 15
    s = _scores(fx, store)
    print("AP@0.5 vs fixture truth (border-free / all):",
          {k: (round(v["border_free"]["ap@0.50"], 3), round(v["all"]["ap@0.50"], 3)) for k, v in s.items()})
    assert s["nuclei"]["border_free"]["n_gt"] > 250
    assert s["nuclei"]["border_free"]["ap@0.50"] >= 0.9
    assert s["cells"]["border_free"]["n_gt"] == s["nuclei"]["border_free"]["n_gt"]
    assert s["cells"]["border_free"]["ap@0.50"] >= 0.8


def test_store_contract_files(fx, labelled) -> None:
    with open(labelled / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["plate", "well", "site", "nuclei", "cells", "source", "cytoplasm", "original_source",
                             "original_nuclei", "original_cells", "original_cytoplasm"]
    assert len(rows) == len({(r["nuclei"].split("/")[0], r["well"], r["site"]) for r in rows}) == 15
    r = rows[0]
    assert r["plate"] == "BR00116991" and r["source"] == "auto" and r["original_source"] == r["original_cells"] == ""
    assert r["nuclei"] == "BR00116991__2020-11-05T19_51_35-Measurement1/r01c01f01p01_nuclei.tiff"
    assert r["cytoplasm"] == "BR00116991__2020-11-05T19_51_35-Measurement1/r01c01f01p01_cytoplasm.tiff"
    with tifffile.TiffFile(labelled / r["cells"]) as tif:
        assert tif.pages[0].compression == 5 and tif.pages[0].dtype == np.uint16
    # cytoplasm = IdentifyTertiaryObjects(cells, nuclei, shrink): the cell's ids, nucleus interior removed, rim kept
    nuc, cells = (tifffile.imread(labelled / r[k]).astype(np.int32) for k in ("nuclei", "cells"))
    cyto = tifffile.imread(labelled / r["cytoplasm"]).astype(np.int32)
    rim = outline(nuc)
    assert cyto.max() > 0 and np.array_equal(cyto[cyto > 0], cells[cyto > 0])
    assert not cyto[(nuc > 0) & ~rim].any() and np.array_equal(cyto[rim], cells[rim])
    assert np.array_equal(cyto[nuc == 0], cells[nuc == 0])
    assert LabelStore.open(labelled).read(LabelStore.open(labelled).rows[0], "cytoplasm").max() == cyto.max()
    man = json.loads((labelled / "manifest.json").read_text())
    assert man["method"] == "cellprofiler" and man["params"]["min_diameter"] == 5.0
    assert man["params"]["nuclei_bounds"] == [0.008, 1.0] and man["params"]["maxima_distance"] == 8.0
    assert man["counts"]["auto"] == 15 and man["source_root"] == str(fx.root) and man["dinocell_version"]
    with open(labelled / "qc.csv", newline="") as fh:
        qc_rows = list(csv.DictReader(fh))
    assert len(qc_rows) == 15 and all(int(q["n_cells"]) > 0 for q in qc_rows)
    assert all(float(q["nuclei_threshold"]) >= 0.008 and 0.005 <= float(q["cells_threshold"]) <= 0.014
               for q in qc_rows)
    import cv2

    png = cv2.imread(str(labelled / "contact_sheet.png"))
    assert png is not None and png.shape[0] >= 256 and png.std() > 10


def test_rerun_resumes_and_changed_params_are_refused(fx, labelled, capsys) -> None:
    stamp = {p: p.stat().st_mtime_ns for p in labelled.rglob("*.tiff")}
    assert main(["jump", "label", str(fx.root), "-o", str(labelled), "--workers", "1", "--qc-fields", "0",
                 *FIXTURE_PARAMS]) == 0
    out = capsys.readouterr().out
    assert "0 fields labelled, 15 already in the store" in out
    assert {p: p.stat().st_mtime_ns for p in labelled.rglob("*.tiff")} == stamp
    assert main(["jump", "label", str(fx.root), "-o", str(labelled)]) == 1  # default params ≠ the store's
    assert "resuming needs the same method and params" in capsys.readouterr().err


def test_output_inside_the_tree_and_unknown_param_are_refused(fx, tmp_path, capsys) -> None:
    assert main(["jump", "label", str(fx.root), "-o", str(fx.root / "labels")]) == 1
    assert "the tree is never written" in capsys.readouterr().err
    assert main(["jump", "label", str(fx.root), "-o", str(tmp_path / "x"), "--param", "bogus=1"]) == 1
    assert "bogus" in capsys.readouterr().err and not (fx.root / "labels").exists()


def test_bad_fields_are_skipped_with_reasons_and_counted(tmp_path, capsys) -> None:
    info = make_jump_fixture(tmp_path / "bad", plates=1, wells=4, sites=2, size=96, seed=2)
    fields = index_fields(info.root).fields
    black, saturated, corrupt = fields[0], fields[1], fields[2]
    tifffile.imwrite(info.root / black.paths[5], np.zeros((96, 96), np.uint16), compression="lzw")
    tifffile.imwrite(info.root / saturated.paths[3], np.full((96, 96), 65535, np.uint16), compression="lzw")
    (info.root / corrupt.paths[5]).write_bytes(b"not a tiff")
    out = tmp_path / "LABELS"
    assert main(["jump", "label", str(info.root), "-o", str(out), "--workers", "1", "--qc-fields", "0"]) == 0
    printed = capsys.readouterr().out
    with open(out / "skipped.csv", newline="") as fh:
        skipped = {r["field"]: r["reason"] for r in csv.DictReader(fh)}
    assert "DNA (ch5) image is blank (every pixel = 0)" in skipped[black.key]
    assert "RNA (ch3) image is saturated (100% of pixels at 65535, limit 5%)" in skipped[saturated.key]
    assert "cannot decode TIFF" in skipped[corrupt.key] and corrupt.paths[5] in skipped[corrupt.key]
    assert "3 skipped" in printed and "1 incomplete in the tree" in printed and "missing ch3" in printed
    assert LabelStore.open(out).counts()["auto"] == len(fields) - 3
    man = json.loads((out / "manifest.json").read_text())
    assert man["last_run"]["skipped"] == 3 and man["last_run"]["incomplete"] == 1
    # the plate's illumination file gone: every field still to do says so; finished fields are kept
    illum = info.source_root / "images" / black.batch / "illum" / black.plate / f"{black.plate}_IllumDNA.npy"
    illum.unlink()
    (out / black.plate_folder / "r01c02f02p01_nuclei.tiff").unlink()
    assert main(["jump", "label", str(info.root), "-o", str(out), "--workers", "1", "--qc-fields", "0"]) == 0
    with open(out / "skipped.csv", newline="") as fh:
        reasons = [r["reason"] for r in csv.DictReader(fh)]
    assert len(reasons) == 4 and sum("IllumDNA.npy not found (or label with --no-illum)" in r for r in reasons) == 3
    assert LabelStore.open(out).counts()["auto"] == len(fields) - 4  # the field whose mask vanished is retried


def test_import_matches_by_name_and_checks_shape_and_dtype(fx, tmp_path, capsys) -> None:
    truth = LabelStore.open(fx.source_root / GROUND_TRUTH_DIR)
    src = tmp_path / "masks"
    rows = [truth.best(field_key(f)) for f in index_fields(fx.root, channels=(3, 5)).fields]
    for row in rows:
        for kind in ("nuclei", "cells"):
            dst = src / row.plate_folder / Path(row.path(kind)).name.replace("_", "-ch5sk1fk1fl1_", 1)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(truth.root / row.path(kind), dst)
    wrong_shape, as_float = rows[0], rows[1]
    tifffile.imwrite(src / wrong_shape.plate_folder / Path(wrong_shape.nuclei).name, np.zeros((50, 50), np.uint16))
    for p in (src / wrong_shape.plate_folder).glob("r01c01f01p01-ch5*_nuclei.tiff"):
        p.unlink()
    tifffile.imwrite(src / as_float.plate_folder / Path(as_float.cells).name.replace("_", "-ch5sk1fk1fl1_", 1),
                     np.zeros((192, 192), np.float32))
    out = tmp_path / "IMPORTED"
    assert main(["jump", "label", str(fx.root), "-o", str(out), "--method", "import", "--from", str(src),
                 "--qc-fields", "0"]) == 0
    with open(out / "skipped.csv", newline="") as fh:
        skipped = {r["field"]: r["reason"] for r in csv.DictReader(fh)}
    assert "mask shape (50, 50) differs from the field's image shape (192, 192)" in skipped[wrong_shape.key[0] + "/"
                                                                                            + "A01/1/1"]
    assert "integer object ids, got dtype float32" in skipped[f"{as_float.plate_folder}/{as_float.well}/"
                                                              f"{as_float.site}/1"]
    store = LabelStore.open(out)
    assert store.counts()["imported"] == 13 and store.manifest["method"] == "import"
    row = store.rows[3]
    np.testing.assert_array_equal(store.read(row, "cells"), truth.read(truth.best(row.key), "cells"))
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(truth.root / rows[2].nuclei, flat / Path(rows[2].nuclei).name)
    assert main(["jump", "label", str(fx.root), "-o", str(tmp_path / "I2"), "--method", "import", "--from",
                 str(flat)]) == 1
    assert "masks lie flat but the tree has 2 plate folders" in capsys.readouterr().err


def test_store_from_another_layout_is_refused_with_both_sides_named(fx, tmp_path) -> None:
    other = LabelStore.open_or_create(tmp_path / "other", {"method": "import"})
    lab = np.zeros((192, 192), np.int32)
    lab[10:30, 10:30] = 1
    other.write_field(Field("BR00999999", "P24", 9, "b", "BR00999999__2021-01-01T00_00_00-Measurement1", 1),
                      lab, lab, "imported")
    cfg = SegDataConfig(format="jump", path=str(fx.root), channel="DNA", labels=str(other.root))
    with pytest.raises(LabelsError, match=r"has no labels for any of the 15 fields.*BR00999999__.*BR00116991__"):
        load_samples(cfg)
    small = make_jump_fixture(tmp_path / "small", plates=1, wells=1, sites=1, size=64, seed=1)
    cfg = SegDataConfig(format="jump", path=str(fx.root), channel="DNA",
                        labels=str(small.source_root / GROUND_TRUTH_DIR))
    with pytest.raises(LabelsError, match=r"mask shape \(64, 64\) differs from the field's image shape \(192, 192\)"):
        load_samples(cfg)


def test_corrected_labels_are_preferred_and_can_be_required(fx, labelled, tmp_path) -> None:
    store_dir = tmp_path / "copy"
    shutil.copytree(labelled, store_dir)
    store = LabelStore.open(store_dir)
    f = next(x for x in index_fields(fx.root, channels=(3, 5)).fields if x.well == "A03")
    nuc, cells = store.read_pair(store.best(field_key(f)))
    edited = cells.copy()
    edited[edited == edited.max()] = 0  # a person deleted one cell
    auto = store.best(field_key(f))
    row = store.write_field(f, nuc, edited, "corrected")
    assert (row.source, row.original_source, row.original_cells) == ("corrected", "auto", auto.cells)
    assert store.get(field_key(f), "auto") == auto  # the automatic masks are kept
    assert np.array_equal(store.read(store.get(field_key(f), "auto"), "cells"), cells)
    assert (store_dir / f.plate_folder / "r01c03f01p01_cells.corrected.tiff").is_file()
    assert (store_dir / f.plate_folder / "r01c03f01p01_cytoplasm.corrected.tiff").is_file()
    # labels.csv: one row per field, the corrected masks in use, the automatic ones named in original_*
    with open(store_dir / "labels.csv", newline="") as fh:
        mine = [r for r in csv.DictReader(fh) if r["well"] == "A03" and r["site"] == "1"
                and r["nuclei"].startswith(f.plate_folder)]
    assert len(mine) == 1 and mine[0]["source"] == "corrected"
    assert mine[0]["cells"].endswith("_cells.corrected.tiff") and mine[0]["original_cells"] == auto.cells
    assert store.counts() == {"auto": 14, "imported": 0, "corrected": 1, "fields": 15}
    # qc.csv: the field's row now describes the corrected masks (one cell fewer), the other fields' rows unchanged
    qc_before = read_qc(labelled)
    qc_after = read_qc(store_dir)
    mine_qc = qc_after.pop(field_key(f))
    assert qc_before.pop(field_key(f))["source"] == "auto" and qc_after == qc_before
    assert mine_qc["source"] == "corrected" and mine_qc["nuclei_threshold"] == mine_qc["cells_threshold"] == ""
    assert {k: mine_qc[k] for k in field_qc(nuc, edited)} == {k: str(v) for k, v in field_qc(nuc, edited).items()}
    assert int(mine_qc["n_cells"]) == field_qc(nuc, cells)["n_cells"] - 1
    # a second correction keeps the automatic masks as the original; re-running jump label keeps both
    edited2 = edited.copy()
    edited2[edited2 == edited2.max()] = 0
    store.write_field(f, nuc, edited2, "corrected")
    assert assert_one_row(store_dir, f).original_cells == auto.cells
    assert main(["jump", "label", str(fx.root), "-o", str(store_dir), "--qc-fields", "0", *FIXTURE_PARAMS]) == 0
    again = assert_one_row(store_dir, f)
    assert again.source == "corrected" and again.original_source == "auto"
    assert int(read_qc(store_dir)[field_key(f)]["n_cells"]) == field_qc(nuc, edited2)["n_cells"]
    assert read_qc(store_dir)[field_key(f)]["source"] == "corrected" and len(read_qc(store_dir)) == 15
    assert np.array_equal(LabelStore.open(store_dir).read(again, "cells"), edited2)
    cfg = SegDataConfig(format="jump", path=str(fx.root), channel="Mito", labels=str(store_dir), max_images=2)
    first = load_samples(cfg)[0]
    assert first.name.startswith(f.key) and np.array_equal(first.labels, edited2)
    only = load_samples(cfg.model_copy(update={"corrected_only": True}))
    assert [s.name for s in only] == [f"{f.key}/ch1"]
    with pytest.raises(LabelsError, match="no corrected labels"):
        load_samples(SegDataConfig(format="jump", path=str(fx.root), channel="DNA", labels=str(labelled),
                                   corrected_only=True))


def read_qc(store_dir: Path) -> dict:
    """qc.csv by field (plate folder, well, site); a field listed twice fails."""
    with open(store_dir / "qc.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {(r["plate_folder"], r["well"], int(r["site"])): r for r in rows}
    assert len(out) == len(rows)
    return out


def assert_one_row(store_dir: Path, f: Field):
    store = LabelStore.open(store_dir)
    with open(store_dir / "labels.csv", newline="") as fh:
        keys = [(r["nuclei"].split("/")[0], r["well"], int(r["site"])) for r in csv.DictReader(fh)]
    assert len(keys) == len(set(keys)) and field_key(f) in keys
    return store.best(field_key(f))


def test_version_1_store_rows_merge_into_one_per_field(tmp_path) -> None:
    """A store written before labels.csv had one row per field (auto and corrected rows, no cytoplasm) still
    opens: its rows merge, the correction wins, and the next write rewrites it in the current layout."""
    root = tmp_path / "v1"
    (root / "P").mkdir(parents=True)
    lab = np.zeros((32, 32), np.int32)
    lab[4:12, 4:12] = 1
    for name in ("r01c01f01p01_nuclei.tiff", "r01c01f01p01_cells.tiff", "r01c01f01p01_cells.corrected.tiff",
                 "r01c01f01p01_nuclei.corrected.tiff"):
        tifffile.imwrite(root / "P" / name, lab.astype(np.uint16))
    (root / "labels.csv").write_text(
        "plate,well,site,nuclei,cells,source\n"
        "B1,A01,1,P/r01c01f01p01_nuclei.tiff,P/r01c01f01p01_cells.tiff,auto\n"
        "B1,A01,1,P/r01c01f01p01_nuclei.corrected.tiff,P/r01c01f01p01_cells.corrected.tiff,corrected\n")
    store = LabelStore.open(root)
    (row,) = store.rows
    assert (row.source, row.original_source, row.original_cells) == ("corrected", "auto", "P/r01c01f01p01_cells.tiff")
    with pytest.raises(LabelsError, match="has no cytoplasm mask"):
        store.read(row, "cytoplasm")
    store.flush()
    with open(root / "labels.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 1


def test_qc_flags() -> None:
    z = np.zeros((50, 50), np.int32)
    assert field_qc(z, z)["flags"] == "no_nuclei"
    cells = np.zeros((200, 200), np.int32)
    for i in range(6):
        cells[i * 10 : i * 10 + 5, 0:5] = i + 1
    cells[100:200, 100:200] = 7
    nuclei = np.where(cells > 0, cells, 0)
    q = field_qc(nuclei, cells)
    assert q["flags"] == "giant_cells" and q["n_cells"] == 7 and q["cell_area_p50"] == 25.0


def test_labels_keys_belong_to_format_jump() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="labels, corrected_only, label_sources and channels apply to format 'jump' only"):
        SegDataConfig(format="pairs", path="x", labels="LABELS")
    with pytest.raises(LabelsError, match="not a labels store"):
        LabelStore.open(Path("/nonexistent/labels"))


HOLD_STORE = ("import sys, time; from dinocell_core.labels.store import StoreLock; StoreLock(sys.argv[1]).acquire(); "
              "print('held', flush=True); time.sleep(600)")


def test_a_correction_is_refused_while_another_process_writes_the_store(fx, labelled, tmp_path, capsys) -> None:
    """A `jump label` run rewrites labels.csv/qc.csv every few seconds from its own copy: a correction saved then
    would be lost. The store lock makes the save fail loudly (nothing written) instead; the run is refused too."""
    store_dir = tmp_path / "copy"
    shutil.copytree(labelled, store_dir)
    f = next(x for x in index_fields(fx.root, channels=(3, 5)).fields if x.well == "A03")
    store = LabelStore.open(store_dir)
    nuc, cells = store.read_pair(store.best(field_key(f)))
    before = {p.name: p.read_bytes() for p in store_dir.glob("*.csv")}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_STORE, str(store_dir)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LabelsError, match=f"being written by pid {holder.pid}.*nothing was written"):
            store.write_field(f, nuc, cells, "corrected")
        assert not list(store_dir.rglob("*.corrected.tiff"))
        assert {p.name: p.read_bytes() for p in store_dir.glob("*.csv")} == before
        assert main(["jump", "label", str(fx.root), "-o", str(store_dir), "--qc-fields", "0", *FIXTURE_PARAMS]) == 1
        assert f"being written by pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # the OS released the dead holder's lock: the save now goes through, onto the store as it is on disk
    assert store.write_field(f, nuc, cells, "corrected").source == "corrected"
    assert assert_one_row(store_dir, f).source == "corrected"
