"""``jump label`` on an S3 tree (a real S3 API server, moto, holding an uploaded fixture): the bucket is only read,
the labels store is written locally, and the masks equal those made from the local copy of the same tree."""

from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("boto3")

from dinocell_core.cli import main  # noqa: E402
from dinocell_core.labels.store import LabelStore  # noqa: E402
from dinocell_core.synthetic.fixture import make_jump_fixture  # noqa: E402
from tests.helpers.s3 import (
    BUCKET,
    PREFIX,
    bucket_files,
    s3_server,  # noqa: E402
)

PARAMS = ["--param", "min_diameter=5", "--param", "nuclei_bounds=0.008,1"]  # as tests/test_jump_label.py




def test_jump_label_from_s3_writes_only_the_local_store(tmp_path, monkeypatch, capsys):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)  # the gallery is read anonymously
    fx = make_jump_fixture(tmp_path / "fx", plates=1, wells=2, sites=2, size=96, seed=3, edge_cases=False)
    local = tmp_path / "LOCAL"
    assert main(["jump", "label", str(fx.root), "-o", str(local), "--workers", "1", "--qc-fields", "0",
                 *PARAMS]) == 0
    remote = tmp_path / "REMOTE"
    with s3_server(fx.root, BUCKET) as (endpoint, client):
        before = bucket_files(client)
        assert main(["jump", "label", PREFIX, "-o", str(remote), "--workers", "2", "--qc-fields", "2",
                     "--endpoint-url", endpoint, *PARAMS]) == 0
        assert "4 fields labelled" in capsys.readouterr().out
        assert bucket_files(client) == before  # nothing written to (or deleted from) the source bucket
        # resumable from S3 too: nothing is redone
        assert main(["jump", "label", PREFIX, "-o", str(remote), "--workers", "1", "--qc-fields", "0",
                     "--endpoint-url", endpoint, *PARAMS]) == 0
        assert "0 fields labelled, 4 already in the store" in capsys.readouterr().out
    a, b = LabelStore.open(local), LabelStore.open(remote)
    assert b.manifest["source_root"] == PREFIX and b.counts()["auto"] == 4
    assert [r.key for r in a.rows] == [r.key for r in b.rows]
    for ra, rb in zip(a.rows, b.rows):
        for kind in ("nuclei", "cells", "cytoplasm"):
            np.testing.assert_array_equal(a.read(ra, kind), b.read(rb, kind))
    with open(remote / "qc.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 4
    assert (remote / "contact_sheet.png").stat().st_size > 1000


def test_s3_store_and_endpoint_on_a_local_tree_are_refused(tmp_path, capsys):
    fx = make_jump_fixture(tmp_path / "fx", plates=1, wells=1, sites=1, size=64, seed=1, edge_cases=False)
    assert main(["jump", "label", str(fx.root), "-o", "s3://bucket/labels"]) == 1
    assert "the labels store is a local folder" in capsys.readouterr().err
    assert main(["jump", "label", str(fx.root), "-o", str(tmp_path / "L"), "--endpoint-url", "http://x"]) == 1
    assert "--endpoint-url applies to s3:// trees" in capsys.readouterr().err
