"""A short SimSiam run on the embedded data learns features that beat the same backbone at random init."""

import json

import pytest
import torch

from core.checkpoint import load_backbone
from core.embedded_data import EmbeddedDataConfig, generate
from core.features import extract_features
from core.knn import knn_accuracy
from pretrain.data import eval_transform, image_folder
from pretrain.train import main
from tests.conftest import tiny_config

K, T = 200, 0.2  # the official SimSiam monitor


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    cfg = EmbeddedDataConfig(voc07_trainval=2, voc07_test=2, voc12_trainval=2, coco_train=1, coco_val=1)
    return generate(tmp_path_factory.mktemp("embedded"), cfg) / "imagefolder"


def knn_top1(backbone, folder) -> float:
    tf = eval_transform(64)
    bank, queries = image_folder(folder / "train", tf), image_folder(folder / "val", tf)
    fb, lb = extract_features(backbone, bank, torch.device("cpu"), 128, show_progress=False)
    fq, lq = extract_features(backbone, queries, torch.device("cpu"), 128, show_progress=False)
    return knn_accuracy(fb, lb, fq, lq, len(bank.classes), K, T)["top1"]


def test_simsiam_beats_random_init_under_knn(tmp_path, embedded):
    out = tmp_path / "run"
    # The demo preset (ResNet-50, 64 px, batch 64, the official lr), cut from 8 epochs to 4 (28 steps).
    main(tiny_config(out, embedded / "train", **{
        "arch": "resnet50", "data.crop_size": 64, "optim.batch_size": 64, "optim.epochs": 4,
        "model.dim": 2048, "model.pred_dim": 512, "monitor.knn_every": 4, "monitor.knn_k": K, "monitor.knn_t": T,
        "monitor.knn_train_dir": embedded / "train", "monitor.knn_val_dir": embedded / "val"}))
    pretrained, _ = load_backbone(out / "checkpoint_0004.pth.tar", "resnet50")
    random_init, _ = load_backbone("random", "resnet50", seed=0)
    ours, baseline = knn_top1(pretrained, embedded), knn_top1(random_init, embedded)
    # the monitor measured the same thing during training
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["knn_top1"] == pytest.approx(ours)
    # Chance is 10%. Measured: random init 12.0%, after 4 epochs 23.5% (8 epochs: 24.0%).
    # Margin stated: at least 5 points (10 of the 200 queries) above random init.
    assert ours >= baseline + 5, (ours, baseline)
