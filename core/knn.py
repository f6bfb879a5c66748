"""Weighted k-nearest-neighbour classification on l2-normalised features (memory-bank style).

Each query takes the k training features of highest cosine similarity; neighbour i votes for its
class with weight exp(sim_i / T). Queries are processed in chunks sized from a memory budget (the
similarity matrix of one chunk), never a fixed number of chunks, so the peak memory is the same for
10 or 10 million queries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _chunk_rows(n_train: int, k: int, num_classes: int, memory_mb: float) -> int:
    # Per query row: similarities (n_train), top-k values/indices/labels and class votes, float32/int64.
    bytes_per_row = 4 * n_train + 24 * k + 4 * num_classes
    return max(1, int(memory_mb * 2**20 // bytes_per_row))


@torch.no_grad()
def knn_scores(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    query_feats: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.2,
    memory_mb: float = 256.0,
) -> torch.Tensor:
    """Class scores (num_queries x num_classes) of the weighted kNN vote; features are normalised here."""
    bank = F.normalize(train_feats.float(), dim=1)
    queries = F.normalize(query_feats.float(), dim=1)
    labels = train_labels.long().to(bank.device)
    k = min(k, bank.shape[0])
    rows = _chunk_rows(bank.shape[0], k, num_classes, memory_mb)
    out = torch.empty(queries.shape[0], num_classes, device=bank.device)
    for start in range(0, queries.shape[0], rows):
        sim = queries[start : start + rows].to(bank.device) @ bank.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, labels[top_idx], weights)
        out[start : start + rows] = votes
    return out


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """Percent of rows whose label is among the top-k scores, for each k (k capped at num_classes)."""
    labels = labels.to(scores.device)
    result = {}
    for k in ks:
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        result[f"top{k}"] = 100.0 * (top == labels[:, None]).any(dim=1).float().mean().item()
    return result


def knn_accuracy(train_feats, train_labels, query_feats, query_labels, num_classes, k=200, temperature=0.2,
                 memory_mb=256.0) -> dict[str, float]:
    scores = knn_scores(train_feats, train_labels, query_feats, num_classes, k, temperature, memory_mb)
    return topk_accuracy(scores, query_labels)
