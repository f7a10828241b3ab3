"""Every foreseeable error is one line naming the file or key and the fix, with exit 1 (2 for usage/config)."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from dinocell_core.cli import main
from dinocell_core.io.images import ImageError, read_image
from dinocell_core.io.tiffio import BadImageError, read_tiff, write_tiff
from dinocell_core.jump.index import index_fields
from dinocell_core.jump.preprocess import read_field
from dinocell_core.ssl.data import build_ssl_dataset
from dinocell_core.synthetic.fixture import make_jump_fixture
from tests.helpers import REPO
from tests.helpers.pretrain import DEMO, subprocess_env, tiny_overrides

SRC = str(REPO / "src")


@pytest.fixture
def small_root(tmp_path) -> Path:
    return make_jump_fixture(tmp_path / "fx", plates=1, wells=2, sites=2, size=64, seed=4, edge_cases=False).root


def _last_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    return [ln for ln in stderr.splitlines() if ln.startswith("dinocell-core:")][-1]


@pytest.mark.parametrize("override, key", [
    ("optim.lr=.inf", "optim.lr: Input should be a finite number"),
    ("train.epochs=.inf", "train.epochs: Input should be a finite number"),
    ("seed=-1", "seed: Input should be greater than or equal to 0"),
    (f"seed={2**40}", "seed: Input should be less than or equal to 4294967295"),
    ("model.kwargs.foo=1", "model.kwargs.foo is not an accepted backbone argument"),
    ("model.kwargs.checkpoint_path=/etc/shadow", "model.kwargs.checkpoint_path is not an accepted"),
])
def test_bad_settings_are_config_errors_naming_the_key(override, key, tmp_path, capsys):
    assert main(["pretrain", str(DEMO), override, "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err and key in err
    assert not (tmp_path / "run" / "status.json").exists()


def test_a_binary_data_root_names_the_file(tmp_path):
    blob = tmp_path / "plate.bin"
    blob.write_bytes(b"\xff\xfe\x00 not text")
    r = subprocess.run([sys.executable, "-m", "dinocell_core.cli", "pretrain", str(DEMO), f"data.root={blob}",
                        "train.progress=false", "--run-dir", str(tmp_path / "run")], capture_output=True, text=True,
                       env=subprocess_env(), timeout=120)
    assert r.returncode == 1
    assert f"{blob}: not a text CSV file" in _last_error(r.stderr)


def test_too_many_failed_reads_is_one_line(small_root, tmp_path):
    for p in sorted(small_root.rglob("Images/*-ch5sk1*.tiff"))[:2]:  # half the fields
        p.write_bytes(b"II*\0broken")
    ov = tiny_overrides(small_root, 20, **{"data.failure_min_samples": 4, "data.max_failure_fraction": 0.1})
    r = subprocess.run([sys.executable, "-m", "dinocell_core.cli", "pretrain", str(DEMO), *ov, "--run-dir",
                        str(tmp_path / "run")], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert r.returncode == 1
    line = _last_error(r.stderr)
    assert "field reads failed" in line and "data.max_failure_fraction" in line and "-ch5sk1" in line


def test_disk_full_names_the_file(small_root, tmp_path):
    """RLIMIT_FSIZE makes writes fail the way a full disk does (EFBIG instead of ENOSPC) — also for root."""
    cache = tmp_path / "index.csv"
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200)); from dinocell_core.cli import main; "
            f"sys.exit(main(['jump', 'index', {str(small_root)!r}, '--cache', {str(cache)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert r.returncode == 1
    line = _last_error(r.stderr)
    assert f"{cache}: cannot write (File too large); check the free space" in line
    assert not cache.exists() and not list(tmp_path.glob(".index.csv.*.tmp"))


def test_export_backbone_of_a_pickle_is_refused_in_one_line(tmp_path, capsys):
    import pickle

    for proto in (2, 3, 4, 5):
        p = tmp_path / f"p{proto}.pth"
        p.write_bytes(pickle.dumps({"a": 1}, protocol=proto))
        assert main(["export-backbone", str(p), "-o", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{p}: this is a pickle/torch.save file" in err[0]


def test_a_wrong_size_channel_is_blamed_not_its_neighbour(small_root):
    field = index_fields(small_root).fields[0]
    ch1 = Path(field.path(str(small_root), 1))
    write_tiff(ch1, np.zeros((48, 48), np.uint16))
    with pytest.raises(BadImageError) as exc:
        read_field(str(small_root), field)
    assert exc.value.path == str(ch1) and "shape (48, 48), but the field's other 7 channels are (64, 64)" in str(
        exc.value)
    from dinocell_core.ssl.config import DataConfig

    ds = build_ssl_dataset(DataConfig(root=str(small_root), global_size=32, local_size=16, n_local=0), 8, 0)
    bad = next(f for f in ds.fields if f.key == field.key)
    with pytest.raises(BadImageError) as exc:
        ds.view(bad, "fluorescent_mean")
    assert exc.value.path == str(ch1)


def test_decompression_bomb_is_refused_from_its_header(tmp_path):
    bomb = tmp_path / "bomb.tiff"
    tile = np.zeros((2048, 2048), np.uint16)
    tifffile.imwrite(bomb, (tile for _ in range(100)), shape=(20480, 20480), dtype=np.uint16, tile=(2048, 2048),
                     compression="zlib")
    assert bomb.stat().st_size < 2_000_000  # declares 0.8 GB of pixels
    tracemalloc.start()
    with pytest.raises(BadImageError, match="declares 419,430,400 pixels"):
        read_tiff(bomb)
    with pytest.raises(ImageError, match="bomb.tiff: declares 419,430,400 pixels"):
        read_image(bomb)
    with pytest.raises(BadImageError, match=r"shape \(20480, 20480\), expected \(64, 64\)"):
        read_tiff(bomb, shape=(64, 64))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 50e6  # nothing was decoded


def test_jump_prepare_fails_when_fields_failed(small_root, tmp_path, capsys):
    bad = sorted(small_root.rglob("Images/*-ch2sk1*.tiff"))[:2]
    for p in bad:
        p.write_bytes(b"II*\0broken")
    out = tmp_path / "prep"
    assert main(["jump", "prepare", str(small_root), "global_size=32", "local_size=16", "-o", str(out),
                 "--workers", "1"]) == 1
    captured = capsys.readouterr()
    assert "prepared 2 of 4 fields" in captured.out
    assert "2 field(s) could not be prepared" in captured.err.strip().splitlines()[-1]
