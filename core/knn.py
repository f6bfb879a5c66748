"""Weighted k-nearest-neighbour classification on l2-normalised features (memory-bank style).

Each query takes the k training features of highest cosine similarity; neighbour i votes for its
class with weight exp(sim_i / T). Queries are processed in chunks sized from a memory budget (the
similarity matrix of one chunk), never a fixed number of chunks, so the peak memory is the same for
10 or 10 million queries.

A whole grid of (k, T) settings costs one similarity pass: each chunk's product and its top-k at the
largest k are computed once (sorted, most similar first), and every (k, T) vote is taken from a prefix
of that list; the k most similar are exactly the first k of the kmax most similar, so each setting's
votes equal those of a run of its own.

Reduced precision (bf16 / fp16 product, for GPUs) changes which neighbours win near the k-th place;
neighbour_overlap measures how much against float32 on a sample of queries, and the result says so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PRECISIONS = {"float32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Below this mean fraction of float32's top-k neighbours kept, a reduced-precision result deserves a warning.
MIN_OVERLAP = 0.9
OVERLAP_SAMPLE = 256  # queries checked against float32: two products of 256 rows, noise next to the real pass


def chunk_rows(n_train: int, k: int, num_classes: int, memory_mb: float) -> int:
    """Queries per chunk so that one chunk of the pass fits memory_mb (at least one)."""
    # Per query row: similarities (n_train), top-k values/indices/labels and class votes, float32/int64.
    # A reduced-precision product needs less (2 bytes per similarity), so the float32 bound covers it.
    bytes_per_row = 4 * n_train + 24 * k + 4 * num_classes
    return max(1, int(memory_mb * 2**20 // bytes_per_row))


def _prepare(train_feats, train_labels, query_feats):
    bank = F.normalize(train_feats.float(), dim=1)
    queries = F.normalize(query_feats.float(), dim=1)
    return bank, train_labels.long().to(bank.device), queries


def _topk_neighbours(queries: torch.Tensor, bank_t: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k similarities (float32, most similar first) and bank indices of a chunk of queries; bank_t is
    the transposed bank in the product's precision. The one place the product is computed."""
    sim = torch.mm(queries.to(device=bank_t.device, dtype=bank_t.dtype), bank_t)
    top_sim, top_idx = sim.topk(k, dim=1, sorted=True)
    return top_sim.float(), top_idx


def _chunk_votes(bank, labels, queries, num_classes, pairs, memory_mb, dtype=torch.float32):
    """Yield (start, (k, T), votes of queries[start:start + rows]) for every pair, chunk by chunk, one product
    per chunk. The votes buffer is reused by the next pair: read it before asking for the next one."""
    kmax = max(k for k, _ in pairs)
    rows = chunk_rows(bank.shape[0], kmax, num_classes, memory_mb)
    bank_t = bank.to(dtype).T  # one cast of the bank for the whole pass, not one per chunk
    for start in range(0, queries.shape[0], rows):
        top_sim, top_idx = _topk_neighbours(queries[start : start + rows], bank_t, kmax)
        top_labels = labels[top_idx]
        # One buffer zeroed per pair: a fresh rows x classes allocation per pair cost as much as the vote itself
        votes = torch.empty(top_sim.shape[0], num_classes, device=bank.device)
        for k, t in pairs:
            votes.zero_().scatter_add_(1, top_labels[:, :k], (top_sim[:, :k] / t).exp())
            yield start, (k, t), votes


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
    bank, labels, queries = _prepare(train_feats, train_labels, query_feats)
    pair = (min(k, bank.shape[0]), temperature)
    out = torch.empty(queries.shape[0], num_classes, device=bank.device)
    for start, _, votes in _chunk_votes(bank, labels, queries, num_classes, [pair], memory_mb):
        out[start : start + votes.shape[0]] = votes
    return out


@torch.no_grad()
def neighbour_overlap(bank: torch.Tensor, queries: torch.Tensor, k: int, dtype: torch.dtype,
                      memory_mb: float = 256.0) -> float:
    """Mean fraction of each query's float32 top-k bank neighbours that a product in `dtype` also puts in
    its top-k (1.0: the same neighbours). bank and queries are l2-normalised; chunked like the pass."""
    k = min(k, bank.shape[0])
    bank_t, reduced_t = bank.T, bank.to(dtype).T
    rows = chunk_rows(bank.shape[0], k, 0, memory_mb)
    kept = 0.0
    for start in range(0, queries.shape[0], rows):
        chunk = queries[start : start + rows]
        _, exact = _topk_neighbours(chunk, bank_t, k)
        _, reduced = _topk_neighbours(chunk, reduced_t, k)
        member = torch.zeros(chunk.shape[0], bank.shape[0], dtype=torch.bool, device=bank.device)
        kept += member.scatter_(1, exact, True).gather(1, reduced).sum().item()
    return kept / (queries.shape[0] * k)


@torch.no_grad()
def knn_grid(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    query_feats: torch.Tensor,
    num_classes: int,
    pairs,
    memory_mb: float = 256.0,
    precision: str = "float32",
    ranks: int = 5,
) -> tuple[dict, dict]:
    """Every (k, T) of `pairs` from one similarity pass.

    Returns ({(k, T): class ranking (num_queries x min(ranks, num_classes)), best first}, info); k larger
    than the bank is clamped to it (the key stays the k asked for). info: the precision, the number of
    chunks and, for a reduced precision, the mean top-kmax neighbour overlap with float32 on up to
    OVERLAP_SAMPLE evenly spread queries (with `overlap_ok` False below MIN_OVERLAP)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    bank, labels, queries = _prepare(train_feats, train_labels, query_feats)
    asked = list(dict.fromkeys((int(k), float(t)) for k, t in pairs))
    clamp = {pair: (min(pair[0], bank.shape[0]), pair[1]) for pair in asked}
    used = list(dict.fromkeys(clamp.values()))
    dtype, ranks = PRECISIONS[precision], min(ranks, num_classes)
    ranking = {pair: torch.empty(queries.shape[0], ranks, dtype=torch.long, device=bank.device) for pair in used}
    starts = set()
    for start, pair, votes in _chunk_votes(bank, labels, queries, num_classes, used, memory_mb, dtype):
        ranking[pair][start : start + votes.shape[0]] = votes.topk(ranks, dim=1).indices
        starts.add(start)
    info = {"precision": precision, "chunks": len(starts)}
    if dtype != torch.float32:
        sample = torch.linspace(0, queries.shape[0] - 1, min(OVERLAP_SAMPLE, queries.shape[0])).long()
        overlap = neighbour_overlap(bank, queries[sample].to(bank.device), max(k for k, _ in used), dtype, memory_mb)
        info.update(neighbour_overlap=round(overlap, 6), overlap_queries=len(sample), overlap_ok=overlap >= MIN_OVERLAP)
    return {pair: ranking[clamp[pair]] for pair in asked}, info


def ranked_accuracy(ranking: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """Percent of rows whose label is among the first k columns of `ranking` (classes, best first)."""
    hit = ranking == labels.to(ranking.device)[:, None]
    return {f"top{k}": 100.0 * hit[:, :k].any(dim=1).float().mean().item() for k in ks}


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """Percent of rows whose label is among the top-k scores, for each k (k capped at num_classes)."""
    # One top-k per k, as before the grid existed: the pretraining monitor's number stays bit for bit the same
    result = {}
    for k in ks:
        result.update(ranked_accuracy(scores.topk(min(k, scores.shape[1]), dim=1).indices, labels, (k,)))
    return result


def knn_accuracy(train_feats, train_labels, query_feats, query_labels, num_classes, k=200, temperature=0.2,
                 memory_mb=256.0) -> dict[str, float]:
    scores = knn_scores(train_feats, train_labels, query_feats, num_classes, k, temperature, memory_mb)
    return topk_accuracy(scores, query_labels)
