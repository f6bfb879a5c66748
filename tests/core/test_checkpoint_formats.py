"""Every format of core/checkpoint_formats.py, saved the way its method saves it, loads to exactly the
source backbone and is reported as itself; the escape hatches, the one-line errors, the normalisation
that travels with the format, and the inspect command."""

from __future__ import annotations

import json

import pytest
import torch

from core.checkpoint import CheckpointError, load_backbone_detected, load_backbone_state
from core.checkpoint_formats import NAMES, UNIT, Choice, detect
from core.models import build_backbone
from tests.helpers import _simclr_v2_names, eval_config, method_checkpoint, toy_splits

R50_ONLY = {"simclr_v1", "simclr_v2"}  # the formats that only hold ResNet-50s (the converters' models)
NAMED_ONLY = {"byol", "timm", "vicreg", "simclr_v1"}  # another format's exact layout: read when named


def backbone(arch: str, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    net = build_backbone(arch)
    with torch.no_grad():  # distinct BN statistics: a swapped tensor must show
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}


@pytest.fixture(scope="module")
def r18():
    return backbone("resnet18")


@pytest.fixture(scope="module")
def r50():
    return backbone("resnet50", seed=1)


def save(tmp_path, name, obj):
    path = tmp_path / f"{name}.pth"
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("fmt", [n for n in NAMES])
def test_every_format_loads_exactly_the_source_backbone(tmp_path, fmt, r18, r50):
    arch, source = ("resnet50", r50) if fmt in R50_ONLY else ("resnet18", r18)
    obj, drops = method_checkpoint(fmt, source)
    path = save(tmp_path, fmt, obj)
    choice = Choice(format=fmt) if fmt in NAMED_ONLY else Choice()
    state, detection = load_backbone_detected(path, arch, choice=choice)
    assert detection.format == fmt
    assert state.keys() == source.keys()
    assert all(torch.equal(state[k], v) for k, v in source.items())
    assert {what: len(keys) for what, keys in detection.dropped.items()} == drops
    assert detection.normalization == (UNIT if fmt.startswith("simclr") else detection.normalization)
    if fmt in NAMED_ONLY and fmt != "simclr_v1":  # detected as the generic layout, with them named as alike
        auto = detect(torch.load(path, weights_only=True), str(path))
        # VICReg's full checkpoint is Barlow Twins' layout without its loss BN
        assert auto.format == ("barlow_twins" if fmt == "vicreg" else "torchvision") and fmt in auto.same_layout


def test_report_says_what_was_kept_and_dropped(r18):
    obj, _ = method_checkpoint("moco", r18)
    d = detect(obj, "moco.pth").to_dict()
    assert (d["format"], d["container"], d["prefix"]) == ("moco", "state_dict", "module.encoder_q.")
    assert d["kept"] == len(r18) and d["dropped"]["momentum encoder"]["count"] == len(r18) + 2
    assert d["dropped"]["queue"]["examples"] == ["module.queue", "module.queue_ptr"]
    assert d["normalization"]["name"] == "imagenet"


def test_dino_teacher_by_default_student_on_request(tmp_path, r18):
    obj, _ = method_checkpoint("dino", r18)
    path = save(tmp_path, "dino", obj)
    teacher, d = load_backbone_detected(path, "resnet18")
    assert d.container == "teacher" and torch.equal(teacher["conv1.weight"], r18["conv1.weight"])
    assert d.unread == {"student": len(r18) + 2}
    student, d = load_backbone_detected(path, "resnet18", choice=Choice(key="student"))
    assert d.container == "student" and torch.equal(student["conv1.weight"], r18["conv1.weight"] + 2)


def test_prefix_and_key_read_an_unknown_layout(tmp_path, r18):
    obj = {"weights": {**{f"net.body.{k}": v for k, v in r18.items()}, "net.neck.weight": torch.ones(2)}}
    path = save(tmp_path, "custom", obj)
    with pytest.raises(CheckpointError):
        load_backbone_state(path, "resnet18")
    state, d = load_backbone_detected(path, "resnet18", choice=Choice(key="weights", prefix="net.body."))
    assert all(torch.equal(state[k], v) for k, v in r18.items())
    assert sum(map(len, d.dropped.values())) == 1 and d.prefix == "net.body."


def test_format_flag_changes_the_normalisation(tmp_path, r50):
    obj, _ = method_checkpoint("simclr_v1", r50)
    path = save(tmp_path, "simclr_v1", obj)
    _, auto = load_backbone_detected(path, "resnet50")
    assert auto.format == "torchvision" and any("--format simclr_v1" in n for n in auto.notes)
    _, named = load_backbone_detected(path, "resnet50", choice=Choice(format="simclr_v1"))
    assert named.normalization.mean == (0, 0, 0) and named.normalization.std == (1, 1, 1)


def one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text
    return text


def test_ambiguous_file_is_one_line_with_the_hatches(tmp_path, r18):
    moco, _ = method_checkpoint("moco", r18)
    barlow, _ = method_checkpoint("barlow_twins", backbone("resnet18", seed=5))
    path = save(tmp_path, "two", {"state_dict": moco["state_dict"], "model": barlow["model"]})
    with pytest.raises(CheckpointError) as e:
        load_backbone_state(path, "resnet18")
    text = one_line(e.value)
    assert "ambiguous" in text and "moco" in text and "barlow_twins" in text
    assert "[state_dict, model]" in text and "--format NAME, --checkpoint-key KEY, --prefix PREFIX" in text
    state, _ = load_backbone_state(path, "resnet18", choice=Choice(format="moco"))
    assert torch.equal(state["conv1.weight"], r18["conv1.weight"])


def test_unknown_file_is_one_line_naming_the_closest_formats(tmp_path, r18):
    obj, _ = method_checkpoint("solo_learn", r18)
    obj["state_dict"]["mystery_head.weight"] = torch.ones(3)
    path = save(tmp_path, "odd", obj)
    with pytest.raises(CheckpointError) as e:
        load_backbone_state(path, "resnet18")
    text = one_line(e.value)
    assert "unrecognised checkpoint layout" in text and "[epoch, global_step, state_dict]" in text
    assert "closest formats: solo_learn" in text and "mystery_head.weight" in text and "--prefix PREFIX" in text
    state, d = load_backbone_state(path, "resnet18", choice=Choice(format="solo_learn"))[0], None
    assert torch.equal(state["layer4.1.bn2.running_var"], r18["layer4.1.bn2.running_var"])


@pytest.mark.parametrize("fmt", ["moco", "lightly", "simclr_v2"])
def test_partial_file_is_refused_naming_the_tensor(tmp_path, fmt, r18, r50):
    arch, source = ("resnet50", r50) if fmt in R50_ONLY else ("resnet18", r18)
    obj, _ = method_checkpoint(fmt, {k: v for k, v in source.items() if k != "layer2.1.conv2.weight"})
    with pytest.raises(CheckpointError) as e:
        load_backbone_state(save(tmp_path, fmt, obj), arch)
    assert "layer2.1.conv2.weight" in one_line(e.value) and "missing" in str(e.value)


def test_variants_that_are_not_a_torchvision_resnet_are_refused(tmp_path, r18, r50):
    sk = {"resnet": {**_simclr_v2_names(r50), "net.1.blocks.0.net.2.main_conv.0.weight": torch.ones(1)}, "head": {}}
    with pytest.raises(CheckpointError, match="selective-kernel"):
        load_backbone_state(save(tmp_path, "sk1", sk), "resnet50")
    deep = {"state_dict": {**{f"backbone.{k}": v for k, v in r18.items() if not k.startswith(("conv1", "bn1"))},
                           "backbone.stem.0.weight": torch.ones(32, 3, 3, 3)}}
    with pytest.raises(CheckpointError, match="ResNetV1d"):
        load_backbone_state(save(tmp_path, "v1d", deep), "resnet18")
    obj, _ = method_checkpoint("simclr_v2", r50)
    with pytest.raises(CheckpointError, match="pass --arch resnet50"):
        load_backbone_state(save(tmp_path, "v2", obj), "resnet18")


def test_simclr_normalisation_reaches_the_eval_transforms(tmp_path, r50):
    from eval.context import EvalContext

    obj, _ = method_checkpoint("simclr_v2", r50)
    path = save(tmp_path, "v2", obj)
    train, val = toy_splits(tmp_path, train_per_class=1, val_per_class=1)
    ctx = EvalContext(eval_config(tmp_path / "out", train, val, checkpoint=path, arch="resnet50"))
    norm = ctx.val_transform.transforms[-1]
    assert (tuple(norm.mean), tuple(norm.std)) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    aug = ctx.train_set.transform.transforms[-1]
    assert tuple(aug.std) == (1.0, 1.0, 1.0)
    proto = ctx.protocol()
    assert proto["input_normalization"]["mean"] == [0.0, 0.0, 0.0] and proto["checkpoint"]["kind"] == "simclr_v2"
    from eval.context import train_augmentation

    assert tuple(train_augmentation(16, 0.08, ctx.normalization).transforms[-1].mean) == (0.0, 0.0, 0.0)


def test_eval_config_takes_the_hatches_and_checks_the_format():
    from core.config import ConfigError
    from eval.cli import DEFAULT_CONFIG, command, load

    args = command("python -m eval.knn", "").parse(["--format", "dino", "--checkpoint-key", "student", "--prefix", "x."])
    cfg = load(args.config, args.overrides)
    assert (cfg.checkpoint_format, cfg.checkpoint_key, cfg.checkpoint_prefix) == ("dino", "student", "x.")
    with pytest.raises(ConfigError, match="checkpoint_format"):
        load(DEFAULT_CONFIG, ["checkpoint_format=nope"])


def test_inspect_json(tmp_path, r18, capsys):
    from core.inspect_checkpoint import cli

    obj, _ = method_checkpoint("solo_learn", r18)
    path = save(tmp_path, "solo", obj)
    with pytest.raises(SystemExit) as e:
        cli([str(path), "--json", "--arch", "resnet18"])
    assert e.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "solo_learn" and report["prefix"] == "backbone." and report["kept"] == len(r18)
    assert report["dropped"]["momentum encoder"]["count"] == len(r18) and report["arch_check"]["ok"]
    with pytest.raises(SystemExit) as e:
        cli([str(path), "--format", "moco"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "does not fit" in err
