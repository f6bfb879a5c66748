"""Other methods' ResNet-50 checkpoints convert to detectron2 and pass the existing verification, with
the format's input normalisation in the detectron2 config (SimCLR: [0, 1] inputs, mean 0 std 255)."""

from __future__ import annotations

import pytest
import torch

from core.checkpoint_formats import IMAGENET, UNIT, Choice
from transfer.convert import convert
from transfer.d2_model import load_cfg, pixel_options
from transfer.verify import verify
from tests.helpers import method_checkpoint
from tests.transfer.test_convert import CONFIG, informative_resnet50, one_thread  # noqa: F401 (fixture)


def test_pixel_options_follow_the_normalisation():
    assert pixel_options(UNIT, "RGB") == ["MODEL.PIXEL_MEAN", "[0.0, 0.0, 0.0]", "MODEL.PIXEL_STD", "[255.0, 255.0, 255.0]"]
    assert pixel_options(IMAGENET, "RGB")[1] == "[123.675, 116.28, 103.53]"
    assert pixel_options(IMAGENET, "BGR")[3] == "[57.375, 57.12, 58.395]"
    cfg = load_cfg(CONFIG, ["MODEL.DEVICE", "cpu", *pixel_options(UNIT, "RGB")])
    assert list(cfg.MODEL.PIXEL_MEAN) == [0.0, 0.0, 0.0] and list(cfg.MODEL.PIXEL_STD) == [255.0, 255.0, 255.0]


@pytest.fixture(scope="module")
def r50():
    return informative_resnet50(seed=3)


# distinct layouts: a positional mapping with [0, 1] inputs, a second container (DINO student by key),
# a Lightning backbone.* file beside a momentum encoder
@pytest.mark.parametrize("fmt, choice", [("simclr_v2", Choice()), ("dino", Choice(key="student")),
                                         ("solo_learn", Choice())])
def test_formats_convert_and_verify(tmp_path, r50, fmt, choice):
    obj, _ = method_checkpoint(fmt, r50)
    if fmt == "dino":  # the student carries the source weights here, the teacher others
        obj["student"], obj["teacher"] = obj["teacher"], obj["student"]
    src = tmp_path / f"{fmt}.pth"
    torch.save(obj, src)
    result = convert(src, tmp_path / f"{fmt}.pkl", choice=choice)
    assert result["kind"] == fmt
    assert all(torch.equal(result["tv_state"][k], v) for k, v in r50.items())
    norm = result["normalization"]
    assert norm == (UNIT if fmt == "simclr_v2" else IMAGENET)
    cfg = load_cfg(CONFIG, ["MODEL.DEVICE", "cpu", *pixel_options(norm, "RGB")])
    verdict = verify(result["out"], result["tv_state"], cfg, mean=norm.mean, std=norm.std)
    assert verdict.ok, verdict.summary()


def test_converter_cli_takes_the_hatches(tmp_path, r50, capsys):
    from transfer.convert_to_d2 import main, parse_args

    obj, _ = method_checkpoint("simclr_v1", r50)
    src = tmp_path / "simclr_v1.pth"
    torch.save(obj, src)
    assert main(parse_args([str(src), str(tmp_path / "v1.pkl"), "--format", "simclr_v1", "--no-verify"]))
    out = capsys.readouterr().out
    assert "checkpoint format: simclr_v1" in out and "PIXEL_MEAN [0.0, 0.0, 0.0] PIXEL_STD [255.0, 255.0, 255.0]" in out
