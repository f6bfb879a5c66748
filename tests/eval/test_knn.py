"""kNN: a hand-computed 4-point answer, sklearn's neighbours, and the knn.json protocol record."""

import math

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from core.knn import knn_scores, topk_accuracy
from eval.knn import parse_grid
from core.cli import UserError

# Query q = (1, 0). Bank (unit vectors) and cosine similarities to q:
#   a = (1, 0)     label 0, sim 1.0
#   b = (0.8, 0.6) label 1, sim 0.8
#   c = (0.6, 0.8) label 1, sim 0.6
#   d = (0, 1)     label 0, sim 0.0
BANK = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
LABELS = torch.tensor([0, 1, 1, 0])
QUERY = torch.tensor([[2.0, 0.0]])  # not unit length: kNN must normalise it


def test_four_point_bank_by_hand():
    # k = 3 keeps a, b, c; d (sim 0) is out. Votes: class 0 <- a, class 1 <- b + c.
    for t in (1.0, 0.07):
        expected = torch.tensor([[math.exp(1.0 / t), math.exp(0.8 / t) + math.exp(0.6 / t)]])
        got = knn_scores(BANK, LABELS, QUERY, num_classes=2, k=3, temperature=t)
        assert torch.allclose(got, expected, rtol=1e-5), (t, got, expected)
    # The temperature decides: at T=1 the two class-1 neighbours outvote a (e^.8 + e^.6 = 4.05 > e^1 = 2.72);
    # at T=0.07 the nearest neighbour dominates.
    assert knn_scores(BANK, LABELS, QUERY, 2, k=3, temperature=1.0).argmax().item() == 1
    assert knn_scores(BANK, LABELS, QUERY, 2, k=3, temperature=0.07).argmax().item() == 0
    # k = 4 adds d's vote exp(0 / T) = 1 to class 0.
    got = knn_scores(BANK, LABELS, QUERY, num_classes=2, k=4, temperature=1.0)
    assert torch.allclose(got, torch.tensor([[math.exp(1.0) + 1.0, math.exp(0.8) + math.exp(0.6)]]), rtol=1e-5)


@pytest.mark.parametrize("memory_mb", [256.0, 0.001])  # one chunk, and one query row per chunk
def test_neighbours_equal_sklearn_brute_cosine(memory_mb):
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(300, 24)).astype(np.float32)
    queries = rng.normal(size=(40, 24)).astype(np.float32)
    labels = rng.integers(0, 5, 300)
    k, t = 20, 0.07
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine").fit(bank)
    dist, idx = nn.kneighbors(queries)
    expected = np.zeros((40, 5))
    for q in range(40):
        for d, i in zip(dist[q], idx[q]):
            expected[q, labels[i]] += math.exp((1.0 - d) / t)  # cosine distance = 1 - similarity
    got = knn_scores(torch.from_numpy(bank), torch.from_numpy(labels), torch.from_numpy(queries), 5, k=k,
                     temperature=t, memory_mb=memory_mb)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4)


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    acc = topk_accuracy(scores, torch.tensor([1, 1, 0]), ks=(1, 2))
    assert acc["top1"] == pytest.approx(100 / 3) and acc["top2"] == pytest.approx(200 / 3)


def test_grid_parsing():
    assert parse_grid([[200, 0.2], [20, 0.07]]) == [(200, 0.2), (20, 0.07)]
    for bad in ([], [[0, 0.2]], [[20]], [[20, -1]], [["20", 0.1]]):
        with pytest.raises(UserError):
            parse_grid(bad)


class _FakeContext:
    """What eval.knn.main reads from an EvalContext, on fixed features (no backbone, no images)."""

    def __init__(self):
        from types import SimpleNamespace

        g = torch.Generator().manual_seed(0)
        self.features = {"train": (torch.randn(60, 8, generator=g), torch.arange(60) % 3, {"n": 60}),
                         "val": (torch.randn(20, 8, generator=g), torch.arange(20) % 3, {"n": 20})}
        self.dist, self.num_classes, self.written = SimpleNamespace(device=torch.device("cpu"), is_main=True), 3, {}

    def center_features(self, split):
        return self.features[split]

    def protocol(self, **specific):
        return specific

    def write_result(self, name, result):
        self.written[name] = result


def test_eval_knn_grid_rows_and_reduced_precision_falls_back_on_cpu(capsys):
    from eval import knn as eval_knn
    from eval.cli import DEFAULT_CONFIG, load

    grid = [[5, 0.07], [20, 0.2], [100, 0.1]]
    ctx = _FakeContext()
    cfg = load(DEFAULT_CONFIG, [f"knn.grid={grid}", "knn.precision=bf16"])
    result = eval_knn.main(cfg, ctx)
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("warning: knn.precision=bf16 needs a GPU") for line in err)
    assert any(line.startswith("warning: knn k=100 is larger than the bank") for line in err)
    assert result["similarity_pass"] == {"precision": "float32", "chunks": 1}
    (bank, bank_labels, _), (queries, labels, _) = ctx.features["train"], ctx.features["val"]
    for row, (k, t) in zip(result["knn"], grid):  # each row: the per-pair computation's accuracy
        expected = topk_accuracy(knn_scores(bank, bank_labels, queries, 3, k=k, temperature=t), labels)
        assert (row["k"], row["T"]) == (k, t) and row["top1"] == round(expected["top1"], 4)
        assert row["top5"] == round(expected["top5"], 4)
    with pytest.raises(UserError, match="knn.precision"):
        load(DEFAULT_CONFIG, ["knn.precision=int8"])
