"""S3 reads against a real S3 API server (moto) on 127.0.0.1 holding an uploaded fixture."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import pytest
import torch

from dinocell_core.io.storage import S3Storage
from dinocell_core.io.tiffio import BadImageError, read_tiff
from dinocell_core.jump.index import index_fields, index_load_data
from dinocell_core.ssl.config import DataConfig
from dinocell_core.ssl.data import make_ssl_loader
from dinocell_core.synthetic.fixture import make_jump_fixture
from tests.helpers import REPO
from tests.helpers.s3 import s3_server

BUCKET = "cellpainting-gallery"
PREFIX = "s3://cellpainting-gallery/cpg0000-jump-pilot/source_4/"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    fx = make_jump_fixture(tmp_path_factory.mktemp("s3"), plates=2, wells=2, sites=1, size=64, seed=6)
    with s3_server(fx.root, BUCKET) as (endpoint, client):
        yield {"endpoint": endpoint, "client": client, "fx": fx}


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

    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HOME": str(tmp_path)}
    out = tmp_path / "index.csv"
    r = subprocess.run([sys.executable, "-m", "dinocell_core.cli", "jump", "index", PREFIX, "--endpoint-url",
                        server["endpoint"], "-o", str(out)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "3 complete fields" in r.stdout and "1 incomplete fields left out" in r.stdout
    assert list((tmp_path / ".cache" / "dinocell").glob("index_*.csv"))  # remote roots cache under ~/.cache
    from dinocell_core.jump.index import read_index_csv

    assert len(read_index_csv(out)) == 3


@pytest.fixture
def tarpit():
    """A TCP server on 127.0.0.1 that accepts connections and never answers (a hung proxy or mirror)."""
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(timeout=5)
    for s in held:
        s.close()
    srv.close()


def test_a_silent_endpoint_times_out_with_one_clear_error(tarpit):
    import time

    from dinocell_core.io.storage import StorageError

    store = S3Storage(endpoint_url=tarpit, timeout_s=0.5, attempts=2)
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=rf"S3 listing failed after 2 attempt\(s\) of 0.5 s at {tarpit}"):
        index_fields(PREFIX, storage=store)
    assert time.monotonic() - t0 < 30  # bounded: attempts × timeout (+ backoff), not minutes
    with pytest.raises(BadImageError, match="S3 reading failed"):
        read_tiff(PREFIX + "images/x.tiff", storage=store)


def _cli_index(root: str, endpoint: str, home: Path, *extra: str):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HOME": str(home),
           "DINOCELL_S3_TIMEOUT_S": "0.5", "DINOCELL_S3_ATTEMPTS": "2"}
    return subprocess.run([sys.executable, "-m", "dinocell_core.cli", "jump", "index", root, "--endpoint-url",
                           endpoint, *extra], capture_output=True, text=True, env=env, timeout=120)


def test_cli_on_a_dead_endpoint_fails_in_one_line_and_caches_nothing(tarpit, tmp_path):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{s.getsockname()[1]}"
    for endpoint in (tarpit, refused):
        r = _cli_index(PREFIX, endpoint, tmp_path)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("scanning:")]  # no tqdm
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert "S3 listing failed" in lines[0] and endpoint in lines[0] and "Traceback" not in r.stderr
    assert not list(tmp_path.rglob("index_*.csv"))  # a failed listing is never cached


def test_empty_listing_is_not_cached_and_cache_key_includes_the_endpoint(server, tmp_path):
    from dinocell_core.jump.index import default_cache_path

    r = _cli_index(f"s3://{BUCKET}/no-such-prefix/", server["endpoint"], tmp_path)
    assert r.returncode == 1 and "no-such-prefix/: no such S3 prefix at " + server["endpoint"] in r.stderr
    server["client"].put_object(Bucket=BUCKET, Key="other/readme.txt", Body=b"x", ACL="public-read")
    r = _cli_index(f"s3://{BUCKET}/other/", server["endpoint"], tmp_path)
    assert r.returncode == 1 and "no complete CPJUMP1 fields found under s3://" in r.stderr
    assert not list(tmp_path.rglob("index_*.csv"))
    assert default_cache_path(PREFIX, "http://a:1") != default_cache_path(PREFIX, "http://b:2") \
        != default_cache_path(PREFIX)
    r = _cli_index(PREFIX, server["endpoint"], tmp_path)
    assert r.returncode == 0 and "3 complete fields" in r.stdout
    cached = list((tmp_path / ".cache" / "dinocell").glob("index_*.csv"))
    assert len(cached) == 1
    # the same prefix at another endpoint is another listing, not this cache
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        other = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert _cli_index(PREFIX, other, tmp_path).returncode == 1
