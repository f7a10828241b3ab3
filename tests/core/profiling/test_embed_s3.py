"""``profile embed`` reads fields from S3 (a real S3 API server, moto, holding an uploaded fixture) and gives the
same well profiles as from the local copy."""

from __future__ import annotations

import pandas as pd
import pytest

pytest.importorskip("copairs")
pytest.importorskip("boto3")

from dinocell_core.io.storage import S3Storage  # noqa: E402
from dinocell_core.jump.index import index_fields  # noqa: E402
from dinocell_core.profiling.embed import (  # noqa: E402
    EmbedSettings,
    embed_profiles,
    find_metadata_dir,
)
from dinocell_core.synthetic.fixture import make_jump_fixture  # noqa: E402
from tests.helpers.s3 import s3_server  # noqa: E402

BUCKET = "cellpainting-gallery"
PREFIX = "s3://cellpainting-gallery/cpg0000-jump-pilot/source_4/"


def test_embed_from_s3_equals_local(tmp_path, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    fx = make_jump_fixture(tmp_path / "fx", plates=2, wells=2, sites=1, size=64, seed=6, edge_cases=False)
    with s3_server(fx.root, BUCKET) as (endpoint, _client):
        store = S3Storage(endpoint_url=endpoint)
        s = EmbedSettings(tile=32, channels="each")
        meta = find_metadata_dir(str(fx.root))
        remote = embed_profiles(PREFIX, index_fields(PREFIX, storage=store).fields, tmp_path / "s3.csv", s,
                                metadata=meta, storage=store, progress=False)
    local = embed_profiles(str(fx.root), index_fields(fx.root).fields, tmp_path / "local.csv", s, metadata=meta,
                           progress=False)
    assert len(remote) == 4
    pd.testing.assert_frame_equal(remote, local)
