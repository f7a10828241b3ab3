"""A real S3 API server (moto) on 127.0.0.1 and the CPJUMP1 gallery bucket layout."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUCKET = "cellpainting-gallery"


PREFIX = "s3://cellpainting-gallery/cpg0000-jump-pilot/source_4/"


def bucket_files(client) -> dict[str, str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


@contextmanager
def s3_server(root: Path, bucket: str) -> Iterator[tuple[str, object]]:
    """A real S3 API (moto's server) on 127.0.0.1 holding every file under ``root`` in ``bucket``, public-read like
    the gallery bucket. moto keeps its buckets in process-wide memory, so each server starts from a reset: one
    test module's bucket never leaks into another's."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        client.create_bucket(Bucket=bucket)
        for path in root.rglob("*"):
            if path.is_file() and ".dinocell" not in path.parts:
                client.upload_file(str(path), bucket, path.relative_to(root).as_posix(),
                                   ExtraArgs={"ACL": "public-read"})
        yield endpoint, client
    finally:
        srv.stop()
