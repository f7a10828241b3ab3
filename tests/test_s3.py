"""S3 reads against a real S3 API server (moto) on 127.0.0.1 holding an uploaded fixture."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import boto3
import pytest
import torch

from dinocell_core.io.storage import S3Storage
from dinocell_core.io.tiffio import BadImageError, read_tiff
from dinocell_core.jump.fixture import make_jump_fixture
from dinocell_core.jump.index import index_fields, index_load_data
from dinocell_core.ssl.config import DataConfig
from dinocell_core.ssl.data import make_ssl_loader

BUCKET = "cellpainting-gallery"
PREFIX = "s3://cellpainting-gallery/cpg0000-jump-pilot/source_4/"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from moto.server import ThreadedMotoServer

    fx = make_jump_fixture(tmp_path_factory.mktemp("s3"), plates=2, wells=2, sites=1, size=64, seed=6)
    port = _free_port()
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    for path in fx.root.rglob("*"):
        if path.is_file() and ".dinocell" not in path.parts:
            # Public-read, like the real gallery bucket: the dataset reads with unsigned requests.
            client.upload_file(str(path), BUCKET, path.relative_to(fx.root).as_posix(),
                               ExtraArgs={"ACL": "public-read"})
    yield {"endpoint": endpoint, "client": client, "fx": fx}
    srv.stop()


@pytest.fixture(autouse=True)
def _anonymous(monkeypatch):
    """The dataset reads anonymously, like the public bucket: no credentials in the environment."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)


def _ids(fields):
    return [(f.plate_folder, f.well, f.site, f.sk) for f in fields]


def test_index_from_bucket_listing_matches_local_scan(server):
    store = S3Storage(endpoint_url=server["endpoint"])
    remote = index_fields(PREFIX, storage=store)
    local = index_fields(server["fx"].source_root)
    assert _ids(remote.fields) == _ids(local.fields) and len(remote.fields) == 3
    assert remote.n_incomplete == 1
    assert remote.fields[0].paths[1] == local.fields[0].paths[1]  # relative to the prefix in both cases
    img = read_tiff(remote.fields[0].path(PREFIX, 1), storage=store)
    assert img.dtype.name == "uint16" and img.shape == (64, 64)
    with pytest.raises(BadImageError, match="file not found|cannot decode"):
        read_tiff(PREFIX + "images/nope.tiff", storage=store)


def test_dataset_over_s3_equals_local_and_cache_is_bounded(server, tmp_path):
    fx = server["fx"]
    csvs = sorted(str(p) for p in fx.source_root.glob("workspace/load_data_csv/*/*/load_data.csv"))
    remote_fields = index_load_data(csvs, root=f"s3://{BUCKET}").fields
    assert remote_fields == index_load_data(csvs, root=str(fx.root)).fields
    limit = 40_000  # bytes: a few 64² TIFFs
    common = dict(load_data=csvs, global_size=32, local_size=16, n_local=2, crops_per_field=2)
    s3_cfg = DataConfig(root=f"s3://{BUCKET}", index=str(tmp_path / "s3_index.csv"), s3_endpoint_url=server["endpoint"],
                        s3_cache_dir=str(tmp_path / "cache"), s3_cache_gb=limit / 1e9, **common)
    local_cfg = DataConfig(root=str(fx.root), index=str(tmp_path / "local_index.csv"), **common)
    remote = list(make_ssl_loader(s3_cfg, 8, batch_size=4, seed=3, steps=3, num_workers=2))
    local = list(make_ssl_loader(local_cfg, 8, batch_size=4, seed=3, steps=3, num_workers=0))
    for a, b in zip(remote, local):
        assert a["n_failed"] == 0 and a["fields"] == b["fields"]
        assert torch.equal(a["global"], b["global"]) and torch.equal(a["local"], b["local"])
    store = s3_cfg.storage()
    assert 0 < store.cache_size() <= limit
    pickle.loads(pickle.dumps(store))  # settings only, never a live client


def test_cache_serves_objects_after_they_disappear(server, tmp_path):
    store = S3Storage(endpoint_url=server["endpoint"], cache_dir=tmp_path / "c", cache_bytes=10_000_000)
    key = next(k["Key"] for k in server["client"].list_objects_v2(Bucket=BUCKET)["Contents"]
               if k["Key"].endswith("-ch5sk1fk1fl1.tiff"))
    url = f"s3://{BUCKET}/{key}"
    first = store.read_bytes(url)
    data = Path(server["fx"].root / key).read_bytes()
    assert first == data
    server["client"].delete_object(Bucket=BUCKET, Key=key)
    try:
        assert store.read_bytes(url) == data  # served from the local cache
        with pytest.raises(FileNotFoundError):
            S3Storage(endpoint_url=server["endpoint"]).read_bytes(url)
    finally:
        server["client"].put_object(Bucket=BUCKET, Key=key, Body=data, ACL="public-read")


def test_eviction_is_lru_by_bytes(tmp_path, server):
    store = S3Storage(endpoint_url=server["endpoint"], cache_dir=tmp_path / "lru", cache_bytes=1)
    keys = [k["Key"] for k in server["client"].list_objects_v2(Bucket=BUCKET)["Contents"]
            if k["Key"].endswith(".tiff") and "/Images/" in k["Key"]][:3]
    sizes = []
    for key in keys:
        store.read_bytes(f"s3://{BUCKET}/{key}")
        sizes.append(store.cache_size())
    assert max(sizes) == 0  # a cache smaller than any file keeps nothing
    store.cache_bytes = 10_000_000
    for key in keys:
        store.read_bytes(f"s3://{BUCKET}/{key}")
    full = store.cache_size()
    newest = store._cache_file(f"s3://{BUCKET}/{keys[-1]}").stat().st_size
    store.cache_bytes = newest
    store.evict()
    assert store.cache_size() == newest and store._cache_file(f"s3://{BUCKET}/{keys[-1]}").is_file()
    assert full > newest


def test_index_from_load_data_csv_stored_in_the_bucket(server):
    store = S3Storage(endpoint_url=server["endpoint"])
    key = next(k["Key"] for k in server["client"].list_objects_v2(Bucket=BUCKET)["Contents"]
               if k["Key"].endswith("/load_data.csv"))
    res = index_load_data([f"s3://{BUCKET}/{key}"], root=f"s3://{BUCKET}", storage=store)
    assert len(res.fields) >= 1
    first = res.fields[0]
    assert first.paths[5].startswith("cpg0000-jump-pilot/source_4/images/")
    img = read_tiff(first.path(f"s3://{BUCKET}", 5), storage=store)
    assert img.shape == (64, 64)


def test_cli_index_of_a_bucket_prefix(server, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "HOME": str(tmp_path)}
    out = tmp_path / "index.csv"
    r = subprocess.run([sys.executable, "-m", "dinocell_core.cli", "jump", "index", PREFIX, "--endpoint-url",
                        server["endpoint"], "-o", str(out)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "3 complete fields" in r.stdout and "1 incomplete fields left out" in r.stdout
    assert list((tmp_path / ".cache" / "dinocell").glob("index_*.csv"))  # remote roots cache under ~/.cache
    from dinocell_core.jump.index import read_index_csv

    assert len(read_index_csv(out)) == 3
