"""Every checkpoint layout users bring loads, through the eval entry, to the same backbone weights;
a partial MoCo or torchvision checkpoint fails with one clear line naming the missing tensor."""

import pytest
import torch

from core.models import SimSiam, build_backbone
from eval import knn
from eval.context import EvalContext
from tests.helpers import eval_config, toy_splits


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpts")
    train, val = toy_splits(tmp, train_per_class=2, val_per_class=1)
    torch.manual_seed(0)
    backbone = build_backbone("resnet50", zero_init_residual=False).state_dict()
    backbone = {k: v for k, v in backbone.items() if not k.startswith("fc.")}
    # ours: a real SimSiam (small heads) carrying the backbone, saved the way pretrain/loop.py does
    model = SimSiam("resnet50", dim=64, pred_dim=16)
    model.encoder.load_state_dict(backbone, strict=False)
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    official = {"epoch": 100, "arch": "resnet50", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}
    ours = {**official, "step_in_epoch": 0, "global_step": 1, "config": {"arch": "resnet50"}, "git_revision": "x"}
    moco_sd = {f"module.encoder_q.{k}": v for k, v in backbone.items()}
    moco_sd.update({f"module.encoder_k.{k}": torch.randn_like(v.float()).to(v.dtype) for k, v in backbone.items()})
    moco_sd.update({"module.encoder_q.fc.0.weight": torch.randn(2048, 2048), "module.queue": torch.randn(128, 64)})
    moco = {"epoch": 200, "arch": "resnet50", "state_dict": moco_sd, "optimizer": {}}
    tv = {**backbone, "fc.weight": torch.randn(1000, 2048), "fc.bias": torch.zeros(1000)}
    layouts = {"ours": (ours, "simsiam"), "official": (official, "simsiam"), "moco": (moco, "moco"),
               "torchvision": (tv, "torchvision"), "tv_state_dict": ({"state_dict": tv}, "torchvision"),
               "tv_model": ({"model": tv}, "torchvision")}
    paths = {}
    for name, (obj, kind) in layouts.items():
        paths[name] = (tmp / f"{name}.pth", kind)
        torch.save(obj, paths[name][0])
    broken = {"moco": dict(moco, state_dict={k: v for k, v in moco_sd.items()
                                            if k != "module.encoder_q.layer2.1.conv2.weight"}),
              "torchvision": {k: v for k, v in tv.items() if k != "layer2.1.conv2.weight"}}
    for name, obj in broken.items():
        torch.save(obj, tmp / f"broken_{name}.pth")
    return tmp, train, val, backbone, paths


@pytest.mark.parametrize("name", ["ours", "official", "moco", "torchvision", "tv_state_dict", "tv_model"])
def test_every_layout_loads_the_same_backbone(setup, name):
    tmp, train, val, backbone, paths = setup
    path, kind = paths[name]
    ctx = EvalContext(eval_config(tmp / f"out_{name}", train, val, checkpoint=path, arch="resnet50"))
    assert ctx.checkpoint_id["kind"] == kind
    assert len(ctx.checkpoint_id["sha256"]) == 64
    state = ctx.net.state_dict()
    assert ctx.net.fc.out_features == 4  # the classifier is sized by the training set's classes
    for k, v in backbone.items():
        assert torch.equal(state[k], v), (name, k)


@pytest.mark.parametrize("name", ["moco", "torchvision"])
def test_missing_tensor_is_one_clear_line(setup, name, capsys):
    tmp, train, val, _, _ = setup
    argv = ["--checkpoint", str(tmp / f"broken_{name}.pth"), "--arch", "resnet50", "--train-dir", str(train),
            "--val-dir", str(val), "--out-dir", str(tmp / "out_broken"), "device=cpu", "data.workers=0"]
    with pytest.raises(SystemExit) as exit_info:
        knn.cli_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ")
    assert "layer2.1.conv2.weight" in err and "missing" in err


@pytest.mark.parametrize("arch,width", [("resnet34", 512), ("resnet101", 2048)])
def test_deeper_and_shallower_resnets_load(tmp_path, arch, width):
    """Classification takes the other torchvision depths too: a file of each loads bit for bit, and a
    file of one depth given as another is refused naming the arch that fits."""
    from core.checkpoint import CheckpointError, load_backbone
    from core.models import feature_dim

    torch.manual_seed(0)
    source = build_backbone(arch, zero_init_residual=False)
    path = tmp_path / f"{arch}.pth"
    torch.save(source.state_dict(), path)
    net, _ = load_backbone(path, arch)
    assert feature_dim(net) == width
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in source.state_dict().items() if not k.startswith("fc."))
    with pytest.raises(CheckpointError, match=f"--arch {arch}"):
        load_backbone(path, "resnet50")
