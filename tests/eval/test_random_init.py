"""The random-init baseline (eval checkpoint "random") is the literature's: torchvision's standard init and
BN statistics re-estimated on training images. The old setting (zero_init_residual on, the init's BN
statistics) is shown degenerate on the same data, so the test proves the fix matters.

Measured on the embedded data, ResNet-18 at 32 px, 200 val images (chance 10%), seed 0:
                                        participation ratio   mean pairwise cosine   kNN k=20 T=0.07 top-1
  old: zero_init_residual, init BN              3.0                  0.76                    10.0
  standard init, init BN (bn_stats=init)        4.8                  0.91                    34.5
  standard init, recomputed BN (default)       22.7                  0.41                    36.5
"""

import torch
import torch.nn.functional as F

from core.knn import knn_accuracy
from core.models import build_backbone
from core.features import extract_features
from eval.context import EvalContext
from tests.helpers import eval_config


def participation_ratio(feats: torch.Tensor) -> float:
    """How many directions the features spread over: (sum of covariance eigenvalues)^2 / sum of squares."""
    centred = feats - feats.mean(0)
    ev = torch.linalg.eigvalsh(centred.T @ centred / len(feats)).clamp(min=0)
    return (ev.sum() ** 2 / (ev ** 2).sum()).item()


def mean_cosine(feats: torch.Tensor) -> float:
    z = F.normalize(feats, dim=1)
    return (z @ z.T)[~torch.eye(len(z), dtype=torch.bool)].mean().item()


def context(tmp_path, folder, bn_stats):
    return EvalContext(eval_config(tmp_path / bn_stats, folder / "train", folder / "val", **{
        "data.image_size": 32, "features.batch_size": 128, "random_init.bn_stats": bn_stats,
        "random_init.bn_images": 500}))


def test_random_init_features_are_not_degenerate(tmp_path, embedded_imagefolder):
    torch.set_num_threads(1)
    ctx = context(tmp_path, embedded_imagefolder, "recompute")
    record = ctx.protocol()["checkpoint"]["random_init"]
    assert record["bn_stats"] == "recompute" and record["images"] == 500 and "zero_init_residual off" in record["init"]
    bank, bank_labels, _ = ctx.center_features("train")
    feats, labels, _ = ctx.center_features("val")
    assert len(torch.unique(feats, dim=0)) == len(feats)  # every val image its own feature vector
    assert participation_ratio(feats) > 12  # measured 22.7
    assert mean_cosine(feats) < 0.6  # measured 0.41
    assert knn_accuracy(bank, bank_labels, feats, labels, 10, 20, 0.07)["top1"] >= 25  # measured 36.5

    # the init's BN statistics, standard init: nearly parallel features (a stated choice, not the default)
    plain = context(tmp_path, embedded_imagefolder, "init")
    assert plain.protocol()["checkpoint"]["random_init"]["bn_stats"] == "init"
    plain_feats = plain.center_features("val")[0]
    assert mean_cosine(plain_feats) > 0.85 and participation_ratio(plain_feats) < 8  # measured 0.91, 4.8

    # the old setting: every residual branch switched off, init BN statistics -> chance-level kNN
    torch.manual_seed(0)
    old = build_backbone("resnet18", num_classes=10, zero_init_residual=True).eval()
    old_bank = extract_features(old, ctx.train_set, torch.device("cpu"), 128, show_progress=False)[0]
    old_feats = extract_features(old, ctx.val_set, torch.device("cpu"), 128, show_progress=False)[0]
    assert participation_ratio(old_feats) < 5  # measured 3.0
    assert knn_accuracy(old_bank, bank_labels, old_feats, labels, 10, 20, 0.07)["top1"] <= 15  # measured 10.0
