"""Distance-map target ↔ watershed round trip, on hand-made and on the JUMP fixture's ground-truth masks."""

from __future__ import annotations

import numpy as np
import pytest

from dinocell_core.jump.fixture import make_jump_fixture
from dinocell_core.jump.index import load_index
from dinocell_core.labels.store import GROUND_TRUTH_DIR, LabelStore, field_key
from dinocell_core.seg.distance import distance_map, labels_from_distance
from dinocell_core.seg.metrics import average_precision, evaluate_pairs


def touching_disks(size: int = 128, n: int = 12, seed: int = 0) -> np.ndarray:
    """Random disks cut by their Voronoi borders where they overlap: convex cells, many touching."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(8, size - 8, (n, 2))
    radii = rng.uniform(6, 14, n)
    d2 = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    nearest = d2.argmin(0)
    inside = np.take_along_axis(d2, nearest[None], 0)[0] <= radii[nearest] ** 2
    return np.where(inside, nearest + 1, 0).astype(np.int32)


@pytest.fixture(scope="module")
def fixture_masks(tmp_path_factory) -> dict[str, list[np.ndarray]]:
    out = tmp_path_factory.mktemp("jump")
    info = make_jump_fixture(out, plates=1, wells=4, sites=2, size=192, seed=3)
    fields = load_index(info.root)
    store = LabelStore.open(info.source_root / GROUND_TRUTH_DIR)
    rows = [store.best(field_key(f)) for f in fields]
    return {kind: [store.read(row, kind) for row in rows] for kind in ("nuclei", "cells")}


def test_distance_map_properties() -> None:
    lab = touching_disks()
    d = distance_map(lab)
    assert d.dtype == np.float32 and d.shape == lab.shape
    assert d.min() == 0.0 and d.max() <= 1.0
    assert np.all(d[lab == 0] == 0) and np.all(d[lab > 0] > 0)
    for i in np.unique(lab)[1:]:  # every cell peaks at exactly 1 (per-cell normalisation)
        assert d[lab == i].max() == pytest.approx(1.0)


def test_distance_map_exact_edt_on_a_square() -> None:
    lab = np.zeros((9, 9), np.int32)
    lab[2:7, 2:7] = 5  # 5×5 square: EDT 1 on the ring, 2 next, 3 in the centre
    d = distance_map(lab)
    assert d[4, 4] == 1.0 and d[2, 4] == pytest.approx(1 / 3) and d[3, 4] == pytest.approx(2 / 3)


def test_distance_map_cell_at_the_image_edge_has_a_boundary_there() -> None:
    lab = np.zeros((6, 6), np.int32)
    lab[:, :3] = 1
    d = distance_map(lab)
    assert d[:, 0].max() < 1.0 and d[2, 1] == 1.0


def test_touching_cells_dip_at_their_border_and_split() -> None:
    lab = np.zeros((20, 40), np.int32)
    lab[2:18, 2:20] = 1
    lab[2:18, 20:38] = 2
    d = distance_map(lab)
    assert d[10, 19] < 0.2 and d[10, 20] < 0.2
    out = labels_from_distance(d)
    assert out.max() == 2
    assert average_precision(lab, out, [0.5])[0] == 1.0


def test_labels_from_distance_empty_and_bad_input() -> None:
    assert labels_from_distance(np.zeros((16, 16), np.float32)).max() == 0
    assert labels_from_distance(np.full((16, 16), 0.3, np.float32)).max() == 0  # fill but no peak
    with pytest.raises(ValueError, match="fill_threshold"):
        labels_from_distance(np.zeros((4, 4)), peak_threshold=0.1, fill_threshold=0.2)
    with pytest.raises(ValueError, match="2-D"):
        distance_map(np.zeros((2, 4, 4), np.int32))


def test_min_size_and_sequential_labels() -> None:
    lab = np.zeros((40, 40), np.int32)
    lab[2:20, 2:20] = 7
    lab[30:33, 30:33] = 9
    out = labels_from_distance(distance_map(lab), min_size=20)
    assert sorted(np.unique(out)) == [0, 1]
    out = labels_from_distance(distance_map(lab))
    assert sorted(np.unique(out)) == [0, 1, 2] and out.dtype == np.int32


def test_round_trip_random_disks() -> None:
    for seed in range(3):
        lab = touching_disks(seed=seed)
        assert average_precision(lab, labels_from_distance(distance_map(lab)), [0.5])[0] >= 0.95


def test_round_trip_on_fixture_masks(fixture_masks) -> None:
    """GT → target → watershed recovers the fixture's nuclei and cells (AP@0.5 ≥ 0.98 pooled over the fields).

    Pooled, as the reference measures it: a rare dumbbell-shaped fixture cell has two distance peaks and is split,
    a property of the distance-map target itself.
    """
    for kind, masks in fixture_masks.items():
        assert len(masks) >= 6
        pairs = [(gt, labels_from_distance(distance_map(gt))) for gt in masks]
        scores = evaluate_pairs(pairs, [0.5]).as_dict()
        assert scores["n_gt"] >= 100, kind
        assert scores["ap@0.50"] >= 0.98, (kind, scores)


def test_component_shortcut_matches_a_plain_watershed() -> None:
    """Single-marker parts are filled without flooding; the result must equal skimage's watershed (ties aside)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    rng = np.random.default_rng(1)
    lab = touching_disks(size=160, n=30, seed=4)
    d = np.clip(distance_map(lab) + rng.normal(0, 0.05, lab.shape), 0, 1).astype(np.float32)
    ours = labels_from_distance(d)
    markers, _ = ndi.label(d > 0.47)
    ref = watershed(-d, markers, mask=d > 0.09)
    assert np.mean(ours == ref) > 0.999 and ours.max() == ref.max()
