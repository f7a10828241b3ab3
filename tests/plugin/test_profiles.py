"""Profiles widget in a real napari viewer: embedded fixture wells → map + mAP table → click opens the JUMP browser."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("copairs")
pytest.importorskip("pycytominer")

from dinocell_core.jump.index import load_index  # noqa: E402
from dinocell_core.profiling.embed import (  # noqa: E402
    EmbedSettings,
    embed_profiles,
    find_metadata_dir,
)
from dinocell_core.synthetic.fixture import make_jump_fixture  # noqa: E402


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> tuple[Path, Path]:
    root = make_jump_fixture(tmp_path_factory.mktemp("prof_fx"), plates=3, wells=8, sites=1, size=96, seed=1,
                             edge_cases=False).root
    out = root.parent / "wells.csv"
    embed_profiles(str(root), load_index(str(root)), out, EmbedSettings(tile=48, channels="each"),
                   metadata=find_metadata_dir(str(root)), progress=False)
    return root, out


@pytest.mark.gui
def test_profiles_widget_map_table_and_click(make_napari_viewer, qtbot, embedded):
    from matplotlib.backend_bases import MouseEvent

    root, table = embedded
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Profiles")
    widget.profiles.setText(str(table))
    widget.images.setText(str(root))
    widget.null_size.setValue(500)
    widget.compute()
    qtbot.waitUntil(lambda: widget.map is not None and widget.worker is None, timeout=60000)
    wm = widget.map
    assert wm.coords.shape == (24, 2) and len(wm.explained) == 2
    assert widget.table.rowCount() == 4 == len(wm.results)  # 4 compounds, each on 3 plates
    maps = [float(widget.table.item(r, 1).text()) for r in range(4)]
    assert maps == sorted(maps, reverse=True)
    assert "fraction retrieved" in widget.message.text()
    assert widget.readout.text() == "each (Mito, AGP, RNA, ER, DNA) · cls"  # from wells.csv.json
    assert len(widget._scatter.get_offsets()) == 24
    for by in ("perturbation", "plate", "retrieval"):
        widget.color_by.setCurrentText(by)
        assert len(widget._scatter.get_facecolors()) == 24

    # a click on a drawn well opens one of its fields in the JUMP browser
    widget.canvas.draw()
    px = widget.ax.transData.transform(wm.coords)
    gaps = np.linalg.norm(px[:, None] - px[None], axis=-1) + np.eye(len(px)) * 1e9
    i = int(gaps.min(1).argmax())  # the best-separated well: a click on it cannot land nearer another one
    x, y = px[i]
    MouseEvent("button_press_event", widget.canvas, x, y, button=1)._process()
    plate, well = wm.meta.loc[i, "Metadata_Plate"], wm.meta.loc[i, "Metadata_Well"]
    assert widget.message.text().startswith(f"{plate} {well}")
    _, browser = viewer.window.add_plugin_dock_widget("dinocell", "JUMP browser")
    qtbot.waitUntil(lambda: browser.current is not None and browser.current.well == well
                    and browser.current.plate == plate, timeout=30000)
    qtbot.waitUntil(lambda: not browser.busy, timeout=30000)
    assert len(viewer.layers) >= 8  # the field's channels are shown


@pytest.mark.gui
def test_umap_choice_greyed_out_without_umap_learn(make_napari_viewer, qtbot, monkeypatch):
    import napari_dinocell.widgets.profiles as profiles

    monkeypatch.setattr(profiles, "umap_available", lambda: False)
    widget = profiles.ProfilesWidget(make_napari_viewer())
    qtbot.waitUntil(lambda: widget.ready, timeout=30000)  # the choices come with the projection module
    item = widget.method.model().item(1)
    assert not item.isEnabled() and "needs umap-learn" in item.text()
    assert "pip install" in item.toolTip() and "[umap]" in widget.method.toolTip()
    assert widget.method.currentText() == "PCA"


@pytest.mark.gui
def test_profiles_widget_umap_map(make_napari_viewer, qtbot, embedded):
    pytest.importorskip("umap")
    _, table = embedded
    _, widget = make_napari_viewer().window.add_plugin_dock_widget("dinocell", "Profiles")
    qtbot.waitUntil(lambda: widget.ready, timeout=30000)
    assert widget.method.model().item(1).isEnabled()
    widget.method.setCurrentText("UMAP")
    widget.profiles.setText(str(table))
    widget.null_size.setValue(500)
    widget.compute()
    qtbot.waitUntil(lambda: widget.map is not None and widget.worker is None, timeout=120000)
    assert widget.map.method == "UMAP" and widget.map.coords.shape == (24, 2)
    assert np.isfinite(widget.map.coords).all() and widget.ax.get_title().startswith("UMAP of 24 well profiles")


@pytest.mark.gui
def test_profiles_dock_scrolls_rings_the_clicked_well_and_shows_rows(make_napari_viewer, qtbot, embedded):
    from matplotlib.backend_bases import MouseEvent
    from qtpy.QtWidgets import QScrollArea

    _, table = embedded
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("dinocell", "Profiles")
    assert widget.findChild(QScrollArea) is not None
    assert widget.minimumSizeHint().height() < 300  # the dock scrolls instead of growing the window
    row_h = widget.table.verticalHeader().defaultSectionSize()
    assert widget.table.minimumHeight() >= 6 * row_h  # several rows, not about one
    widget.profiles.setText(str(table))
    widget.null_size.setValue(500)
    widget.compute()
    qtbot.waitUntil(lambda: widget.map is not None and widget.worker is None, timeout=60000)
    wm = widget.map
    widget.canvas.draw()
    px = widget.ax.transData.transform(wm.coords)
    gaps = np.linalg.norm(px[:, None] - px[None], axis=-1) + np.eye(len(px)) * 1e9
    i = int(gaps.min(1).argmax())
    MouseEvent("button_press_event", widget.canvas, *px[i], button=1)._process()
    ring = widget._ring
    assert ring is not None and np.allclose(ring.get_offsets(), [wm.coords[i]])
    (row,) = {index.row() for index in widget.table.selectedIndexes()}
    assert widget.table.item(row, 0).text() == str(wm.meta.loc[i, widget.settings.pert_col])
    widget.color_by.setCurrentText("plate")  # a redraw keeps the ring
    assert widget._ring is not None and np.allclose(widget._ring.get_offsets(), [wm.coords[i]])
