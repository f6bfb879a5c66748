"""core.knn's grid: one similarity pass for every (k, T), equal to per-pair runs and to scikit-learn,
chunked by the memory budget; the reduced-precision neighbour-overlap check."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.neighbors import KNeighborsClassifier

from core import knn
from core.knn import knn_grid, knn_scores, neighbour_overlap

GRID = [(k, t) for k in (1, 5, 20, 60) for t in (0.02, 0.07, 0.5)]


def _data(n_train=300, n_query=40, dim=16, classes=5, seed=0):
    # Gaussian features: no two cosine similarities are exactly equal, so neighbour order has no ties to break
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n_train, dim, generator=g), torch.randint(0, classes, (n_train,), generator=g),
            torch.randn(n_query, dim, generator=g), classes)


def test_grid_equals_per_pair_runs_exactly():
    bank, labels, queries, classes = _data()
    for memory_mb in (256.0, 0.001):  # one chunk; one query row per chunk
        rankings, info = knn_grid(bank, labels, queries, classes, GRID, memory_mb=memory_mb)
        assert info == {"precision": "float32", "chunks": 1 if memory_mb == 256.0 else len(queries)}
        for pair in GRID:
            scores = knn_scores(bank, labels, queries, classes, *pair, memory_mb=memory_mb)
            assert torch.equal(rankings[pair], scores.topk(5, dim=1).indices), pair


def test_grid_equals_sklearn_predictions_for_every_pair():
    bank, labels, queries, classes = _data()
    rankings, _ = knn_grid(bank, labels, queries, classes, GRID)
    clf = KNeighborsClassifier(algorithm="brute", metric="cosine")
    clf.fit(F.normalize(bank, dim=1).numpy(), labels.numpy())
    for k, t in GRID:
        clf.set_params(n_neighbors=k, weights=lambda dist, t=t: np.exp((1.0 - dist) / t))
        expected = clf.predict(F.normalize(queries, dim=1).numpy())
        np.testing.assert_array_equal(rankings[(k, t)][:, 0].numpy(), expected, err_msg=f"k={k} T={t}")


def test_one_product_per_chunk_for_the_whole_grid_within_the_memory_budget(monkeypatch):
    bank, labels, queries, classes = _data(n_query=100)
    sweep = [(k, t) for k in (10, 20, 50, 100, 200) for t in (0.02, 0.05, 0.07, 0.1, 0.2, 0.5)]
    memory_mb = 0.05
    bytes_per_row = 4 * len(bank) + 24 * 200 + 4 * classes  # similarities + top-200 + votes of one query
    rows = int(memory_mb * 2**20 // bytes_per_row)
    assert 1 < rows < len(queries)
    calls, mm = [], torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: calls.append(a.shape[0]) or mm(a, b))
    _, info = knn_grid(bank, labels, queries, classes, sweep, memory_mb=memory_mb)
    assert len(calls) == info["chunks"] == math.ceil(len(queries) / rows)  # 30 pairs, one product per chunk
    assert max(calls) == rows and sum(calls) == len(queries)
    assert rows * bytes_per_row <= memory_mb * 2**20
    calls.clear()  # reduced precision: the pass and its float32 overlap check keep to the same budget
    _, info = knn_grid(bank, labels, queries, classes, sweep, memory_mb=memory_mb, precision="bf16")
    assert max(calls) * (4 * len(bank) + 24 * 200) <= memory_mb * 2**20
    assert len(calls) == info["chunks"] + 2 * math.ceil(len(queries) / max(calls[info["chunks"]:]))


def test_k_larger_than_bank_is_clamped_and_keyed_as_asked():
    bank, labels, queries, classes = _data(n_train=30)
    rankings, _ = knn_grid(bank, labels, queries, classes, [(100, 0.1), (30, 0.1)])
    assert torch.equal(rankings[(100, 0.1)], rankings[(30, 0.1)])


def test_neighbour_overlap_against_sets_computed_here():
    bank, _, queries, _ = _data(n_train=2000, n_query=50, dim=64)
    bank, queries = F.normalize(bank, dim=1), F.normalize(queries, dim=1)
    assert neighbour_overlap(bank, queries, 20, torch.float32) == 1.0
    exact = (queries @ bank.T).topk(20, dim=1).indices
    reduced = (queries.bfloat16() @ bank.bfloat16().T).topk(20, dim=1).indices  # bf16 matmul runs on CPU tensors
    expected = np.mean([len(set(a.tolist()) & set(b.tolist())) / 20 for a, b in zip(exact, reduced)])
    got = neighbour_overlap(bank, queries, 20, torch.bfloat16)
    assert got == pytest.approx(expected, abs=1e-6) and 0.5 < got <= 1.0


def test_reduced_precision_that_loses_the_neighbours_is_flagged():
    # Similarities 0.99 + i * 1e-6 to the query: bf16 (8 bits of mantissa) rounds them all to one value, so its
    # top 10 are a tie-break's pick; the true top 10 (largest i) sit at random bank positions.
    n = 1000
    cos = 0.99 + 1e-6 * torch.randperm(n, generator=torch.Generator().manual_seed(0)).double()
    bank = torch.stack([cos, (1 - cos**2).sqrt()], dim=1).float()
    queries, labels = torch.tensor([[1.0, 0.0]]), torch.zeros(n, dtype=torch.long)
    _, info = knn_grid(bank, labels, queries, 2, [(10, 0.1)], precision="bf16")
    assert info["precision"] == "bf16" and info["overlap_queries"] == 1
    assert info["neighbour_overlap"] < knn.MIN_OVERLAP and info["overlap_ok"] is False
    _, info = knn_grid(*_data()[:3], 5, [(10, 0.1)], precision="fp16")
    assert info["overlap_ok"] is True and info["neighbour_overlap"] >= knn.MIN_OVERLAP
    with pytest.raises(ValueError):
        knn_grid(bank, labels, queries, 2, [(10, 0.1)], precision="int8")
