"""Benchmark: COCO box+mask scoring with faster-coco-eval against pycocotools, same detections.

    python -m bench.bench_coco_eval [--images 1000] [--repeats 2]      # the one-line verdict
    python -m bench.bench_coco_eval --det-iters 5                      # also: tiny CPU detection step times

Synthetic ground truth (polygon masks) and a few thousand detections (jittered true positives,
class confusions, background boxes, RLE masks as detectron2 writes them). Both backends run the full
scoring path of our COCO evaluator (loadRes, evaluate, accumulate, summarize) for bbox and segm;
the AP numbers must be identical, and the goal is >= 3x faster. Prints one line (details on stderr):
    coco_eval faster-coco-eval/pycocotools, same AP: ratio=<x>x goal >= 3x, identical AP <PASS|FAIL>
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util

GOAL = 3.0


def synthetic(images: int, seed: int = 0, classes: int = 20, height: int = 240, width: int = 320):
    rng = np.random.default_rng(seed)
    gt = {"images": [], "annotations": [], "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(classes)]}
    results = []

    def rle_of(x, y, w, h):
        poly = [x, y, x + w, y + 0.3 * h, x + w, y + h, x + 0.2 * w, y + h]  # a quadrilateral, not a box
        rle = mask_util.merge(mask_util.frPyObjects([poly], height, width))
        rle["counts"] = rle["counts"].decode("ascii")
        return poly, rle

    for img in range(1, images + 1):
        gt["images"].append({"id": img, "width": width, "height": height, "file_name": f"{img:06d}.jpg"})
        for _ in range(int(rng.integers(3, 9))):
            w, h = rng.uniform(10, 120), rng.uniform(10, 100)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            cat = int(rng.integers(1, classes + 1))
            poly, _ = rle_of(x, y, w, h)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": img, "category_id": cat,
                                      "bbox": [x, y, w, h], "area": w * h * 0.85, "iscrowd": 0,
                                      "segmentation": [poly]})
            for k in range(3):  # two localisations of the right class, one confusion
                j = rng.normal(0, 2 + 4 * k, 4)
                bw, bh = max(3.0, w + j[2]), max(3.0, h + j[3])
                bx, by = float(np.clip(x + j[0], 0, width - bw)), float(np.clip(y + j[1], 0, height - bh))
                _, rle = rle_of(bx, by, bw, bh)
                results.append({"image_id": img, "category_id": cat if k < 2 else int(rng.integers(1, classes + 1)),
                                "bbox": [bx, by, bw, bh], "score": float(rng.uniform(0.05, 1.0)), "segmentation": rle})
        for _ in range(4):  # background false positives
            bw, bh = rng.uniform(8, 80), rng.uniform(8, 80)
            bx, by = rng.uniform(0, width - bw), rng.uniform(0, height - bh)
            _, rle = rle_of(bx, by, bw, bh)
            results.append({"image_id": img, "category_id": int(rng.integers(1, classes + 1)),
                            "bbox": [bx, by, bw, bh], "score": float(rng.uniform(0.05, 0.6)), "segmentation": rle})
    return gt, results


def time_backend(backend: str, gt, results, repeats: int):
    from transfer.coco_eval import evaluate_coco

    times, evals = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        evals = {t: evaluate_coco(gt, results, t, backend=backend) for t in ("bbox", "segm")}
        times.append(time.perf_counter() - t0)
    return min(times), evals  # min: the least disturbed run on a shared machine


NAME = "coco_eval faster-coco-eval/pycocotools, same AP"


def coco_eval_bench(images: int = 1000, repeats: int = 2) -> dict:
    """Time both backends on the same synthetic detections; the row format of bench/table.py."""
    from transfer.coco_eval import stats_equal

    gt, results = synthetic(images)
    t_ref, ref = time_backend("pycocotools", gt, results, repeats)
    t_fast, fast = time_backend("faster", gt, results, repeats)
    identical = all(stats_equal(fast[t], ref[t]) for t in ref)
    ratio = t_ref / t_fast
    print(f"# {len(gt['images'])} images, {len(gt['annotations'])} GT, {len(results)} detections; bbox+segm: "
          f"pycocotools {t_ref:.2f} s, faster-coco-eval {t_fast:.2f} s; box AP {100 * ref['bbox'].stats[0]:.2f} vs "
          f"{100 * fast['bbox'].stats[0]:.2f}, mask AP {100 * ref['segm'].stats[0]:.2f} vs {100 * fast['segm'].stats[0]:.2f}"
          f"{'' if identical else ' (AP DIFFERS)'}", file=sys.stderr)
    return {"name": NAME, "ratio": ratio, "goal": f">= {GOAL:g}x, identical AP", "ok": identical and ratio >= GOAL}


def run() -> list[dict]:
    """Entry for bench/run_all.py."""
    return [coco_eval_bench()]


def detection_step_times(iters: int) -> None:
    """Median training-step and per-image inference time of each tiny CPU config on embedded data."""
    import torch
    from detectron2.utils.events import EventStorage

    from embedded.generator import EmbeddedDataConfig, generate
    from transfer.convert import convert
    from transfer.train_det import parse_args
    from transfer.trainer import Trainer, setup

    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "data", EmbeddedDataConfig(cls_train_per_class=1, cls_val_per_class=1,
                                                                voc07_trainval=8, voc07_test=4, voc12_trainval=4,
                                                                coco_train=8, coco_val=4))
        weights = convert("random", Path(tmp) / "w.pkl")["out"]
        for config in ("tiny_pascal_voc_R_50_C4.yaml", "tiny_coco_R_50_C4.yaml"):
            args = parse_args(["--config-file", config, "--data-root", str(root), "MODEL.WEIGHTS", str(weights),
                               "OUTPUT_DIR", str(Path(tmp) / config), "DATALOADER.NUM_WORKERS", "0"])
            with contextlib.redirect_stdout(io.StringIO()):  # detectron2's log handlers bind to this stream
                cfg = setup(args)
            trainer = Trainer(cfg)
            trainer.resume_or_load(resume=False)
            steps = []
            with EventStorage(0):
                for i in range(iters + 1):  # the first step warms up allocators and kernels
                    trainer.iter = i
                    t0 = time.perf_counter()
                    trainer.run_step()
                    steps.append(time.perf_counter() - t0)
            model = trainer.model.eval()
            loader = Trainer.build_test_loader(cfg, cfg.DATASETS.TEST[0])
            infer = []
            with torch.no_grad():
                for batch in loader:
                    t0 = time.perf_counter()
                    model(batch)
                    infer.append(time.perf_counter() - t0)
            print(f"# {config}: train step {statistics.median(steps[1:]):.2f} s/iter (batch {cfg.SOLVER.IMS_PER_BATCH}, "
                  f"{cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE} RoIs/image), inference {statistics.median(infer):.2f} s/image "
                  f"({cfg.MODEL.RPN.POST_NMS_TOPK_TEST} proposals), {torch.get_num_threads()} threads")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1000, help="synthetic val images (~5.5 GT, ~21 detections each)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per backend; the fastest counts")
    p.add_argument("--det-iters", type=int, default=0, help="also time N training steps of each tiny CPU config")
    args = p.parse_args(argv)
    row = coco_eval_bench(args.images, args.repeats)
    ok = row["ok"]
    print(f"{row['name']}: ratio={row['ratio']:.1f}x goal {row['goal']} {'PASS' if ok else 'FAIL'}")
    if args.det_iters:
        detection_step_times(args.det_iters)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
