"""LIVECell / COCO as the dataset ships: hand-built JSON with multi-polygon, RLE (compressed and uncompressed) and
crowd annotations, the official layout (JSON and images apart), and COCO mask AP through pycocotools."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from pycocotools import mask as mask_utils

from dinocell_core.seg.config import SegDataConfig
from dinocell_core.seg.data import (
    SegDataError,
    coco_to_labels,
    detect_format,
    load_samples,
)
from dinocell_core.seg.metrics import (
    coco_mask_ap,
    drop_crowd_predictions,
    evaluate_pairs,
)

H, W = 60, 80
NAME = "A172_Phase_C7_1_00d00h00m_1.tif"


def box(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def rle_compressed(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(r["size"]), "counts": r["counts"].decode()}


def rle_uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major (Fortran) flattening, starting with zeros."""
    flat = mask.astype(np.uint8).ravel(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return {"size": [H, W], "counts": counts}


def coco_json() -> tuple[dict, dict[str, np.ndarray]]:
    """One image: a cell drawn as two polygons (one duplicated), a compressed-RLE cell, an uncompressed-RLE cell
    (an L shape: wrong if transposed), and a crowd region."""
    rle_a = np.zeros((H, W), bool)
    rle_a[30:45, 5:20] = True
    rle_b = np.zeros((H, W), bool)
    rle_b[5:25, 50:55] = True
    rle_b[20:25, 55:75] = True
    crowd = np.zeros((H, W), bool)
    crowd[40:58, 50:78] = True
    anns = [
        {"id": 11, "image_id": 3, "iscrowd": 0, "category_id": 1,
         "segmentation": [box(5, 5, 20, 15), box(20, 5, 30, 15), box(5, 5, 20, 15)]},  # 2 parts + a duplicate
        {"id": 12, "image_id": 3, "iscrowd": 0, "category_id": 1, "segmentation": rle_compressed(rle_a)},
        {"id": 13, "image_id": 3, "iscrowd": 0, "category_id": 1, "segmentation": rle_uncompressed(rle_b)},
        {"id": 14, "image_id": 3, "iscrowd": 1, "category_id": 1, "segmentation": rle_uncompressed(crowd)},
    ]
    coco = {"images": [{"id": 3, "file_name": NAME, "width": W, "height": H}], "annotations": anns,
            "categories": [{"id": 1, "name": "cell"}]}
    return coco, {"rle_a": rle_a, "rle_b": rle_b, "crowd": crowd}


def test_polygons_united_rle_both_kinds_and_crowd() -> None:
    coco, truth = coco_json()
    labels, crowd = coco_to_labels((H, W), coco["annotations"], "test")
    assert labels.max() == 3
    poly_cell = labels == 1
    assert poly_cell[10, 12] and poly_cell[10, 25]  # both polygons, the duplicated one not punching a hole
    assert poly_cell.sum() >= 24 * 9
    np.testing.assert_array_equal(labels == 2, truth["rle_a"])
    np.testing.assert_array_equal(labels == 3, truth["rle_b"])  # the L shape: not transposed
    np.testing.assert_array_equal(crowd, truth["crowd"])
    assert not np.any(labels[truth["crowd"]])  # a crowd is not an instance


def write_official_layout(root: Path) -> Path:
    """``annotations/LIVECell/livecell_coco_test.json`` + ``images/livecell_test_images/A172/<name>.tif``."""
    coco, truth = coco_json()
    img = np.full((H, W), 40, np.uint8)
    img[truth["rle_a"]] = 200
    d = root / "images" / "livecell_test_images" / "A172"
    d.mkdir(parents=True)
    tifffile.imwrite(d / NAME, img)
    ann = root / "annotations" / "LIVECell" / "livecell_coco_test.json"
    ann.parent.mkdir(parents=True)
    coco["annotations"] = {str(a["id"]): a for a in coco["annotations"]}  # the dict-keyed LIVECell quirk
    ann.write_text(json.dumps(coco))
    return ann


def test_official_layout_images_apart_from_the_json(tmp_path) -> None:
    root = tmp_path / "livecell"
    ann = write_official_layout(root)
    assert detect_format(ann) == "livecell"
    (s,) = load_samples(SegDataConfig(format="livecell", path=str(ann)))  # images found without images_dir
    assert s.labels.max() == 3 and s.ignore is not None and s.ignore.sum() == 18 * 28
    (s2,) = load_samples(SegDataConfig(format="livecell", path=str(ann),
                                       images_dir=str(root / "images" / "livecell_test_images")))
    np.testing.assert_array_equal(s.labels, s2.labels)
    alone = tmp_path / "elsewhere" / "x.json"  # a JSON with no image folder near it
    alone.parent.mkdir()
    alone.write_text(ann.read_text())
    with pytest.raises(SegDataError, match="cannot find its images"):
        load_samples(SegDataConfig(format="livecell", path=str(alone)))


def test_bad_rle_names_the_annotation() -> None:
    ann = {"id": 99, "image_id": 1, "iscrowd": 0, "segmentation": {"size": [10, 10], "counts": [5, 5]}}
    with pytest.raises(SegDataError, match="annotation 99: RLE size"):
        coco_to_labels((H, W), [ann], "f.json")


def test_coco_mask_ap_against_hand_counts_and_crowd() -> None:
    coco, truth = coco_json()
    gt, crowd = coco_to_labels((H, W), coco["annotations"], "test")
    perfect = coco_mask_ap([(gt, gt, None, crowd)])
    assert perfect["coco_ap"] == pytest.approx(1.0)
    # a false positive inside the crowd region is ignored by COCOeval and by our crowd filter
    with_fp = gt.copy()
    with_fp[45:55, 55:70] = 4
    assert coco_mask_ap([(gt, with_fp, None, crowd)])["coco_ap"] == pytest.approx(1.0)
    assert drop_crowd_predictions(with_fp, crowd).max() == 3
    # one of three cells missed: recall 2/3 → AP = 2/3 at every IoU (101-point interpolation: 67/101)
    missed = np.where(gt == 3, 0, gt)
    m = coco_mask_ap([(gt, missed, None, crowd)])
    assert m["coco_ap"] == pytest.approx(67 / 101, abs=1e-6) and m["coco_ar"] == pytest.approx(2 / 3)
    # ranking matters: a low-scored false positive outside the crowd costs less than a high-scored one
    fp = gt.copy()
    fp[2:8, 60:70] = 4
    low = coco_mask_ap([(gt, fp, np.array([0.9, 0.9, 0.9, 0.1]), crowd)])["coco_ap"]
    high = coco_mask_ap([(gt, fp, np.array([0.5, 0.5, 0.5, 0.9]), crowd)])["coco_ap"]
    assert low == pytest.approx(1.0) and high < 0.8
    # our AP (TP / (TP + FP + FN)) of the same pair, for contrast: 3 / 4
    assert evaluate_pairs([(gt, fp)], [0.5]).as_dict()["ap@0.50"] == pytest.approx(0.75)


def tiny_bundle(folder: Path, thresholds: dict) -> Path:
    import torch

    from dinocell_core.backbones.loading import load_backbone
    from dinocell_core.seg.bundle import save_bundle
    from dinocell_core.seg.decoder import DistanceDecoder

    torch.manual_seed(0)
    model = DistanceDecoder(load_backbone("vit_test", patch_size=8), width=16, stem_width=8).eval()
    meta = {"name": "phase", "channel": "phase", "backbone": {"arch": "vit_test", "patch_size": 8, "kwargs": {}},
            "decoder": {"layers": model.layers, "width": 16, "stem_width": 8},
            "preprocessing": {"low": 1.0, "high": 99.8}, "thresholds": thresholds, "tile_size": 32, "overlap": 8}
    return save_bundle(folder / "phase.safetensors", model, meta)


def test_evaluate_command_on_the_official_layout_with_bundle_thresholds(tmp_path) -> None:
    """``evaluate`` finds the images of the official layout (or takes --images), scores with the bundle's
    thresholds (one code path with ``segment``) and reports COCO mask AP next to AP/SEG/DET."""
    from dinocell_core.cli import main
    from dinocell_core.seg.distance import labels_with
    from dinocell_core.seg.inference import Segmenter

    ann = write_official_layout(tmp_path / "livecell")
    th = {"peak": 0.52, "fill": 0.2, "grow": 0.05, "ring": 0.6, "slope": 0.65, "min_size": 3}
    bundle = tiny_bundle(tmp_path, th)
    out = tmp_path / "scores.json"
    assert main(["evaluate", str(bundle), str(ann), "-o", str(out), "--device", "cpu"]) == 0
    res = json.loads(out.read_text())
    assert res["thresholds"] == th and res["format"] == "livecell"
    assert {"coco_ap", "coco_ap50", "ap@0.95", "seg", "det"} <= set(res["metrics"])
    assert main(["evaluate", str(bundle), str(ann), "-o", str(out), "--device", "cpu", "--min-size", "9",
                 "--slope", "0.9", "--images", str(tmp_path / "livecell" / "images" / "livecell_test_images")]) == 0
    assert json.loads(out.read_text())["thresholds"] == {**th, "min_size": 9, "slope": 0.9}
    seg = Segmenter(bundle)
    dist = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    np.testing.assert_array_equal(seg.labels(dist), labels_with(dist, th))  # segment's path = evaluate's
