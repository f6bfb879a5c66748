"""A short SimSiam run on the embedded data keeps z healthy and learns features that beat the same backbone at
random init."""

import json

import pytest
import torch

from core.bn_stats import reestimate_bn_stats
from core.checkpoint import load_backbone
from core.features import extract_features
from core.knn import knn_accuracy
from core.images import eval_transform, image_folder
from pretrain.loop import main
from tests.helpers import tiny_config

K, T = 200, 0.2  # the official SimSiam monitor


@pytest.fixture
def embedded(embedded_imagefolder):
    return embedded_imagefolder


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
    # The eval stage's random-init baseline: standard init, BN statistics re-estimated on training images
    # (random_init.bn_stats=recompute); with the init's statistics (mean 0, var 1) a random ResNet-50
    # scored 26.0 here, a number that says more about unnormalised activations than about features.
    random_init, _ = load_backbone("random", "resnet50", seed=0)
    reestimate_bn_stats(random_init, image_folder(embedded / "train", eval_transform(64)), 500, batch_size=128,
                        seed=0, device=torch.device("cpu"))
    ours, baseline = knn_top1(pretrained, embedded), knn_top1(random_init, embedded)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["knn_top1"] == pytest.approx(ours)  # the monitor measured the same thing during training
    # No collapse with the recipe: z std stays near 1/sqrt(d) (measured 0.998 of it; the collapse test in
    # test_pipeline_study.py shows it falling under 0.6 of it without stop-gradient or predictor).
    assert last["z_std"] > 0.9 * last["z_std_healthy"], last
    # Chance is 10%. Measured: random init (BN re-estimated) 18.5%, after 4 epochs 25.0%.
    # Margin stated: at least 5 points (10 of the 200 queries) above random init.
    assert ours >= baseline + 5, (ours, baseline)
