"""Hostile inputs to `segment-plate` (issue 25 rows 1 and 4): an index CSV whose plate folder climbs out of the
output folder, and an output folder made from one image tree resumed with another. Both are refused with one line
naming what is wrong, before anything is written; the same tree still resumes."""

from __future__ import annotations

import shutil

import pytest

from dinocell_core.cli import main
from dinocell_core.jump.index import index_fields, write_index_csv
from dinocell_core.seg.plate import MANIFEST
from dinocell_core.synthetic.fixture import make_jump_fixture
from tests.helpers.bundles import tiny_dna_bundle
from tests.helpers.hostile import files_under, one_error_line


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    tiny_dna_bundle(folder, "dna")
    return folder


def _run(models, root, out, *extra: str) -> int:
    return main(["segment-plate", str(models), str(root), "-o", str(out), "--device", "cpu", *extra])


@pytest.mark.hostile(row=1, case="index CSV with plate_folder=../../../x given to `segment-plate MODELS IDX -o OUT`")
def test_an_index_row_cannot_write_outside_the_output_folder(models, tmp_path, capsys):
    root = make_jump_fixture(tmp_path / "fx", plates=1, wells=2, sites=2, size=64, seed=1).root
    fields = index_fields(root).fields
    for f in fields:  # absolute image paths, as an index someone hands you has them
        f.plate_folder = "../../../x"
        f.paths = {ch: str(root / rel) for ch, rel in f.paths.items()}
    idx = tmp_path / "idx.csv"
    write_index_csv(fields, idx)
    out = tmp_path / "a" / "b" / "c" / "OUT"
    before = files_under(tmp_path)
    assert _run(models, idx, out) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"{idx}:2: bad index row (plate folder '../../../x' is not a plain folder name" in line
    assert files_under(tmp_path) == before and not out.exists()


@pytest.mark.hostile(row=4, case="segment-plate MODELS treeB -o OUT where OUT was made from treeA")
def test_an_output_folder_never_mixes_two_trees(models, tmp_path, capsys):
    tree_a = make_jump_fixture(tmp_path / "A", plates=1, wells=2, sites=2, size=64, seed=1).root
    tree_b = make_jump_fixture(tmp_path / "B", plates=1, wells=2, sites=2, size=96, seed=2).root
    out = tmp_path / "OUT"
    assert _run(models, tree_a, out, "--max-fields", "2") == 0
    capsys.readouterr()
    before = files_under(out)
    assert _run(models, tree_b, out) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"holds fields segmented from {tree_a.resolve()}, this run reads {tree_b.resolve()}" in line
    assert files_under(out) == before  # nothing of tree B was counted as done or written
    kept = tree_a.rename(tmp_path / "A.kept")  # tree A regenerated in place: same path, same layout, new images
    make_jump_fixture(tmp_path / "A", plates=1, wells=2, sites=2, size=96, seed=3)
    assert _run(models, tree_a, out) == 1
    assert "lists other image files than when this folder was written" in one_error_line(capsys.readouterr().err)
    assert files_under(out) == before
    shutil.rmtree(tree_a)
    kept.rename(tree_a)
    assert _run(models, tree_a, out) == 0  # the same tree resumes and finishes
    assert "2 already done" in capsys.readouterr().out
    assert '"tree"' in (out / MANIFEST).read_text()
