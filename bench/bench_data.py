"""Pretraining data path: CPU work per two-view sample, official torchvision/PIL vs data.backend=fast,
on ImageNet-sized natural-image JPEGs (bench/photos.py: 500x375 crops of scikit-image's photographs).

CPU time (time.process_time, one thread: what one DataLoader worker spends) per sample:
  official  : load_rgb + simsiam_augmentation twice (the official TwoCropsTransform on PIL)
  fast      : the fast worker (parameter draws, uint8 crop + resize, tensors), photometric on the device
  fast-cpu  : the fast backend on a CPU-only run (data.photometric=auto -> the PIL ops in the workers)
  batched   : BatchAugment on this CPU (the device-side half, were the device a CPU; info)
The three per-sample paths take turns every 8 images, and each figure is the best of --repeats
passes (the machine is shared: the minimum is the least disturbed). With a GPU the batched ops are also timed there (samples/s, info).

    python -m bench.bench_data [--size 224] [--images 48] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.photos import write_photo_folder
from bench.table import report
from core.images import image_folder, load_rgb
from pretrain.batch_augment import BatchAugment
from pretrain.data import simsiam_augmentation
from pretrain.fast_data import FastTwoViewDataset, collate_views

WORKER_GOAL, CPU_RUN_GOAL = 3.0, 0.95


def _interleaved(fns: dict, n: int, block: int = 8) -> dict:
    """CPU seconds per item of each fn, the fns taking turns every `block` items: on a shared machine
    every path then sees the same disturbance (whole passes one after the other do not), and each
    still runs several items in a row with its own data in cache, as a DataLoader worker does."""
    total = dict.fromkeys(fns, 0.0)
    for first in range(0, n, block):
        for name, fn in fns.items():
            start = time.process_time()
            for i in range(first, min(first + block, n)):
                fn(i)
            total[name] += time.process_time() - start
    return {name: t / n for name, t in total.items()}


def run(size: int = 224, images: int = 48, repeats: int = 5, batch: int = 32) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-core work: a DataLoader worker is one thread
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = image_folder(write_photo_folder(Path(tmp), per_photo=max(1, images // 8)))
            n = len(base)
            official = simsiam_augmentation(size)
            paths = [p for p, _ in base.samples]
            fast = FastTwoViewDataset(base, size, seed=0, photometric="device")
            fast_cpu = FastTwoViewDataset(base, size, seed=0, photometric="workers")

            def official_item(i):
                img = load_rgb(paths[i])
                return official(img), official(img)

            augment = BatchAugment()
            batches = [collate_views([fast[i % n] for i in range(k, k + batch)]) for k in range(0, n, batch)]
            augment(batches[0][0])  # warm-up

            def batched(k):
                x1, x2, _, _ = batches[k]
                augment(x1), augment(x2)

            t = {"official": [], "fast": [], "fast-cpu": [], "batched": []}
            for _ in range(repeats):
                per_item = _interleaved({"official": official_item, "fast": fast.__getitem__,
                                         "fast-cpu": fast_cpu.__getitem__}, n)
                for k, v in per_item.items():
                    t[k].append(v)
                t["batched"].append(_interleaved({"batched": batched}, len(batches))["batched"] / batch)
            best = {k: min(v) for k, v in t.items()}
            gpu_rate = None
            if torch.cuda.is_available():
                dev = [(x1.to("cuda"), x2.to("cuda")) for x1, x2, _, _ in batches]
                augment(dev[0][0])
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(5):
                    for x1, x2 in dev:
                        augment(x1), augment(x2)
                torch.cuda.synchronize()
                gpu_rate = 5 * len(dev) * batch / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    ms = {k: 1e3 * v for k, v in best.items()}
    print(f"bench_data: {n} JPEGs ~500x375, {size} px views, CPU ms per two-view sample (one thread, best of "
          f"{repeats}): official {ms['official']:.2f}, fast worker {ms['fast']:.2f}, fast CPU-run (PIL ops in "
          f"workers) {ms['fast-cpu']:.2f}, batched ops on this CPU {ms['batched']:.2f}; per core: official "
          f"{1e3 / ms['official']:.0f}/s, fast worker {1e3 / ms['fast']:.0f}/s"
          + (f"; batched ops on {torch.cuda.get_device_name()}: {gpu_rate:.0f} samples/s" if gpu_rate else ""))
    worker = best["official"] / best["fast"]
    cpu_run = best["official"] / best["fast-cpu"]
    rows = [
        {"name": f"data path worker CPU/sample official/fast ({size} px)", "ratio": worker,
         "goal": f">= {WORKER_GOAL:g}x", "ok": worker >= WORKER_GOAL},
        {"name": "data path CPU-only run official/fast (PIL ops in workers)", "ratio": cpu_run,
         "goal": f">= {CPU_RUN_GOAL:g} (no slower, noise)", "ok": cpu_run >= CPU_RUN_GOAL},
        {"name": "data path official/(fast worker + batched ops on CPU) (info)",
         "ratio": best["official"] / (best["fast"] + best["batched"]), "goal": "info", "ok": None},
    ]
    if gpu_rate:
        rows.append({"name": "batched device ops, two-view samples/s on the GPU (info)", "ratio": gpu_rate,
                     "goal": "info", "ok": None})
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    report(run(a.size, a.images, a.repeats))
