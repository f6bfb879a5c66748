"""Fast probe: known accuracy on a separable problem; its L2 weight is chosen on training data only."""

import json
from types import SimpleNamespace

import pytest
import torch

from core.config import load_config
from eval import fast_probe, logistic
from tests.helpers import EVAL_DEFAULTS


def blobs(n_per_class, classes=5, dim=32, seed=0, spread=0.5):
    """Gaussian blobs around orthogonal means at distance sqrt(2) from each other: separable by a margin."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    means = torch.eye(dim)[:classes] * 1.0
    feats = means[labels] + spread / dim**0.5 * torch.randn(len(labels), dim, generator=g)
    return feats.relu() * 3.0 + 1.0, labels  # pool5-like: non-negative, shifted, scaled


def test_logistic_regression_reaches_known_accuracy():
    x, y = blobs(40)
    xv, yv = blobs(20, seed=1)
    search = logistic.choose_l2(x[None], y, 5, [1e-1, 1e-3], 0.2, seed=0, max_iter=100)
    l2, table = search.l2, search.table
    model = logistic.fit(x, y, 5, l2, max_iter=100)
    acc = (model.logits(xv).argmax(1) == yv).float().mean().item()
    assert acc == 1.0  # the margin (sqrt 2 between means, noise std 0.09 per axis) makes it certain
    # Separable: every weaker L2 lowers the held-out loss, so the choice sits on the weak edge and the grid
    # grows by its 3 allowed decades (before grid extensions this table was [1e-1, 1e-3]).
    assert [r["l2"] for r in table] == [1e-1, 1e-3, 1e-4, 1e-5, 1e-6] and all(r["holdout_top1"] == 100.0 for r in table)
    assert search.extensions == [1e-4, 1e-5, 1e-6] and search.at_edge


def test_stratified_holdout():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 1)
    mask = logistic.stratified_holdout(labels, 0.2, seed=0)
    assert [int(mask[labels == c].sum()) for c in range(3)] == [2, 1, 0]  # a singleton class keeps its image


class StubContext:
    """The parts of EvalContext the fast probe uses, over in-memory features, recording the call order."""

    def __init__(self, out_dir, train, val, calls):
        self.train, self.val, self.calls = train, val, calls
        self.dist = SimpleNamespace(device=torch.device("cpu"), is_main=True)
        self.num_classes = int(train[1].max()) + 1
        self.out_dir = out_dir

    def center_features(self, split):
        self.calls.append(f"features:{split}")
        feats, labels = self.train if split == "train" else self.val
        return feats, labels, {"transform": "stub", "cached": True}

    def augmented_train_features(self, view):
        raise AssertionError("no augmented views in this test")

    def protocol(self, **specific):
        return {"checkpoint": {"sha256": "stub"}, "train_dir": "t", "val_dir": "v", "image_size": 1, **specific}

    def write_result(self, name, result):
        (self.out_dir / f"{name}.json").write_text(json.dumps(result))


def test_l2_is_chosen_without_val(tmp_path, monkeypatch):
    # Overlapping classes, so the L2 weight matters and differs along the grid.
    x, y = blobs(30, classes=4, dim=16, spread=3.0)
    xv, yv = blobs(30, classes=4, dim=16, seed=1, spread=3.0)
    calls = []
    original = logistic.choose_l2

    def recording_choose_l2(*args, **kwargs):
        assert "features:val" not in calls  # val features are not even loaded when the choice is made
        out = original(*args, **kwargs)
        calls.append("chosen")
        return out

    monkeypatch.setattr(logistic, "choose_l2", recording_choose_l2)
    cfg = load_config(EVAL_DEFAULTS, ["fast_probe.l2_grid=[10.0,0.1,0.001]", "fast_probe.max_iter=50",
                                     "fast_probe.aug_views=0"])
    results = []
    for val_labels in (yv, yv[torch.randperm(len(yv), generator=torch.Generator().manual_seed(0))], (yv + 1) % 4):
        ctx = StubContext(tmp_path, (x, y), (xv, val_labels), calls)
        results.append(fast_probe.main(cfg, ctx))
        assert calls.index("chosen") < calls.index("features:val")  # val is only read after the choice
        calls.clear()
    chosen = {r["fast_probe"]["chosen_l2"] for r in results}
    tables = [r["fast_probe"]["holdout"] for r in results]
    assert len(chosen) == 1 and tables[0] == tables[1] == tables[2]
    # ...while val accuracy does react to val labels, so the test would see a leak
    assert results[0]["fast_probe"]["top1"] != results[2]["fast_probe"]["top1"]
    assert results[0]["fast_probe"]["top1"] > 60.0


def test_bad_settings_are_user_errors():
    from core.cli import UserError
    for override in ("fast_probe.l2_grid=[]", "fast_probe.holdout_fraction=1.0", "fast_probe.aug_views=-1"):
        with pytest.raises(UserError):
            fast_probe._validate(load_config(EVAL_DEFAULTS, [override]))


def test_augmented_views_are_seeded_cached_and_used(tmp_path):
    from tests.helpers import eval_config, toy_splits

    train, val = toy_splits(tmp_path, train_per_class=3, val_per_class=2)
    cfg = eval_config(tmp_path / "out", train, val, **{"fast_probe.aug_views": 2})
    first = fast_probe.main(cfg)
    infos = first["features"]["train"]
    assert len(infos) == 3 and [i["cached"] for i in infos] == [False, False, False]
    assert "RandomResizedCrop" in infos[1]["transform"] and "view=1" in infos[2]["transform"]
    assert first["protocol"]["features"] == "train centre crop + 2 augmented views"
    files = {f.name: torch.load(f, weights_only=True)["feats"] for f in (tmp_path / "out" / "feature_cache").glob("*.pt")}
    assert len(files) == 4  # train centre, 2 train views, val centre
    shared = {"fast_probe.aug_views": 2, "features.cache_dir": tmp_path / "out" / "feature_cache"}
    again = fast_probe.main(eval_config(tmp_path / "out2", train, val, **shared))
    assert all(i["cached"] for i in again["features"]["train"])  # seeded views: reproducible, so cacheable
    assert again["fast_probe"] == first["fast_probe"]
    views = [f for f in files.values() if f.shape[0] == 12]
    assert len(views) == 3 and not torch.equal(views[0], views[1])  # views differ from each other
