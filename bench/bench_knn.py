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


def main(argv=None) -> bool:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--n-val", type=int, default=5000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--t", type=float, default=0.2)
    args = p.parse_args(argv)
    bank, bank_labels = synthetic_features(args.n_train, args.dim, args.classes, seed=0)
    queries, _ = synthetic_features(args.n_val, args.dim, args.classes, seed=1)

    knn_scores(bank[:1000], bank_labels[:1000], queries[:100], args.classes, args.k, args.t)  # warm-up
    start = time.perf_counter()
    ours = knn_scores(bank, bank_labels, queries, args.classes, args.k, args.t).argmax(1).numpy()
    ours_s = time.perf_counter() - start

    bank_np = torch.nn.functional.normalize(bank, dim=1).numpy()
    queries_np = torch.nn.functional.normalize(queries, dim=1).numpy()
    clf = KNeighborsClassifier(n_neighbors=args.k, algorithm="brute", metric="cosine", n_jobs=-1,
                               weights=lambda dist: np.exp((1.0 - dist) / args.t))
    start = time.perf_counter()
    clf.fit(bank_np, bank_labels.numpy())
    theirs = clf.predict(queries_np)
    sklearn_s = time.perf_counter() - start

    same = float((ours == theirs).mean())
    ratio = sklearn_s / ours_s
    ok = ratio >= GOAL and same == 1.0
    print(f"bench_knn: ours {ours_s:.2f} s, sklearn {sklearn_s:.2f} s; {args.n_val} queries x {args.n_train} bank x "
          f"{args.dim}-d, {args.classes} classes, k={args.k} T={args.t:g}; identical predictions {100 * same:.2f}%")
    report([{"name": "knn speed sklearn/ours, same predictions", "ratio": ratio, "goal": f">= {GOAL:g}x, 100% same",
             "ok": ok}])
    return ok


if __name__ == "__main__":
    main()
