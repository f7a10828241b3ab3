"""Helpers shared by test modules (tests import helpers from here, never from each other)."""

from pathlib import Path

#: the repository root (configs/, benchmarks/, docs/)
REPO = Path(__file__).resolve().parents[2]
