"""Conversion to detectron2 C4: renaming, every checkpoint format, both verifications, refusals."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.models import SimSiam, build_backbone
from transfer.convert import convert, d2_name, read_d2_weights, write_d2_weights
from transfer.convert_to_d2 import main as convert_main
from transfer.convert_to_d2 import parse_args
from transfer.d2_model import load_cfg
from transfer.verify import verify
from tests.helpers import REPO

CONFIG = "pascal_voc_R_50_C4_24k.yaml"


def informative_resnet50(seed: int = 0) -> dict:
    """A random ResNet-50 whose BN parameters and statistics are all distinct and non-trivial.

    Freshly initialised BN layers are all (1, 0, 0, 1): a swapped or misplaced BN tensor would then
    go unnoticed by a feature comparison. zero_init_residual is off for the same reason.
    """
    torch.manual_seed(seed)
    net = build_backbone("resnet50", zero_init_residual=False)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}


def write_format(kind: str, path: Path, state: dict) -> Path:
    """`state` (torchvision keys, no fc) saved the way each supported source lays it out."""
    if kind == "simsiam":  # official/our SimSiam: DDP prefix, projector under fc, predictor beside
        model = SimSiam("resnet50", dim=64, pred_dim=16)
        sd = {f"module.{k}": v for k, v in model.state_dict().items()}
        sd.update({f"module.encoder.{k}": v for k, v in state.items()})
        obj = {"epoch": 100, "arch": "resnet50", "state_dict": sd, "optimizer": {}}
    elif kind == "moco":  # MoCo v2: query and key encoders, a queue
        sd = {f"module.encoder_q.{k}": v for k, v in state.items()}
        sd.update({f"module.encoder_k.{k}": v + 1 for k, v in state.items()})
        sd["module.encoder_q.fc.0.weight"] = torch.randn(8, 2048)
        sd["module.queue"] = torch.randn(128, 16)
        obj = {"epoch": 200, "arch": "resnet50", "state_dict": sd}
    elif kind == "torchvision":  # a supervised file: bare keys with the classifier
        obj = dict(state, **{"fc.weight": torch.randn(1000, 2048), "fc.bias": torch.zeros(1000)})
    elif kind == "torchvision_nested":
        obj = {"state_dict": dict(state)}
    elif kind == "torchvision_no_counters":  # the classic torchvision download lacks BN counters
        obj = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    else:
        raise ValueError(kind)
    torch.save(obj, path)
    return path


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The suite shares 2 cores with other jobs; 2 OpenMP threads then collapse (a ResNet-50 forward
    measured 8.3 s vs 0.44 s with 1 thread), so these forward-heavy tests run single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cfg():
    return load_cfg(CONFIG, ["MODEL.DEVICE", "cpu"])


@pytest.fixture(scope="module")
def tv_state():
    return informative_resnet50()


@pytest.fixture(scope="module")
def good_pkl(tmp_path_factory, tv_state):
    out = tmp_path_factory.mktemp("conv") / "good.pkl"
    src = write_format("torchvision", out.with_suffix(".pth"), tv_state)
    convert(src, out)
    return out


def test_renaming_follows_the_protocol():
    assert d2_name("conv1.weight") == "stem.conv1.weight"
    assert d2_name("bn1.running_var") == "stem.conv1.norm.running_var"
    assert d2_name("layer1.0.conv2.weight") == "res2.0.conv2.weight"
    assert d2_name("layer2.3.bn3.bias") == "res3.3.conv3.norm.bias"
    assert d2_name("layer3.0.downsample.0.weight") == "res4.0.shortcut.weight"
    assert d2_name("layer4.0.downsample.1.running_mean") == "res5.0.shortcut.norm.running_mean"


def test_converted_names_are_exactly_detectron2s_backbone_and_res5(cfg, good_pkl):
    """The renamed keys equal the C4 model's backbone + res5 keys minus the prefixes and the extra norm."""
    from transfer.d2_model import build_c4_model

    model_keys = set()
    for k in build_c4_model(cfg).state_dict():
        if k.startswith("backbone."):
            model_keys.add(k[len("backbone."):])
        elif k.startswith("roi_heads.res5.") and not k.startswith("roi_heads.res5.norm."):
            model_keys.add(k[len("roi_heads."):])
    assert set(read_d2_weights(good_pkl)["model"]) == model_keys


def test_pickle_holds_only_numpy_arrays_and_plain_types(good_pkl, tv_state):
    class NoTorch(pickle.Unpickler):  # loading must not need torch at all
        def find_class(self, module, name):
            assert not module.startswith("torch"), (module, name)
            return super().find_class(module, name)

    with open(good_pkl, "rb") as f:
        payload = NoTorch(f).load()
    assert set(payload) == {"model", "__author__", "matching_heuristics"}
    assert payload["matching_heuristics"] is True and isinstance(payload["__author__"], str)
    assert all(type(v) is np.ndarray for v in payload["model"].values())
    np.testing.assert_array_equal(payload["model"]["res4.2.conv2.norm.running_var"],
                                  tv_state["layer3.2.bn2.running_var"].numpy())
    assert not any(".fc." in k or k.startswith("fc") for k in payload["model"])


@pytest.mark.parametrize("kind", ["simsiam", "moco", "torchvision", "torchvision_nested", "torchvision_no_counters"])
def test_every_format_converts_and_verifies(tmp_path, kind, tv_state, cfg):
    src = write_format(kind, tmp_path / "in.pth", tv_state)
    result = convert(src, tmp_path / "out.pkl")
    assert result["kind"] == ("moco" if kind == "moco" else "simsiam" if kind == "simsiam" else "torchvision")
    assert bool(result["filled_counters"]) == (kind == "torchvision_no_counters")
    verdict = verify(tmp_path / "out.pkl", result["tv_state"], cfg)
    assert verdict.ok, verdict.summary()
    assert verdict.coverage.new_layer == [f"roi_heads.res5.norm.{n}" for n in
                                          ("bias", "num_batches_tracked", "running_mean", "running_var", "weight")]
    assert len(verdict.coverage.loaded) == len(tv_state) and not verdict.coverage.unused
    assert verdict.features.res4_rel <= 1e-4 and verdict.features.res5_rel <= 1e-4


def test_random_baseline_through_the_cli(tmp_path, capsys):
    ok = convert_main(parse_args(["random", str(tmp_path / "scratch.pkl"), "--seed", "3"]))
    out = capsys.readouterr().out
    assert ok, out
    assert "coverage OK" in out and "extra norm after res5" in out and "VERDICT: PASS" in out


def _broken_copy(good: Path, dst: Path, edit) -> Path:
    payload = read_d2_weights(good)
    edit(payload["model"])
    return write_d2_weights(payload["model"], dst, payload["__author__"])


def test_dropped_tensor_fails_coverage(tmp_path, good_pkl, tv_state, cfg):
    bad = _broken_copy(good_pkl, tmp_path / "dropped.pkl", lambda m: m.pop("res3.1.conv2.norm.running_var"))
    verdict = verify(bad, tv_state, cfg)
    assert not verdict.ok and not verdict.coverage.ok
    assert verdict.coverage.not_found == ["backbone.res3.1.conv2.norm.running_var"]
    assert "VERDICT: FAIL" in verdict.summary()


def test_misnamed_tensor_fails_coverage(tmp_path, good_pkl, tv_state, cfg):
    def misname(m):
        m["res5.2.conv3.weights"] = m.pop("res5.2.conv3.weight")

    verdict = verify(_broken_copy(good_pkl, tmp_path / "misnamed.pkl", misname), tv_state, cfg)
    assert not verdict.ok
    assert verdict.coverage.not_found == ["roi_heads.res5.2.conv3.weight"]
    assert verdict.coverage.unused == ["res5.2.conv3.weights"]


def test_swapped_bn_tensors_fail_the_feature_check(tmp_path, good_pkl, tv_state, cfg):
    """Same names, same shapes, wrong places: only the numerical comparison can catch it."""
    def swap(m):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            a, b = f"res4.1.conv1.norm.{leaf}", f"res4.1.conv2.norm.{leaf}"
            m[a], m[b] = m[b], m[a]

    verdict = verify(_broken_copy(good_pkl, tmp_path / "swapped.pkl", swap), tv_state, cfg)
    assert verdict.coverage.ok and not verdict.features.ok and not verdict.ok
    assert verdict.features.res4_rel > 1e-2


@pytest.mark.parametrize("opts", [["MODEL.RESNETS.STRIDE_IN_1X1", "True"], ["INPUT.FORMAT", "BGR"],
                                  ["MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]"]])
def test_wrong_detectron2_settings_fail_the_feature_check(good_pkl, tv_state, opts):
    verdict = verify(good_pkl, tv_state, load_cfg(CONFIG, ["MODEL.DEVICE", "cpu", *opts]))
    assert verdict.coverage.ok and not verdict.ok, verdict.summary()


def test_non_resnet50_is_refused_with_one_line(tmp_path):
    src = tmp_path / "r18.pth"
    torch.save(build_backbone("resnet18").state_dict(), src)
    proc = subprocess.run([sys.executable, "-m", "transfer.convert_to_d2", str(src), str(tmp_path / "o.pkl")],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "resnet50" in last and "ResNet-50" in last
    assert "Traceback" not in proc.stderr and not (tmp_path / "o.pkl").exists()


def test_output_must_be_pkl(tmp_path):
    from core.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=r"\.pkl"):
        convert("random", tmp_path / "weights.pth")
