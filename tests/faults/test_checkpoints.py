"""Bad checkpoints through the one loader (core.checkpoint) and the detectron2 weight path: each a
clear CheckpointError naming the file, and a pickle that carries code never runs it."""

import os
import pickle

import numpy as np
import pytest
import torch

from core.checkpoint import CheckpointError, load_backbone_state
from core.models import build_backbone
from pretrain.loop import LAST, main
from tests.helpers import tiny_config
from transfer.convert import convert, read_d2_weights


def _official(path, state):
    """The official SimSiam layout: state_dict with module.encoder.* keys (projector fc.* dropped here)."""
    torch.save({"epoch": 1, "arch": "resnet18", "state_dict": {f"module.encoder.{k}": v for k, v in state.items()}}, path)
    return path


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return {k: v for k, v in build_backbone("resnet18").state_dict().items() if not k.startswith("fc.")}


class CarriesCode:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_good_checkpoint_loads(tmp_path, r18):
    state, kind = load_backbone_state(_official(tmp_path / "ok.pth.tar", r18), "resnet18")
    assert kind == "simsiam" and all(torch.equal(v, r18[k]) for k, v in state.items())


def test_truncated(tmp_path, r18):
    path = _official(tmp_path / "cut.pth.tar", r18)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {path}.*truncated"):
        load_backbone_state(path, "resnet18")


def test_wrong_architecture(tmp_path, r18):
    path = _official(tmp_path / "r18.pth.tar", r18)
    with pytest.raises(CheckpointError, match=f"{path} does not match a resnet50 backbone .it may be another architecture"):
        load_backbone_state(path, "resnet50")


def test_missing_and_extra_tensors(tmp_path, r18):
    missing = {k: v for k, v in r18.items() if k != "layer4.1.bn2.weight"}
    path = _official(tmp_path / "missing.pth.tar", missing)
    with pytest.raises(CheckpointError, match=r"partial or edited checkpoint.*1 missing tensors \['layer4.1.bn2.weight'\]"):
        load_backbone_state(path, "resnet18")
    path = _official(tmp_path / "extra.pth.tar", {**r18, "layer5.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"1 unexpected \['layer5.0.conv1.weight'\]"):
        load_backbone_state(path, "resnet18")
    path = _official(tmp_path / "shape.pth.tar", {**r18, "conv1.weight": torch.zeros(64, 3, 3, 3)})
    with pytest.raises(CheckpointError, match="tensor conv1.weight has shape"):
        load_backbone_state(path, "resnet18")


def test_nan_weights(tmp_path, r18):
    bad = dict(r18)
    bad["layer3.0.conv2.weight"] = bad["layer3.0.conv2.weight"].clone()
    bad["layer3.0.conv2.weight"][0, 0, 0, 0] = float("nan")
    path = _official(tmp_path / "nan.pth.tar", bad)
    with pytest.raises(CheckpointError, match=f"{path}: tensor layer3.0.conv2.weight holds NaN or inf"):
        load_backbone_state(path, "resnet18")


def test_pickle_with_code_is_refused_everywhere(tmp_path, r18, tiny_folder):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pth.tar"
    torch.save({"arch": "resnet18", "state_dict": {"module.encoder.conv1.weight": CarriesCode(marker)}}, evil)
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {evil}.*not a weights-only"):
        load_backbone_state(evil, "resnet18")
    with pytest.raises(CheckpointError, match=str(evil)):  # the detectron2 converter reads through the same loader
        convert(evil, tmp_path / "out.pkl")
    out = tmp_path / "run"  # pretraining's resume reads whatever checkpoint sits in out_dir
    out.mkdir()
    evil.rename(out / LAST)
    with pytest.raises(CheckpointError, match=str(out / LAST)):
        main(tiny_config(out, tiny_folder))
    assert not marker.exists()


def test_detectron2_pkl_with_code_or_truncated_is_refused(tmp_path):
    from transfer.trainer import load_pretrained
    from transfer.verify import SafeCheckpointer

    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"stem.conv1.weight": CarriesCode(marker)}, "__author__": "x"}))
    with pytest.raises(CheckpointError, match=rf"cannot read detectron2 weights {evil}.*posix.system"):
        read_d2_weights(evil)
    with pytest.raises(CheckpointError, match=str(evil)):  # the reader detectron2's loading goes through here
        SafeCheckpointer(torch.nn.Linear(1, 1), save_to_disk=False)._load_file(str(evil))
    from core.cli import UserError

    with pytest.raises(UserError, match=str(evil)):  # the trainer's checked load of MODEL.WEIGHTS
        load_pretrained(torch.nn.Linear(1, 1), str(evil))
    assert not marker.exists()
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(pickle.dumps({"model": {"w": np.zeros(100)}, "__author__": "x"})[:50])
    with pytest.raises(CheckpointError, match=f"cannot read detectron2 weights {cut}"):
        read_d2_weights(cut)


def test_our_detectron2_files_hold_only_arrays(tmp_path):
    out = convert("random", tmp_path / "random.pkl", seed=0)["out"]
    data = read_d2_weights(out)  # the restricted reader accepts them
    assert set(data) == {"model", "__author__", "matching_heuristics"}
    assert all(type(v) is np.ndarray for v in data["model"].values())
    # and detectron2's model-zoo style files of plain arrays written at protocol 2 too
    old = tmp_path / "proto2.pkl"
    old.write_bytes(pickle.dumps({"model": {"w": np.arange(3, dtype=np.float32)}, "__author__": "x"}, protocol=2))
    assert np.array_equal(read_d2_weights(old)["model"]["w"], np.arange(3))
