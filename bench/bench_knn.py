"""Our weighted kNN (core.knn, as eval.knn runs it) against scikit-learn's brute-force
KNeighborsClassifier on the same features: speed ratio (goal >= 10x) and identical predictions.

    python -m bench.bench_knn [--n-train 20000 --n-val 5000 --dim 2048 --classes 1000 --k 200 --t 0.2]

Features are synthetic pool5-like vectors (non-negative, clustered by class), so that a timing does
not need a dataset; sklearn gets the same l2-normalised float32 arrays, metric cosine, and weights
exp(sim / T) with sim = 1 - cosine distance.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.neighbors import KNeighborsClassifier

from bench.table import report
from core.knn import knn_scores

GOAL = 10.0


def synthetic_features(n: int, dim: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(1234))
    labels = torch.randint(0, classes, (n,), generator=g)
    feats = (centres[labels] + 2.0 * torch.randn(n, dim, generator=g)).relu()
    return feats, labels


def run(n_train: int = 20000, n_val: int = 5000, dim: int = 2048, classes: int = 1000, k: int = 200,
        t: float = 0.2, device: str = "auto") -> list[dict]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    bank, bank_labels = synthetic_features(n_train, dim, classes, seed=0)
    queries, _ = synthetic_features(n_val, dim, classes, seed=1)

    # eval.knn's path: features on the device, core.knn's chunked matmul + top-k + weighted vote
    b, bl, q = bank.to(dev), bank_labels.to(dev), queries.to(dev)
    knn_scores(b[:1000], bl[:1000], q[:100], classes, k, t)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    ours = knn_scores(b, bl, q, classes, k, t).argmax(1).cpu().numpy()
    ours_s = time.perf_counter() - start

    bank_np = torch.nn.functional.normalize(bank, dim=1).numpy()
    queries_np = torch.nn.functional.normalize(queries, dim=1).numpy()
    clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric="cosine", n_jobs=-1,
                               weights=lambda dist: np.exp((1.0 - dist) / t))
    start = time.perf_counter()
    clf.fit(bank_np, bank_labels.numpy())
    theirs = clf.predict(queries_np)
    sklearn_s = time.perf_counter() - start

    same = float((ours == theirs).mean())
    ratio = sklearn_s / ours_s
    ok = ratio >= GOAL and same == 1.0
    print(f"bench_knn: ours ({dev.type}) {ours_s:.2f} s, sklearn {sklearn_s:.2f} s; {n_val} queries x {n_train} bank x "
          f"{dim}-d, {classes} classes, k={k} T={t:g}; identical predictions {100 * same:.2f}%")
    return [{"name": "knn speed sklearn/ours, same predictions", "ratio": ratio, "goal": f">= {GOAL:g}x, 100% same",
             "ok": ok}]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--n-val", type=int, default=5000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--t", type=float, default=0.2)
    p.add_argument("--device", default="auto", help="where our kNN runs: auto (GPU if any) | cpu | cuda")
    report(run(**vars(p.parse_args())))
