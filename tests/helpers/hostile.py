"""Helpers of the hostile-input tests (issue 25): what a test checks after a refused command."""

from __future__ import annotations

from pathlib import Path


def files_under(root: Path, skip: Path | None = None) -> dict[str, int]:
    """Every file under ``root`` (relative path → size), leaving out the folder ``skip``: taken before and after a
    refused command, the two must be equal (nothing written or removed outside its output folder)."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and not (skip is not None and p.is_relative_to(skip)):
            out[p.relative_to(root).as_posix()] = p.stat().st_size
    return out


def one_error_line(stderr: str) -> str:
    """The single ``dinocell-core:`` line of a refused command's stderr (no traceback, no second line)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.startswith("dinocell-core:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def torch_zip_bomb(path: Path, numel: int = 2**30 - 2**18) -> Path:
    """A ~4 MB ``.pth`` (torch zip) whose pickle declares one float32 tensor of ``numel`` elements (≈ 2³⁰: 4 GiB)
    stored as a *deflated* record of zeros: ``torch.load`` inflates the whole record before any check. Built by
    hand (one flushed deflate block repeated; the record's CRC is left 0, checked only after inflating)."""
    import io
    import struct
    import zipfile
    import zlib

    import torch

    buf = io.BytesIO()
    torch.save({"pos_embed": torch.zeros(1000)}, buf)
    with zipfile.ZipFile(buf) as src:
        records = {n: src.read(n) for n in src.namelist()}
    pkl = next(n for n in records if n.endswith("data.pkl"))
    assert records[pkl].count(b"M\xe8\x03") == 2  # BININT2 1000: the storage's numel and the tensor's size
    records[pkl] = records[pkl].replace(b"M\xe8\x03", b"J" + struct.pack("<i", numel))
    data = next(n for n in records if n.endswith("data/0"))
    block_bytes = 2**20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(block_bytes)) + c.flush(zlib.Z_FULL_FLUSH)
    inflated = numel * 4
    assert inflated % block_bytes == 0 and inflated < 2**32
    body, central = bytearray(), bytearray()
    for name, raw in records.items():
        packed = name == data
        payload = block * (inflated // block_bytes) + zlib.compressobj(9, zlib.DEFLATED, -15).flush() if packed \
            else raw
        size, crc, method = (inflated, 0, 8) if packed else (len(raw), zlib.crc32(raw), 0)
        key = name.encode()
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc,
                               len(payload), size, len(key), 0, 0, 0, 0, 0, len(body)) + key
        body += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(payload), size,
                            len(key), 0) + key + payload
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(records), len(records), len(central), len(body), 0)
    path.write_bytes(bytes(body + central + end))
    return path
