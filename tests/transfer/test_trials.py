"""Trial aggregation (mean, sample std), its table and JSON; COCO scoring backends agree."""

from __future__ import annotations

import json
import math

import numpy as np
import pycocotools.mask as mask_util
import pytest

from transfer.coco_eval import evaluate_coco, stats_equal
from transfer.trials import aggregate, format_table, mean_std, write_json


def test_mean_and_sample_std_by_hand():
    mean, std = mean_std([56.0, 57.0, 58.0, 59.0])
    assert mean == 57.5
    # sum of squared deviations 1.5^2 + 0.5^2 + 0.5^2 + 1.5^2 = 5, over n - 1 = 3
    assert std == pytest.approx(math.sqrt(5 / 3))
    assert mean_std([42.0]) == (42.0, None)  # one trial: std undefined, not 0
    with pytest.raises(ValueError):
        mean_std([])


def test_aggregate_box_and_mask_over_trials():
    trials = [
        {"bbox": {"AP": 40.0, "AP50": 60.0, "AP75": 43.0, "APs": 1.0}, "segm": {"AP": 35.0, "AP50": 57.0, "AP75": 37.0}},
        {"bbox": {"AP": 42.0, "AP50": 61.0, "AP75": 45.0, "APs": 2.0}, "segm": {"AP": 36.0, "AP50": 58.0, "AP75": 38.0}},
    ]
    s = aggregate(trials)
    assert set(s) == {"bbox", "segm"} and set(s["bbox"]) == {"AP", "AP50", "AP75"}
    assert s["bbox"]["AP"]["mean"] == 41.0 and s["bbox"]["AP"]["std"] == pytest.approx(math.sqrt(2.0))
    assert s["segm"]["AP75"]["values"] == [37.0, 38.0] and s["segm"]["AP75"]["n"] == 2
    table = format_table(s)
    assert table.splitlines()[1].split()[:4] == ["box", "41.00", "+-", "1.41"]
    assert table.splitlines()[2].startswith("mask")


def test_json_is_strict(tmp_path):
    path = write_json({"AP": float("nan"), "x": np.float64(1.5), "l": [np.int64(3), float("inf")]}, tmp_path / "r.json")
    assert json.loads(path.read_text()) == {"AP": None, "x": 1.5, "l": [3, None]}


def synthetic_coco(seed: int = 0, images: int = 12, per_image: int = 4, classes: int = 3):
    """Ground truth with box and polygon masks, and noisy/confused/duplicate detections of it."""
    rng = np.random.default_rng(seed)
    H, W = 96, 128
    gt = {"images": [], "annotations": [], "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(classes)]}
    results = []
    for img in range(1, images + 1):
        gt["images"].append({"id": img, "width": W, "height": H, "file_name": f"{img}.jpg"})
        for _ in range(per_image):
            x, y = rng.uniform(0, 80), rng.uniform(0, 50)
            w, h = rng.uniform(8, 46), rng.uniform(8, 44)
            cat = int(rng.integers(1, classes + 1))
            poly = [x, y, x + w, y, x + w, y + h, x, y + h]
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": img, "category_id": cat,
                                      "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0, "segmentation": [poly]})
            for k in range(3):
                j = rng.normal(0, 2 + 3 * k, 4)
                bx, by, bw, bh = x + j[0], y + j[1], max(2.0, w + j[2]), max(2.0, h + j[3])
                # results carry RLE masks, as detectron2 writes them
                rle = mask_util.merge(mask_util.frPyObjects([[bx, by, bx + bw, by, bx + bw, by + bh, bx, by + bh]], H, W))
                rle["counts"] = rle["counts"].decode("ascii")
                results.append({"image_id": img, "category_id": cat if k < 2 else int(rng.integers(1, classes + 1)),
                                "bbox": [bx, by, bw, bh], "score": float(rng.uniform(0.05, 1)), "segmentation": rle})
    return gt, results


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_faster_coco_eval_gives_pycocotools_ap(iou_type):
    gt, results = synthetic_coco()
    before = json.dumps([gt, results])
    fast = evaluate_coco(gt, results, iou_type, backend="faster")
    ref = evaluate_coco(gt, results, iou_type, backend="pycocotools")
    assert json.dumps([gt, results]) == before  # the evaluator reuses its GT for the next task
    assert 0.05 < ref.stats[0] < 0.95  # a non-trivial AP, so equality means something
    assert stats_equal(fast, ref), (fast.stats, ref.stats)
    np.testing.assert_allclose(fast.eval["precision"], ref.eval["precision"], atol=1e-12)


def test_unknown_backend_is_refused():
    gt, results = synthetic_coco(images=1)
    with pytest.raises(ValueError, match="backend"):
        evaluate_coco(gt, results, "bbox", backend="nope")
