"""The index contract: file names are truth, one row per complete field, keys include plate folder and sk."""

from __future__ import annotations

import csv
import gzip
import os
import shutil
import subprocess
import sys

import pytest

from dinocell_core.jump.channels import channel_number
from dinocell_core.jump.index import (
    INDEX_COLUMNS,
    FileParts,
    field_stem,
    file_name,
    index_fields,
    index_load_data,
    load_index,
    parse_file_name,
    read_index_csv,
    write_index_csv,
)
from dinocell_core.synthetic.fixture import make_jump_fixture
from tests.helpers import REPO
from tests.helpers.processes import run_unprivileged

CLI = [sys.executable, "-m", "dinocell_core.cli"]


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_jump_fixture(tmp_path_factory.mktemp("idx"), plates=3, wells=3, sites=2, size=48, seed=2)


def _ids(fields):
    return [(f.plate_folder, f.well, f.site, f.sk) for f in fields]


def test_scan_finds_complete_fields_with_plate_and_sk_in_key(fx):
    res = index_fields(fx.root)
    assert len(res.fields) == fx.n_fields == 3 * 3 * 2 - 1
    assert res.n_incomplete == 1 and "missing ch3" in res.incomplete_examples[0]
    keys = {f.key for f in res.fields}
    assert len(keys) == len(res.fields)
    # r01c01f01 exists on every plate: the key keeps them apart.
    a01 = [f for f in res.fields if f.well == "A01" and f.site == 1]
    assert len(a01) == 3 and len({f.plate_folder for f in a01}) == 3
    bleach = [f for f in res.fields if f.plate == "BR00116992E"]
    assert bleach and {f.sk for f in bleach} == {5} and {f.batch for f in bleach} == {"2020_12_08_CPJUMP1_Bleaching"}
    f0 = res.fields[0]
    assert f0.plate == "BR00116991" and f0.well == "A01" and f0.site == 1 and f0.batch == "2020_11_04_CPJUMP1"
    assert f0.paths[8].endswith("r01c01f01p01-ch8sk1fk1fl1.tiff") and not os.path.isabs(f0.paths[8])
    assert (fx.root / f0.paths[8]).is_file()


def test_any_depth_and_extra_files_are_ignored(fx, tmp_path):
    deeper = index_fields(fx.source_root / "images")
    assert _ids(deeper.fields) == _ids(index_fields(fx.root).fields)
    assert deeper.fields[0].paths[1].startswith("2020_11_04_CPJUMP1/images/")
    # A README-style mirror without the batch level, plus stray files and an Index.idx.xml.
    src = next((fx.source_root / "images" / "2020_11_04_CPJUMP1" / "images").iterdir())
    mirror = tmp_path / "mirror" / src.name
    shutil.copytree(src, mirror)
    (mirror / "Images" / "Index.idx.xml").write_text("<xml/>")
    (mirror / "Images" / "r01c01f01p01-ch1sk1fk1fl1.tiff.bak").write_text("x")
    (mirror / "Images" / "r01c01f01-ch01.tiff").write_text("x")
    res = index_fields(tmp_path)
    assert len(res.fields) == 3 * 2 and res.n_incomplete == 0
    assert res.fields[0].plate_folder == src.name and res.fields[0].plate == src.name.split("__")[0]


def test_load_data_both_styles_and_gz_match_the_scan(fx, tmp_path):
    scan = index_fields(fx.root).fields
    url_csvs = sorted(fx.source_root.glob("workspace/load_data_csv/*/*/load_data.csv"))
    via_url = index_load_data(url_csvs, root=str(fx.root)).fields
    assert via_url == scan  # s3://cellpainting-gallery/ rewritten to the local root, same relative paths
    illum_csvs = sorted(fx.source_root.glob("workspace/load_data_csv/*/*/load_data_with_illum.csv"))
    assert index_load_data(illum_csvs, root=str(fx.root)).fields == scan
    gz = tmp_path / "load_data.csv.gz"
    with gzip.open(gz, "wb") as fh:
        fh.write(url_csvs[0].read_bytes())
    assert index_load_data([gz], root=str(fx.root)).fields == [f for f in scan if f.plate == "BR00116991"]
    # Without a root the S3 URLs stay absolute.
    remote = index_load_data([url_csvs[0]]).fields
    assert remote[0].paths[5].startswith("s3://cellpainting-gallery/cpg0000-jump-pilot/source_4/images/")
    # A row with an empty channel column is incomplete, not a crash.
    rows = list(csv.DictReader(open(url_csvs[0], newline="")))
    rows[0]["URL_OrigRNA"] = ""
    broken = tmp_path / "partial.csv"
    with open(broken, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = index_load_data([broken], root=str(fx.root))
    assert res.n_incomplete == 1 and len(res.fields) == len(rows) - 1
    not_ld = tmp_path / "other.csv"
    not_ld.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a load_data CSV"):
        index_load_data([not_ld])


def test_contract_csv_roundtrip_and_errors(fx, tmp_path):
    fields = index_fields(fx.root).fields
    out = tmp_path / "index.csv"
    write_index_csv(fields, out)
    with open(out, newline="") as fh:
        reader = csv.reader(fh)
        assert tuple(next(reader)) == INDEX_COLUMNS
        assert sum(1 for _ in reader) == len(fields)
    assert read_index_csv(out) == fields
    bad = tmp_path / "bad.csv"
    bad.write_text("plate,well\nBR1,A01\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_index_csv(bad)


def test_cache_is_reused_until_refresh(fx, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(fx.root, root)
    cache = root / ".dinocell" / "index.csv"
    first = load_index(root)
    assert cache.is_file() and cache.with_suffix(".json").is_file()
    victim = root / first[0].paths[2]
    victim.unlink()
    assert load_index(root) == first  # cached: no rescan
    refreshed = load_index(root, refresh=True)
    assert len(refreshed) == len(first) - 1 and first[0].key not in {f.key for f in refreshed}
    # A contract CSV can be given instead of a root.
    assert load_index(cache) == refreshed




def test_unreadable_folder_is_reported_not_fatal(fx, tmp_path):
    root = tmp_path / "perm"
    shutil.copytree(fx.root, root)
    locked = next((root / "cpg0000-jump-pilot/source_4/images/2020_11_04_CPJUMP1/images").iterdir())
    locked.chmod(0)
    try:
        r = run_unprivileged(
            "from dinocell_core.jump.index import index_fields\n"
            f"res = index_fields({str(root)!r})\n"
            "print(len(res.fields), len(res.unreadable), res.unreadable[0] if res.unreadable else '')\n"
            "print(sorted({f.plate_folder for f in res.fields}))\n")
    finally:
        locked.chmod(0o755)
    assert r.returncode == 0, r.stderr
    counts, folders = r.stdout.splitlines()[:2]
    n_fields, n_unreadable, first = counts.split(" ", 2)
    assert int(n_unreadable) == 1 and locked.name in first and "Permission denied" in first
    assert int(n_fields) == len(index_fields(fx.root).fields) - 3 * 2 and locked.name not in folders


def test_channel_numbers():
    assert channel_number("DNA") == channel_number("ch5") == channel_number(5) == channel_number("OrigDNA") == 5
    assert channel_number("brightfield") == 8 and channel_number("lowzbf") == 7
    for bad in ("ch9", 0, "GFP"):
        with pytest.raises(ValueError):
            channel_number(bad)


def test_cli_fixture_and_index(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = tmp_path / "cli"
    r = subprocess.run(CLI + ["fixture", "jump", str(out), "--plates", "2", "--wells", "2", "--sites", "1",
                              "--size", "48"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    csv_out = tmp_path / "index.csv"
    r = subprocess.run(CLI + ["jump", "index", str(out), "-o", str(csv_out)], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert "3 complete fields" in r.stdout and "1 incomplete fields left out" in r.stdout
    assert len(read_index_csv(csv_out)) == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run(CLI + ["jump", "index", str(empty)], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "no complete CPJUMP1 fields" in r.stderr


def test_one_parser_reads_cpjump1_file_names():
    """The index scan, load_data rows and the napari reader all read names through parse_file_name."""
    parts = parse_file_name("r03c12f09p01-ch5sk2fk1fl1.tiff")
    assert parts == FileParts(row=3, col=12, site=9, plane=1, channel=5, sk=2, fk=1, fl=1)
    assert parts.field == (3, 12, 9, 1, 2)
    assert parse_file_name(file_name(3, 12, 9, 5, 2)) == parts and field_stem(3, 12, 9) == "r03c12f09p01"
    for other in ("r03c12f09p01-ch5sk2fk1fl1.png", "r3c12f09p01-ch5sk2fk1fl1.tiff", "r03c12f09p01_nuclei.tiff"):
        assert parse_file_name(other) is None
