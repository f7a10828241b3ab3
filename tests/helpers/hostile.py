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
