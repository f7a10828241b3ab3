"""Bad input with real broken files: clear errors from read_tiff, skipped-and-counted samples in training."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from dinocell_core.io.tiffio import BadImageError, read_tiff, write_tiff
from dinocell_core.jump.index import load_index
from dinocell_core.ssl.config import DataConfig
from dinocell_core.ssl.data import (
    FailureBudget,
    NoFieldsError,
    TooManyFailures,
    build_ssl_dataset,
    make_ssl_loader,
)
from dinocell_core.synthetic.fixture import make_jump_fixture

RNG = np.random.default_rng(0)
GOOD = RNG.integers(100, 40000, (64, 64)).astype(np.uint16)


@pytest.fixture()
def good(tmp_path: Path) -> Path:
    p = tmp_path / "good.tiff"
    write_tiff(p, GOOD)
    return p


def _broken(tmp_path: Path, good: Path, kind: str) -> Path:
    data = good.read_bytes()
    page = tifffile.TiffFile(good).pages[0]
    off, cnt = page.dataoffsets[0], page.databytecounts[0]
    p = tmp_path / f"{kind}.tiff"
    if kind == "truncated":
        p.write_bytes(data[: len(data) * 6 // 10])
    elif kind == "corrupt_strip":
        b = bytearray(data)
        b[off + cnt // 3: off + cnt // 3 + 300] = RNG.integers(0, 256, 300, dtype=np.uint8).tobytes()
        p.write_bytes(bytes(b))
    elif kind == "bad_header":
        p.write_bytes(b"XXXX" + data[4:])
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("this is not an image\n")
    elif kind == "uint8":
        write_tiff(p, (GOOD // 256).astype(np.uint8))
    elif kind == "float32":
        write_tiff(p, GOOD.astype(np.float32))
    elif kind == "rgb":
        tifffile.imwrite(p, np.stack([GOOD] * 3, axis=-1), photometric="rgb", compression="lzw")
    elif kind == "folder":
        p.mkdir()
    return p


@pytest.mark.parametrize("kind,reason", [
    ("truncated", "cannot decode"), ("corrupt_strip", "cannot decode"), ("bad_header", "not a TIFF"),
    ("empty", "not a TIFF"), ("text", "not a TIFF"), ("folder", "is a folder"),
])
def test_broken_files_raise_bad_image_error(tmp_path, good, kind, reason):
    p = _broken(tmp_path, good, kind)
    with pytest.raises(BadImageError, match=reason) as info:
        read_tiff(p)
    assert info.value.path == str(p) and str(p) in str(info.value)


@pytest.mark.parametrize("kind,reason", [("uint8", "dtype uint8, expected uint16"),
                                         ("float32", "dtype float32, expected uint16"),
                                         ("rgb", "shape")])
def test_wrong_dtype_or_shape(tmp_path, good, kind, reason):
    p = _broken(tmp_path, good, kind)
    with pytest.raises(BadImageError, match=reason):
        read_tiff(p, dtype=np.uint16, shape=(64, 64))


def test_missing_file_and_folder_replaced_by_file(tmp_path, good):
    with pytest.raises(BadImageError, match="file not found"):
        read_tiff(tmp_path / "nope.tiff")
    blocker = tmp_path / "Images"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(BadImageError, match="folder"):
        read_tiff(blocker / "r01c01f01p01-ch1sk1fk1fl1.tiff")


def test_unreadable_file_and_folder(tmp_path, good):
    from tests.helpers.processes import run_unprivileged

    folder = tmp_path / "locked"
    folder.mkdir()
    write_tiff(folder / "a.tiff", GOOD)
    good.chmod(0)
    folder.chmod(0)
    try:
        r = run_unprivileged(
            "from dinocell_core.io.tiffio import read_tiff, BadImageError\n"
            f"for p in ({str(good)!r}, {str(folder / 'a.tiff')!r}):\n"
            "    try:\n        read_tiff(p)\n        print('read', p)\n"
            "    except BadImageError as e:\n        print(e)\n")
    finally:
        good.chmod(0o644)
        folder.chmod(0o755)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines == [f"{good}: permission denied", f"{folder / 'a.tiff'}: permission denied"]


def test_16bit_precision_is_kept(good):
    img = read_tiff(good)
    assert img.dtype == np.uint16 and np.array_equal(img, GOOD) and img.max() > 255


# ------------------------------------------------------------------------------------------ in the SSL stream

@pytest.fixture(scope="module")
def fx_root(tmp_path_factory) -> Path:
    info = make_jump_fixture(tmp_path_factory.mktemp("bad"), plates=2, wells=4, sites=2, size=64, seed=3)
    return info.root


def _cfg(root: Path, **kw) -> DataConfig:
    base = dict(root=str(root), global_size=32, local_size=16, n_local=2, num_workers=0,
                max_failure_fraction=0.5, failure_min_samples=4)
    base.update(kw)
    return DataConfig(**base)


def test_bad_files_are_skipped_logged_and_counted(fx_root, tmp_path, good, caplog):
    root = tmp_path / "data"
    shutil.copytree(fx_root, root)
    fields = load_index(root)
    broken = {}
    for f, kind in zip(fields[:4] + fields[-1:], ["truncated", "corrupt_strip", "uint8", "missing",
                                                   "folder_as_file"]):
        target = root / f.paths[2]
        if kind == "missing":
            target.unlink()
        elif kind == "folder_as_file":
            images = target.parent
            shutil.rmtree(images)
            images.write_text("not a folder")
            broken.update({g.key: kind for g in fields if g.plate_folder == f.plate_folder})
        else:
            shutil.copy(_broken(tmp_path, good, kind), target)
        broken[f.key] = kind
    cfg = _cfg(root, max_failure_fraction=0.9)
    batches = list(make_ssl_loader(cfg, 8, batch_size=5, seed=0, steps=6))
    failures = [f for b in batches for f in b["failures"]]
    assert sum(b["n_failed"] for b in batches) == len(failures) > 0
    assert all(b["global"].shape == (2, 5, 1, 32, 32) for b in batches)
    bad_keys = set(broken)
    delivered = {k for b in batches for k in b["fields"]}
    assert not delivered & bad_keys
    reasons = " | ".join(r for _, r in failures)
    for expected in ("cannot decode", "dtype uint8", "file not found", "unreadable folder"):
        assert expected in reasons
    assert all(isinstance(p, str) and p for p, _ in failures)
    assert any("bad input skipped" in r.message for r in caplog.records)
    # Deterministic: the same stream skips the same fields again.
    again = list(make_ssl_loader(cfg, 8, batch_size=5, seed=0, steps=6))
    assert [b["fields"] for b in again] == [b["fields"] for b in batches]
    assert [b["failures"] for b in again] == [b["failures"] for b in batches]


def test_failure_budget_stops_with_clear_message(fx_root, tmp_path):
    root = tmp_path / "mostly_bad"
    shutil.copytree(fx_root, root)
    for f in load_index(root)[:-2]:
        (root / f.paths[1]).write_bytes(b"garbage")
    cfg = _cfg(root, max_failure_fraction=0.2, failure_min_samples=4)
    with pytest.raises(TooManyFailures, match="max_failure_fraction") as info:
        for _ in make_ssl_loader(cfg, 8, batch_size=4, seed=0, steps=20):
            pass
    assert "garbage" not in str(info.value) and "ch1sk" in str(info.value)
    budget = FailureBudget(0.1, min_samples=10)
    budget.update(5, 2)  # under min_samples: no decision yet
    with pytest.raises(TooManyFailures):
        budget.update(3, 1)


def test_root_without_fields_is_an_error_before_start(tmp_path, fx_root):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoFieldsError, match="no complete CPJUMP1 fields"):
        build_ssl_dataset(_cfg(empty), 8, 0)
    with pytest.raises(NoFieldsError, match="does not exist"):
        build_ssl_dataset(_cfg(tmp_path / "missing"), 8, 0)
    only_incomplete = tmp_path / "incomplete"
    shutil.copytree(fx_root, only_incomplete)
    for p in only_incomplete.rglob("*-ch4sk*.tiff"):
        p.unlink()
    with pytest.raises(NoFieldsError):
        build_ssl_dataset(_cfg(only_incomplete, refresh_index=True), 8, 0)
