"""Hostile inputs to profiling (issue 25 rows 9, 10, 12): a 4 MB `.pth` whose zip record inflates to 4 GiB given
as `profile embed --backbone`, an unreachable S3 endpoint, and a permutation null of 10¹². Each is one line that
names the file, endpoint or key, before anything is allocated or written."""

from __future__ import annotations

import socket

import pytest
import torch

from dinocell_core.cli import main
from dinocell_core.synthetic.fixture import make_jump_fixture
from tests.helpers.hostile import files_under, one_error_line, torch_zip_bomb


@pytest.mark.hostile(row=9, case="a 4.2 MB .pth zip declaring a 2³⁰-element tensor as `profile embed --backbone`")
def test_a_torch_zip_bomb_is_refused_before_torch_load(tmp_path, capsys, monkeypatch):
    bomb = torch_zip_bomb(tmp_path / "weights.pth")
    assert bomb.stat().st_size < 5_000_000
    root = make_jump_fixture(tmp_path / "fx", plates=1, wells=1, sites=1, size=64, seed=0).root

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load reached: it inflates the 4 GiB record before any check")

    monkeypatch.setattr(torch, "load", refuse)
    out = tmp_path / "profiles.csv"
    assert main(["profile", "embed", str(root), "-o", str(out), "--backbone", str(bomb), "--arch", "vit_test",
                 "--no-metadata", "--device", "cpu", "--quiet"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"{bomb}: its records declare 4,293,918,947 bytes in a {bomb.stat().st_size:,}-byte file" in line
    assert not out.exists()


@pytest.mark.hostile(row=10, case="`profile embed` against an unreachable S3 endpoint")
def test_an_unreachable_endpoint_is_the_error_reported(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DINOCELL_S3_TIMEOUT_S", "0.5")
    monkeypatch.setenv("DINOCELL_S3_ATTEMPTS", "2")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the index cache of an S3 root lives under ~/.cache
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    out = tmp_path / "profiles.csv"
    assert main(["profile", "embed", "s3://cellpainting-gallery/cpg0000-jump-pilot/source_4/images/", "-o",
                 str(out), "--endpoint-url", endpoint, "--quiet"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "S3 listing failed" in line and endpoint in line and "metadata" not in line
    assert files_under(tmp_path) == {}


@pytest.mark.hostile(row=12, case="`profile evaluate --null-size 1000000000000` (and as an override)")
@pytest.mark.parametrize("args, says", [
    (["--null-size", "1000000000000"], "null_size must lie in [1, 1,000,000], got 1,000,000,000,000"),
    (["null_size=1000000000000"], "null_size must lie in [1, 1,000,000], got 1,000,000,000,000"),
    (["batch_size=100000000000"], "batch_size: Input should be less than or equal to 10000000"),
])
def test_a_terabyte_null_is_refused_naming_the_key(tmp_path, capsys, args, says):
    profiles = tmp_path / "profiles.csv"  # scorable: the null is the next allocation
    rows = ["Metadata_Plate,Metadata_Well,Metadata_broad_sample,Metadata_control_type,f1,f2,f3"]
    for i in range(6):
        rows.append(f"P,A{i + 1:02d},,negcon,{i % 3},{(i * 7) % 5},{(i * 3) % 4}")
    for i, pert in enumerate(("x", "x", "y", "y")):
        rows.append(f"P,B{i + 1:02d},{pert},,{5 + i},{2 * i},{9 - i}")
    profiles.write_text("\n".join(rows) + "\n")
    assert main(["profile", "evaluate", str(profiles), "--null-size", "100", "-o", str(tmp_path / "ok"),
                 "--quiet"]) == 0
    out = tmp_path / "eval"
    assert main(["profile", "evaluate", str(profiles), *args, "-o", str(out), "--quiet"]) == 1
    assert says in one_error_line(capsys.readouterr().err)
    assert not out.exists()
