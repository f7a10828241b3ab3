"""Running code as an unprivileged user (permission checks are void for root)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO


def run_unprivileged(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a subprocess that obeys file permissions (as root: capsh drops the DAC override)."""
    cmd = [sys.executable, "-c", code]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        capsh = shutil.which("capsh")
        if capsh is None:
            pytest.skip("running as root without capsh: permissions cannot be enforced")
        cmd = [capsh, "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", " ".join(map(shlex.quote, cmd))]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(cmd, capture_output=True, text=True, env=env)
