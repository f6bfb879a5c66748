"""Pool5 features of a frozen backbone, cached on disk so kNN, the fast probe and the linear probe's
validation share one pass per (checkpoint, dataset, transform).

The cache key is the sha256 of a JSON description of everything the features depend on:
  checkpoint   sha256 of the checkpoint file (or "random" + arch + seed), and the arch
  layer        pool5 (the ResNet's global average pool, fc bypassed)
  dataset      root path, class names, and every file's relative path, label, size and mtime
  transform    the transform's repr (sizes, interpolation, normalisation) and, for augmented
               views, the view index and seed that fix every random draw
so an edited image, another crop size or another checkpoint can never be served stale features.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import datasets

from core.distributed import all_reduce_mean, barrier
from core.features import extract_features
from core.files import save_atomic
from core.sampling import reseed_sample

LAYER = "pool5"
FORMAT_VERSION = 1


def dataset_fingerprint(ds: datasets.ImageFolder) -> str:
    """sha256 over the root, the classes and every sample's (relative path, label, size, mtime)."""
    root = Path(ds.root).resolve()
    h = hashlib.sha256()
    h.update(json.dumps({"root": str(root), "classes": list(ds.classes)}).encode())
    for path, label in ds.samples:
        st = os.stat(path)
        h.update(f"\n{os.path.relpath(path, root)}\t{label}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()


class SeededView(Dataset):
    """One augmented view per image whose random draws are a function of (seed, view, index) only,
    so the view is reproducible, independent of workers and order, and therefore cacheable."""

    def __init__(self, base: datasets.ImageFolder, transform, seed: int, view: int):
        self.base, self.transform, self.seed, self.view = base, transform, seed, view

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        path, label = self.base.samples[index]
        img = self.base.loader(path)
        reseed_sample(self.seed, self.view, index)  # the view number takes the epoch's place
        return self.transform(img), label

    def description(self) -> str:
        return f"SeededView(seed={self.seed}, view={self.view}, transform={self.transform!r})"


def transform_description(dataset) -> str:
    return dataset.description() if isinstance(dataset, SeededView) else repr(dataset.transform)


def image_folder_of(dataset) -> datasets.ImageFolder:
    return dataset.base if isinstance(dataset, SeededView) else dataset


def cache_key(checkpoint_id: dict, dataset) -> tuple[str, dict]:
    """(hex key, the description it hashes); checkpoint_id holds sha256 (or None for random), arch, seed."""
    ckpt = {"sha256": checkpoint_id["sha256"], "arch": checkpoint_id["arch"]}
    if checkpoint_id.get("read"):  # which tensors of the file (a DINO teacher vs its student)
        ckpt["read"] = checkpoint_id["read"]
    if checkpoint_id["sha256"] is None:  # a random init is identified by its seed
        ckpt["random_seed"] = checkpoint_id["seed"]
        ckpt["random_init"] = checkpoint_id.get("random_init")  # its BN statistics: recomputed or the init's
    info = {
        "format": FORMAT_VERSION,
        "checkpoint": ckpt,
        "layer": LAYER,
        "dataset": dataset_fingerprint(image_folder_of(dataset)),
        "transform": transform_description(dataset),
    }
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest(), info


def _read_cache(path: Path, info: dict):
    """The cached entry if the file exists, loads and was written for exactly this key, else None."""
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file is a miss, never an error: we can recompute it
        print(f"feature cache: ignoring unreadable {path} ({type(e).__name__}); recomputing")
        return None
    return entry if isinstance(entry, dict) and entry.get("key_info") == info else None


def cached_features(backbone, checkpoint_id: dict, dataset, cache_dir: str | Path, *, device: torch.device,
                    batch_size: int, workers: int, rank: int = 0, desc: str = "features"):
    """(features N x C float32, labels N, info) for `dataset` in its order, from the cache or one pass.

    info says whether the cache was hit, the cache file and the pass's images/s (the original pass's
    numbers on a hit). Under DDP all ranks agree on hit or miss, extract together, and rank 0 writes.
    """
    key, info = cache_key(checkpoint_id, dataset)
    path = Path(cache_dir) / f"{LAYER}-{key[:32]}.pt"
    entry = _read_cache(path, info)
    # Every rank must take the same branch, or the ranks that extract would wait forever for the others.
    if all_reduce_mean(1.0 if entry is not None else 0.0, device) < 1.0:
        entry = None
    hit = entry is not None
    if not hit:
        start = time.perf_counter()
        feats, labels = extract_features(backbone, dataset, device, batch_size=batch_size, num_workers=workers,
                                         rank=rank, desc=desc)
        seconds = time.perf_counter() - start
        entry = {"key_info": info, "feats": feats.float().contiguous(), "labels": labels.long(),
                 "seconds": seconds, "images_per_s": len(dataset) / max(seconds, 1e-9)}
        if rank == 0:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            save_atomic(entry, path)
        barrier()
    report = {"cached": hit, "cache_file": str(path), "num_images": int(entry["labels"].numel()),
              "transform": info["transform"], "pass_seconds": round(entry["seconds"], 3),
              "images_per_s": round(entry["images_per_s"], 1)}
    if rank == 0:
        how = "cache hit" if hit else "extracted"
        print(f"features {desc}: {report['num_images']} images, {how}, {report['images_per_s']:.1f} images/s "
              f"({'original pass' if hit else 'this pass'})")
    return entry["feats"], entry["labels"], report
