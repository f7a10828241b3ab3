"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from dinocell_core.jump.fixture import make_jump_fixture


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    """A small synthetic CPJUMP1 tree for pretraining runs (128-px fields, two phenotypes)."""
    return make_jump_fixture(tmp_path_factory.mktemp("pretrain_fixture"), plates=2, wells=4, sites=2, size=128,
                             seed=0).root


@pytest.fixture
def notifications():
    """Messages of every napari notification shown during the test (what the user would see)."""
    from napari.utils.notifications import notification_manager

    seen: list[str] = []

    def record(event) -> None:
        seen.append(str(event.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)
