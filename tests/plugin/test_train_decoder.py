"""Train decoder widget: defaults from configs/, channel list, pydantic errors shown before any launch."""

from __future__ import annotations

from dinocell_core.runs.rundir import RunDir
from dinocell_core.synthetic.fixture import make_jump_fixture


def test_decoder_form_defaults_channels_and_validation(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Train decoder")
    assert widget.defaults_combo.currentText() == "decoder_demo.yaml"
    assert widget.checked_channels() == ["DNA"]
    assert widget.editors["train.tile_size"].get() == 64

    # the demo's relative data path does not exist here: a clear message, before anything is launched
    widget.out_dir.widget.setText(str(tmp_path))
    widget.run_name.setText("r1")
    assert widget.validate() is None
    assert "training data" in widget.message.text() and "does not exist" in widget.message.text()

    # an architecture typo is a schema error; then preflight: empty data folder, a real arch without weights
    (tmp_path / "empty").mkdir()
    widget.editors["data.path"].set(str(tmp_path / "empty"))
    widget.editors["backbone.arch"].set("vit_smal")
    assert widget.validate() is None
    assert "unknown backbone arch 'vit_smal' (backbone.arch)" in widget.message.text()
    widget.editors["backbone.arch"].set("vit_small")
    assert widget.validate() is None
    text = widget.message.text()
    assert "empty holds no images" in text and "backbone weights are empty" in text

    root = make_jump_fixture(tmp_path / "fx", plates=1, wells=1, sites=1, size=64, seed=0).root
    widget.editors["backbone.arch"].set("vit_test")
    widget.editors["data.path"].set(str(root))
    widget.set_channels(["DNA", "ER"])
    cfg = widget.validate()
    assert cfg is not None and cfg.channels == ["ER", "DNA"]
    assert cfg.train.steps == 300
    # a multichannel entry (the vits8 recipe's [DNA, RNA]) is kept beside the ticks and shown
    widget.set_channels(["Mito", ["DNA", "RNA"]])
    assert widget.checked_channels() == ["Mito"] and "DNA+RNA" in widget.multichannel_note.text()
    cfg = widget.validate()
    assert cfg is not None and cfg.channels == ["Mito", ["DNA", "RNA"]]

    # an unknown advanced key and a bad value are reported, and nothing is launched
    widget.advanced.setPlainText(widget.advanced.toPlainText() + "\nbogus_key: 1\n")
    widget.editors["train.lr"].widget.setText("-1")
    assert widget.launch() is None
    text = widget.message.text()
    assert "bogus_key: unknown key" in text and "train.lr" in text
    assert not RunDir(tmp_path / "r1").exists()


def test_a_launched_run_that_fails_raises_a_notification(make_napari_viewer, qtbot, tmp_path, notifications,
                                                         monkeypatch):
    """Images but no ground-truth masks: the preflight cannot know, the job fails in its first seconds, and the
    form says so in a notification (not only the Runs widget)."""
    import shutil

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root = make_jump_fixture(tmp_path / "fx", plates=1, wells=1, sites=1, size=64, seed=0).root
    for gt in list(root.rglob("ground_truth")):
        shutil.rmtree(gt)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Train decoder")
    widget.run_controls.watcher.timer.setInterval(200)
    widget.editors["data.path"].set(str(root))
    widget.out_dir.set(str(tmp_path / "runs"))
    widget.run_name.setText("no_masks")
    assert widget.launch() is not None, widget.message.text()
    qtbot.waitUntil(lambda: any("run no_masks failed" in m for m in notifications), timeout=120_000)
    assert "failed" in widget.message.text()
