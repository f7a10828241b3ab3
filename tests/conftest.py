"""Shared fixtures of the plugin tests."""

from __future__ import annotations

import pytest


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
