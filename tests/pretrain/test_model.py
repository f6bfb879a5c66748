"""Architecture, loss, schedule and config: the recipe of PROTOCOL.md section 1, checked field by field."""

import math

import pytest
import torch
from torch import nn

from core.config import ConfigError, load_config
from core.models import SimSiam, build_backbone
from pretrain.loss import negative_cosine, output_std, simsiam_loss
from core.schedule import cosine_lr, scaled_lr, set_lr
from pretrain.loop import build_optimizer
from tests.helpers import PRETRAIN_DEFAULTS, REPO


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SimSiam("resnet50")


def test_projector_layout(model):
    fc = model.encoder.fc
    kinds = [type(m).__name__ for m in fc]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert [(m.in_features, m.out_features) for m in fc if isinstance(m, nn.Linear)] == [(2048, 2048)] * 3
    assert fc[0].bias is None and fc[3].bias is None  # hidden linears have no bias
    assert fc[6].bias is not None and not fc[6].bias.requires_grad  # frozen bias before the affine-free BN
    assert fc[1].affine and fc[4].affine and not fc[7].affine
    assert not isinstance(fc[-1], nn.ReLU)


def test_predictor_layout(model):
    kinds = [type(m).__name__ for m in model.predictor]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"]  # no BN, no ReLU at the output
    assert (model.predictor[0].in_features, model.predictor[0].out_features) == (2048, 512)
    assert model.predictor[0].bias is None and model.predictor[1].affine
    assert (model.predictor[3].in_features, model.predictor[3].out_features) == (512, 2048)
    assert model.predictor[3].bias is not None


def test_official_key_names(model):
    keys = {k.rsplit(".", 1)[0] for k in model.state_dict() if "fc." in k or "predictor" in k}
    assert keys == {f"encoder.fc.{i}" for i in (0, 1, 3, 4, 6, 7)} | {f"predictor.{i}" for i in (0, 1, 3)}


def test_zero_init_residual(model):
    for layer in (model.encoder.layer1, model.encoder.layer4):
        for block in layer:
            assert torch.count_nonzero(block.bn3.weight) == 0
            assert torch.count_nonzero(block.bn2.weight) > 0
    r18 = build_backbone("resnet18", zero_init_residual=True)
    assert torch.count_nonzero(r18.layer1[0].bn2.weight) == 0
    # off by default: the literature's random init (the eval "random" baseline) is the standard one
    assert torch.count_nonzero(build_backbone("resnet18").layer1[0].bn2.weight) > 0


def test_cifar_variant_and_two_layer_projector():
    net = SimSiam("resnet18_cifar", dim=2048, pred_dim=512, proj_layers=2)
    assert net.encoder.conv1.kernel_size == (3, 3) and net.encoder.conv1.stride == (1, 1)
    assert isinstance(net.encoder.maxpool, nn.Identity)
    assert [type(m).__name__ for m in net.encoder.fc] == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert net.encoder.fc[0].in_features == 512
    net.eval()
    p1, p2, z1, z2 = net(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    assert p1.shape == z2.shape == (2, 2048)


def test_loss_known_answers():
    v = torch.randn(4, 8)
    assert negative_cosine(v, 3 * v).item() == pytest.approx(-1.0, abs=1e-6)
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 2.0]])
    assert negative_cosine(a, b).item() == pytest.approx(0.0, abs=1e-7)
    assert negative_cosine(a, -a).item() == pytest.approx(1.0)
    # symmetric: D(p1, z2)/2 + D(p2, z1)/2
    assert simsiam_loss(a, b, a, a).item() == pytest.approx(0.5 * 0.0 + 0.5 * -1.0)


def test_stop_gradient_blocks_z():
    p1, p2, z1, z2 = (torch.randn(4, 8, requires_grad=True) for _ in range(4))
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0
    z3 = torch.randn(4, 8, requires_grad=True)
    simsiam_loss(p1, p2, z3, z3, stop_gradient=False).backward()
    assert z3.grad.abs().sum() > 0


def test_output_std_healthy_and_collapsed():
    torch.manual_seed(0)
    d = 256
    assert output_std(torch.randn(4096, d)) == pytest.approx(1 / math.sqrt(d), rel=0.05)
    assert output_std(torch.ones(64, d) + 1e-6 * torch.randn(64, d)) < 1e-4


def test_lr_schedule_values():
    assert scaled_lr(0.05, 512) == pytest.approx(0.1)
    assert scaled_lr(0.05, 256) == pytest.approx(0.05)
    assert cosine_lr(0.1, 0, 100) == pytest.approx(0.1)
    assert cosine_lr(0.1, 50, 100) == pytest.approx(0.05)
    assert cosine_lr(0.1, 99, 100) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    # warmup: linear to the peak, then cosine over the remaining epochs
    assert [cosine_lr(1.0, e, 20, 10) for e in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert cosine_lr(1.0, 10, 20, 10) == pytest.approx(1.0)
    assert cosine_lr(1.0, 15, 20, 10) == pytest.approx(0.5)


def test_optimizer_groups_and_fixed_predictor_lr(model):
    cfg = load_config(PRETRAIN_DEFAULTS)
    opt = build_optimizer(model, cfg, init_lr=0.1)
    assert all(g["weight_decay"] == 1e-4 and g["momentum"] == 0.9 for g in opt.param_groups)
    n_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_params == sum(p.numel() for p in model.parameters())  # BN and biases decayed too
    set_lr(opt, 0.01, init_lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.1]  # encoder decays, predictor fixed
    cfg.optim.fix_pred_lr = False
    opt = build_optimizer(model, cfg, init_lr=0.1)
    set_lr(opt, 0.01, init_lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01]


def test_defaults_are_the_official_recipe():
    cfg = load_config(PRETRAIN_DEFAULTS)
    assert (cfg.arch, cfg.optim.batch_size, cfg.optim.base_lr, cfg.optim.epochs) == ("resnet50", 512, 0.05, 100)
    assert (cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.fix_pred_lr) == (0.9, 1e-4, True)
    assert (cfg.model.dim, cfg.model.pred_dim, cfg.model.proj_layers) == (2048, 512, 3)
    assert (cfg.data.min_scale, cfg.data.blur, cfg.data.crop_size) == (0.2, True, 224)
    cifar = load_config(REPO / "pretrain/configs/cifar10_800ep.yaml")
    assert (cifar.arch, cifar.model.proj_layers, cifar.data.blur, cifar.optim.epochs) == ("resnet18_cifar", 2, False, 800)
    assert (cifar.optim.weight_decay, cifar.optim.base_lr, cifar.data.crop_size) == (5e-4, 0.03, 32)


def test_every_shipped_preset_is_what_its_name_says():
    """Each preset differs from the official recipe only where its name and comment say."""
    recipe = load_config(PRETRAIN_DEFAULTS).to_dict()

    def changed(name: str) -> dict:
        cfg = load_config(REPO / "pretrain/configs" / name).to_dict()
        flat = lambda d, p="": {f"{p}{k}": v for key, val in d.items()  # noqa: E731
                                for k, v in (flat(val, f"{key}.").items() if isinstance(val, dict) else [(key, val)])}
        a, b = flat(recipe), flat(cfg)
        return {k: b[k] for k in b if b[k] != a[k] and k != "out_dir"}

    # the paper's run trains in fp32 like the official code; only monitoring and saving differ
    assert changed("imagenet_100ep.yaml") == {"data.workers": 12, "monitor.knn_every": 10, "train.save_every_steps": 1000}
    assert changed("imagenet_100ep_bf16.yaml") == {**changed("imagenet_100ep.yaml"), "train.amp": "bf16",
                                                   "train.channels_last": True}
    assert changed("imagenet_200ep_bs256.yaml") == {**changed("imagenet_100ep.yaml"), "optim.batch_size": 256,
                                                    "optim.epochs": 200}
    demo = changed("embedded_cpu.yaml")
    assert (demo["optim.batch_size"], demo["optim.epochs"], demo["data.crop_size"]) == (64, 8, 64)
    assert "arch" not in demo and not any(k.startswith(("model.", "loss.")) for k in demo)  # the recipe's model and loss
    study = changed("study_embedded_cpu.yaml")
    assert study["arch"] == "resnet18" and study["optim.epochs"] == 12
    assert not any(k.startswith(("model.", "loss.")) for k in study)  # variants add their own switches
    shipped = {p.name for p in (REPO / "pretrain/configs").glob("*.yaml")} - {"defaults.yaml"}
    assert shipped == {"imagenet_100ep.yaml", "imagenet_100ep_bf16.yaml", "imagenet_200ep_bs256.yaml",
                       "embedded_cpu.yaml", "study_embedded_cpu.yaml", "cifar10_800ep.yaml"}


def test_config_is_strict(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        load_config(PRETRAIN_DEFAULTS, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="expects float"):
        load_config(PRETRAIN_DEFAULTS, ["optim.base_lr=fast"])
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(PRETRAIN_DEFAULTS, ["optim.base_lr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_base_: {PRETRAIN_DEFAULTS}\nmodel:\n  dims: 3\n")
    with pytest.raises(ConfigError, match="model.dims"):
        load_config(bad)
    # values are parsed as YAML data, never evaluated
    cfg = load_config(PRETRAIN_DEFAULTS, ["out_dir=__import__('os').getcwd()"])
    assert cfg.out_dir == "__import__('os').getcwd()"
    assert load_config(PRETRAIN_DEFAULTS, ["optim.base_lr=1"]).optim.base_lr == 1.0
