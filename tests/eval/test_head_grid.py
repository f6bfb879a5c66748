"""Head grid: the choice uses held-out train only, batched heads equal heads trained alone, and the
entry point writes head_grid.json end to end."""

import inspect
import json
import math

import pytest
import torch

from core.cli import UserError
from core.config import ConfigError
from core.schedule import cosine_lr
from eval import cli, fast_probe, head_grid
from tests.eval.test_fast_probe import StubContext, blobs
from tests.helpers import eval_config, toy_splits


def test_choice_is_the_best_held_out_head_and_never_sees_val():
    # Separable blobs: lr 1e-6 cannot leave the zero init in 3 epochs (held-out loss stays ~ln 5), lr 0.3 fits.
    x, y = blobs(40)
    grid = [(1e-6, 0.0), (0.3, 0.0), (0.3, 1e-3)]
    choice = head_grid.choose_head(x[None], y, 5, grid, 0.2, seed=0, epochs=3, batch_size=16, momentum=0.9)
    tiny, good = choice.table[0], choice.table[1]
    assert tiny["holdout_loss"] == pytest.approx(math.log(5), abs=1e-3) and good["holdout_loss"] < 0.5
    assert (choice.lr, choice.weight_decay) != (1e-6, 0.0)
    best = max(choice.table, key=lambda r: (r["holdout_top1"], -r["holdout_loss"]))
    assert (choice.lr, choice.weight_decay) == (best["lr"], best["weight_decay"])
    assert not any("val" in name for name in inspect.signature(head_grid.choose_head).parameters)


def test_diverged_heads_are_never_chosen():
    # a softmax head's gradient is bounded, so only an absurd lr overflows float32; such a head is skipped
    x, y = blobs(20)
    choice = head_grid.choose_head(x[None], y, 5, [(1e38, 0.0), (0.1, 0.0)], 0.2, 0, 2, 16, 0.9)
    assert choice.table[0]["diverged"] and choice.table[0]["holdout_top1"] is None and choice.lr == 0.1
    with pytest.raises(UserError, match="lower head_grid.lrs"):
        head_grid.choose_head(x[None], y, 5, [(1e38, 0.0)], 0.2, 0, 2, 16, 0.9)


def test_batched_heads_equal_heads_trained_one_at_a_time():
    x, y = blobs(20, classes=4, dim=16, spread=3.0)  # overlapping: the heads differ by lr and wd
    grid = [(0.01, 0.0), (0.1, 0.0), (0.1, 0.05), (1.0, 0.01)]
    epochs, batch, momentum = 3, 16, 0.9  # 80 rows: the last batch of each epoch is short
    heads = head_grid.train_heads(x, y, 4, grid, epochs, batch, momentum, seed=7)
    z = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    steps = epochs * math.ceil(len(x) / batch)
    for (lr, wd), head in zip(grid, heads):
        # the reference: nn.Linear + torch.optim.SGD + autograd, alone, same batches (weight decay on the weight)
        fc = torch.nn.Linear(16, 4)
        torch.nn.init.zeros_(fc.weight), torch.nn.init.zeros_(fc.bias)
        opt = torch.optim.SGD([{"params": [fc.weight], "weight_decay": wd}, {"params": [fc.bias], "weight_decay": 0}],
                              lr=lr, momentum=momentum)
        for step, idx in enumerate(head_grid.batches(len(x), batch, epochs, seed=7)):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(lr, step, steps)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(fc(z[idx]), y[idx]).backward()
            opt.step()
        torch.testing.assert_close(head.weight, fc.weight.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(head.bias, fc.bias.detach(), rtol=1e-4, atol=1e-5)


def test_val_is_loaded_only_after_the_choice(tmp_path, monkeypatch):
    x, y = blobs(30, classes=4, dim=16, spread=3.0)
    xv, yv = blobs(10, classes=4, dim=16, seed=1, spread=3.0)
    calls = []
    original = head_grid.choose_head

    def recording(*args, **kwargs):
        assert "features:val" not in calls
        calls.append("chosen")
        return original(*args, **kwargs)

    monkeypatch.setattr(head_grid, "choose_head", recording)
    cfg = eval_config(tmp_path, tmp_path, tmp_path, **{"fast_probe.aug_views": 0, "head_grid.epochs": 2})
    result = head_grid.main(cfg, StubContext(tmp_path, (x, y), (xv, yv), calls))
    assert calls == ["features:train", "chosen", "features:val"]
    assert len(result["head_grid"]["holdout"]) == len(cfg.head_grid.lrs) * len(cfg.head_grid.weight_decays)


def test_bad_grid_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="head_grid.lrs"):
        head_grid._validate(eval_config(tmp_path, tmp_path, tmp_path, **{"head_grid.lrs": "[]"}))
    with pytest.raises(UserError, match="head_grid.weight_decays"):
        head_grid._validate(eval_config(tmp_path, tmp_path, tmp_path, **{"head_grid.weight_decays": "[-1]"}))
    with pytest.raises(ConfigError, match="head_grid.momentum"):
        cli.load(cli.DEFAULT_CONFIG, ["head_grid.momentum=1.5"])


def test_entry_point_writes_head_grid_json_with_the_fast_probe_gap(tmp_path):
    train, val = toy_splits(tmp_path)
    cfg = eval_config(tmp_path / "out", train, val, **{"head_grid.lrs": "[0.01,0.1]", "head_grid.epochs": 2,
                                                        "head_grid.batch_size": 16})
    fast = fast_probe.main(cfg)
    result = head_grid.main(cfg)
    written = json.loads((tmp_path / "out" / "head_grid.json").read_text())
    assert written["head_grid"]["top1"] == result["head_grid"]["top1"] and 0 <= result["head_grid"]["top1"] <= 100
    assert len(written["head_grid"]["holdout"]) == 2 * len(cfg.head_grid.weight_decays)
    assert written["protocol"]["heads"] == 4 and written["protocol"]["layer"] == "pool5"
    assert written["fast_probe"]["gap_top1"] == pytest.approx(result["head_grid"]["top1"] - fast["fast_probe"]["top1"])
    assert written["features"]["train"][0]["cached"]  # the fast probe's features, not a second pass
    assert "head_grid" in json.loads((tmp_path / "out" / "done.json").read_text())
