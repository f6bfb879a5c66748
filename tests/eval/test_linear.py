"""The official linear probe: learns a separable toy problem, never touches the backbone, its sanity
check fires when the backbone moves, and it resumes exactly from its own checkpoint."""

import json

import pytest
import torch

from core.checkpoint import load_backbone_state
from core.cli import UserError
from eval import linear
from eval.linear import CHECKPOINT, BackboneChangedError, FrozenBackboneClassifier
from tests.helpers import eval_config, torchvision_checkpoint, toy_splits


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toy")
    train, val = toy_splits(tmp, train_per_class=4, val_per_class=4)  # 16 train images: one batch
    return train, val, torchvision_checkpoint(tmp / "tv_resnet18.pth")


def _fc(out_dir):
    return torch.load(out_dir / CHECKPOINT, weights_only=True)["fc"]


def test_learns_solid_colours_and_leaves_backbone_untouched(tmp_path, toy):
    train, val, ckpt = toy
    # LARS, 50 full-batch steps at 16 px (cheap backbone passes). Unclipped LARS moves fc by
    # lr * 0.001 * |fc| per step, so so few steps need a large lr (ImageNet's 28k steps do with 1.6).
    cfg = eval_config(tmp_path / "out", train, val, checkpoint=ckpt,
                      **{"linear.epochs": 50, "linear.batch_size": 16, "linear.base_lr": 300})
    result = linear.main(cfg)
    # 4 solid-colour classes are linearly separable in any conv net's pool5: the probe must find it.
    assert result["linear"]["last_epoch"]["top1"] == 100.0, result["linear"]
    assert result["linear"]["last_epoch"]["epoch"] == 50
    assert result["linear"]["best_epoch"]["top1"] >= result["linear"]["last_epoch"]["top1"]
    proto = result["protocol"]
    assert (proto["optimizer"], proto["epochs"], proto["batch_size"], proto["layer"]) == ("lars", 50, 16, "pool5")
    assert proto["base_lr"] == cfg.linear.base_lr and proto["lr"] == pytest.approx(cfg.linear.base_lr * 16 / 256)
    assert proto["checkpoint"]["kind"] == "torchvision" and len(proto["checkpoint"]["sha256"]) == 64
    assert "RandomResizedCrop" in proto["train_transform"]
    assert json.loads((tmp_path / "out" / "linear.json").read_text())["linear"] == result["linear"]


def test_backbone_bit_identical_after_training(tmp_path, toy, monkeypatch):
    train, val, ckpt = toy
    nets = []
    original_init = FrozenBackboneClassifier.__init__

    def spy(self, net):
        nets.append(net)
        original_init(self, net)

    monkeypatch.setattr(FrozenBackboneClassifier, "__init__", spy)
    linear.main(eval_config(tmp_path / "out", train, val, checkpoint=ckpt, **{"linear.epochs": 2}))
    expected, _ = load_backbone_state(ckpt, "resnet18")
    state = nets[0].state_dict()
    assert not torch.equal(state["fc.weight"], torch.zeros_like(state["fc.weight"]))
    for k, v in expected.items():  # every parameter and buffer, BN running statistics included
        assert torch.equal(state[k], v), k


def test_sanity_check_fires_when_backbone_changes(tmp_path, toy, monkeypatch):
    train, val, ckpt = toy
    original_forward = FrozenBackboneClassifier.forward

    def forward_in_train_mode(self, x):  # the classic bug: BN left in train mode updates running stats
        self.pool5.net.train()
        return original_forward(self, x)

    monkeypatch.setattr(FrozenBackboneClassifier, "forward", forward_in_train_mode)
    with pytest.raises(BackboneChangedError, match=r"after epoch 1: .*bn1\.running_mean"):
        linear.main(eval_config(tmp_path / "out", train, val, checkpoint=ckpt, **{"linear.epochs": 2}))


def test_sanity_check_catches_a_changed_weight(tmp_path, toy, monkeypatch):
    train, val, ckpt = toy
    original_step = linear.LARS.step

    target = []  # a backbone weight, captured when the probe wraps the backbone

    def step_and_nudge(self, closure=None):  # a bug that lets one backbone weight drift by 1e-6 per step
        out = original_step(self, closure)
        target[0].add_(1e-6)
        return out

    original_init = FrozenBackboneClassifier.__init__

    def spy(self, net):
        target.append(net.layer3[0].conv2.weight.data)
        original_init(self, net)

    monkeypatch.setattr(FrozenBackboneClassifier, "__init__", spy)
    monkeypatch.setattr(linear.LARS, "step", step_and_nudge)
    with pytest.raises(BackboneChangedError, match=r"layer3\.0\.conv2\.weight"):
        linear.main(eval_config(tmp_path / "out", train, val, checkpoint=ckpt, **{"linear.epochs": 2}))


def test_resume_is_exact_and_refuses_another_config(tmp_path, toy, monkeypatch):
    train, val, ckpt = toy
    straight = tmp_path / "straight"
    linear.main(eval_config(straight, train, val, checkpoint=ckpt))
    resumed = tmp_path / "resumed"
    calls = []
    original = linear.topk_accuracy

    def crash_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after epoch 1's checkpoint, before epoch 2's
        return original(*args, **kwargs)

    monkeypatch.setattr(linear, "topk_accuracy", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        linear.main(eval_config(resumed, train, val, checkpoint=ckpt))
    assert torch.load(resumed / CHECKPOINT, weights_only=True)["epoch"] == 1
    monkeypatch.setattr(linear, "topk_accuracy", original)
    result = linear.main(eval_config(resumed, train, val, checkpoint=ckpt))
    assert result["linear"]["last_epoch"]["epoch"] == 3
    for k, v in _fc(straight).items():
        assert torch.equal(v, _fc(resumed)[k]), k
    with pytest.raises(UserError, match="another checkpoint or config"):
        linear.main(eval_config(resumed, train, val, checkpoint=ckpt, **{"linear.base_lr": 0.5}))


def test_sgd_option_and_bad_optimizer(tmp_path, toy):
    train, val, ckpt = toy
    result = linear.main(eval_config(tmp_path / "sgd", train, val, checkpoint=ckpt,
                                     **{"linear.optimizer": "sgd", "linear.base_lr": 1.0, "linear.epochs": 2}))
    assert result["protocol"]["optimizer"] == "sgd" and result["protocol"]["lars_trust"] is None
    with pytest.raises(UserError, match="lars or sgd"):
        linear.main(eval_config(tmp_path / "bad", train, val, checkpoint=ckpt, **{"linear.optimizer": "adam"}))
