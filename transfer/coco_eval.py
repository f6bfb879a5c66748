"""COCO box/mask evaluation with a choice of backend: faster-coco-eval (default) or pycocotools.

Without detectron2's compiled `_C`, its COCOEvaluator runs pure-Python pycocotools, which dominates
evaluation time on COCO val (5k images, ~100 detections each). faster-coco-eval computes the same
COCO protocol in C++; bench/bench_coco_eval.py and tests/transfer/test_trials.py check that its
AP numbers equal pycocotools' on the same detections. `--coco-eval pycocotools` is the reference path.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os

import numpy as np
from detectron2.evaluation import COCOEvaluator

from core.files import write_text

BACKENDS = ("faster", "pycocotools")


def evaluate_coco(gt: dict, results: list[dict], iou_type: str, backend: str = "faster", img_ids=None, quiet: bool = True):
    """Run the COCO protocol on a ground-truth dict and a result list; returns the evaluated object.

    The object has pycocotools' interface: `.stats` (the 12 summary numbers) and
    `.eval["precision"]` (T x R x K x A x M), which detectron2's result formatting reads.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown COCO eval backend {backend!r}; choose one of {BACKENDS}")
    # Both libraries add keys (area, id, iscrowd, ignore, rle...) to the dicts they are given; copying
    # each dict keeps the caller's data intact for the next task at a fraction of deepcopy's cost.
    gt = {**gt, **{k: [dict(x) for x in gt[k]] for k in ("images", "annotations", "categories") if k in gt}}
    if iou_type == "segm":
        # As detectron2 does: without the box, the mask area decides small/medium/large.
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    else:
        results = [dict(r) for r in results]
    out = io.StringIO()
    with contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext():
        if backend == "faster":
            from faster_coco_eval import COCO, COCOeval_faster

            coco_gt = COCO(gt)
            coco_dt = coco_gt.loadRes(results)
            evaluator = COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=lambda *a, **k: None)
        else:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(results)
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        if img_ids is not None:
            evaluator.params.imgIds = list(img_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


class BackendCOCOEvaluator(COCOEvaluator):
    """detectron2's COCOEvaluator (inference, result conversion, metric formatting) with our backend.

    Only the final scoring step is ours; everything a user compares against (AP, AP50, AP75, APs/m/l,
    per-class AP) is formatted by detectron2's own `_derive_coco_results`.
    """

    def __init__(self, dataset_name: str, output_dir: str | None = None, backend: str = "faster"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown COCO eval backend {backend!r}; choose one of {BACKENDS}")
        super().__init__(dataset_name, output_dir=output_dir, use_fast_impl=False)
        self._backend = backend

    def _eval_predictions(self, predictions, img_ids=None):
        coco_results = list(itertools.chain(*[p["instances"] for p in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(coco_results)
        if hasattr(self._metadata, "thing_dataset_id_to_contiguous_id"):
            to_dataset_id = {v: k for k, v in self._metadata.thing_dataset_id_to_contiguous_id.items()}
            for r in coco_results:
                r["category_id"] = to_dataset_id[r["category_id"]]
        if self._output_dir:
            write_text(os.path.join(self._output_dir, "coco_instances_results.json"), json.dumps(coco_results))
        if not self._do_evaluation:
            return
        self._logger.info("Evaluating predictions with the %s COCO backend", self._backend)
        for task in sorted(tasks):
            # detectron2 reports NaN when there are no detections (the COCO API cannot score none)
            coco_eval = (evaluate_coco(self._coco_api.dataset, coco_results, task, self._backend, img_ids)
                         if coco_results else None)
            self._results[task] = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes"))


def stats_equal(a, b, atol: float = 1e-12) -> bool:
    return bool(np.allclose(np.asarray(a.stats, float), np.asarray(b.stats, float), atol=atol, rtol=0, equal_nan=True))
