"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from dinocell_core.synthetic.fixture import make_jump_fixture
from tests.helpers import REPO


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


DECODER_DEMO = REPO / "configs" / "decoder_demo.yaml"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """DNA and Mito decoder bundles from a few steps on the fixture (the segmentation API, ~10 s on 2 cores)."""
    from dinocell_core.config import load_config
    from dinocell_core.seg.config import DecoderConfig
    from dinocell_core.seg.train import run_decoder_training

    base = tmp_path_factory.mktemp("seg_models")
    root = make_jump_fixture(base / "fx", plates=1, wells=2, sites=2, size=96, seed=0).root
    models = base / "models"
    cfg = load_config(DecoderConfig, DECODER_DEMO, [
        f"data.path={root}", "channels=[DNA, Mito]", "train.steps=6", "train.tile_size=32", "train.eval_every=6",
        "train.batch_size=2", "inference.overlap=8", "data.max_images=4", f"models_dir={models}"])
    run_decoder_training(cfg, base / "run")
    return models


@pytest.fixture(autouse=True)
def _private_settings(tmp_path_factory, monkeypatch):
    """The plugin's remembered folders (QSettings) go to a per-test folder, never the user's config."""
    try:
        from qtpy.QtCore import QSettings
    except Exception:  # noqa: BLE001 (core-only installs have no Qt: nothing to isolate)
        yield
        return
    folder = tmp_path_factory.mktemp("qsettings")
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(folder))
    yield


