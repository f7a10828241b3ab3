"""``models report`` on an S3 image tree (a real S3 API server, moto, holding an uploaded fixture) read through
``--endpoint-url``, as ``jump label`` reads one: the bucket is only read and the report equals the one made from the
local copy of the same tree."""

from __future__ import annotations

import csv

import pytest

pytest.importorskip("boto3")

from dinocell_core.cli import main  # noqa: E402
from dinocell_core.labels.store import GROUND_TRUTH_DIR  # noqa: E402
from dinocell_core.synthetic.fixture import make_jump_fixture  # noqa: E402
from tests.helpers.bundles import tiny_dna_bundle  # noqa: E402
from tests.helpers.s3 import (  # noqa: E402
    BUCKET,
    PREFIX,
    bucket_files,
    s3_server,  # noqa: E402
)


def _report(path):
    with open(path / "report.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_models_report_reads_an_s3_tree_through_endpoint_url(tmp_path, monkeypatch, capsys):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "DINOCELL_S3_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)  # read anonymously, and only through the flag
    fx = make_jump_fixture(tmp_path / "fx", plates=1, wells=2, sites=2, size=64, seed=3, edge_cases=False)
    models = tmp_path / "MODELS"
    tiny_dna_bundle(models, "s3-dna")  # untrained: only where the images come from matters
    labels = str(fx.source_root / GROUND_TRUTH_DIR)  # the fixture's true masks (source "imported")
    args = ["models", "report", str(models), labels, "--device", "cpu"]
    assert main([*args, "--root", str(fx.root), "-o", str(tmp_path / "local")]) == 0
    with s3_server(fx.root, BUCKET) as (endpoint, client):
        before = bucket_files(client)
        assert main([*args, "--root", PREFIX, "--endpoint-url", endpoint, "-o", str(tmp_path / "remote")]) == 0
        assert bucket_files(client) == before  # nothing written to (or deleted from) the bucket
    local, remote = _report(tmp_path / "local"), _report(tmp_path / "remote")
    assert len(local) == 1 and local[0]["source"] == "imported" and local[0]["fields"] == "4"
    assert int(local[0]["n_labels"]) > 0 and remote == local
    assert "s3-dna" in capsys.readouterr().out


def test_models_report_refuses_endpoint_url_on_a_local_tree_and_an_s3_store(tmp_path, capsys):
    fx = make_jump_fixture(tmp_path / "fx", plates=1, wells=1, sites=1, size=64, seed=1, edge_cases=False)
    models = tmp_path / "MODELS"
    tiny_dna_bundle(models, "s3-dna")  # untrained: only where the images come from matters
    assert main(["models", "report", str(models), str(fx.source_root / GROUND_TRUTH_DIR), "--root", str(fx.root),
                 "--endpoint-url", "http://x", "--device", "cpu"]) == 1
    assert "--endpoint-url applies to s3:// trees" in capsys.readouterr().err
    assert main(["models", "report", str(models), "s3://bucket/labels", "--device", "cpu"]) == 1
    assert "the labels store is a local folder" in capsys.readouterr().err
