"""Feature cache: a second run makes no feature pass; another checkpoint, transform or edited image misses."""

import os

import torch

from eval import feature_cache, knn
from tests.helpers import eval_config, torchvision_checkpoint, toy_splits


def test_cache_hits_and_misses(tmp_path, monkeypatch):
    train, val = toy_splits(tmp_path, train_per_class=3, val_per_class=2)
    ckpt_a = torchvision_checkpoint(tmp_path / "a.pth", seed=0)
    ckpt_b = torchvision_checkpoint(tmp_path / "b.pth", seed=1)
    passes = []
    real_extract = feature_cache.extract_features

    def counting_extract(backbone, dataset, *args, **kwargs):
        passes.append(len(dataset))
        return real_extract(backbone, dataset, *args, **kwargs)

    monkeypatch.setattr(feature_cache, "extract_features", counting_extract)
    cache = tmp_path / "shared_cache"

    def run(ckpt, out, **extra):
        passes.clear()
        result = knn.main(eval_config(tmp_path / out, train, val, checkpoint=ckpt,
                                      **{"features.cache_dir": cache, **extra}))
        return list(passes), result

    first, r1 = run(ckpt_a, "a1")
    assert first == [12, 8]  # one pass over train (4 classes x 3) and one over val
    assert not r1["features"]["train"]["cached"] and r1["features"]["train"]["images_per_s"] > 0
    again, r2 = run(ckpt_a, "a2")  # another out dir, same cache dir: kNN and probes share features
    assert again == [] and r2["features"]["train"]["cached"] and r2["knn"] == r1["knn"]
    other, _ = run(ckpt_b, "b")
    assert other == [12, 8]  # another checkpoint file: its sha256 differs
    resized, _ = run(ckpt_a, "a3", **{"data.image_size": 24})
    assert resized == [12, 8]  # another transform
    edited = next(iter(sorted((val / "colour0").iterdir())))
    os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 10**9))
    touched, _ = run(ckpt_a, "a4")
    assert touched == [8]  # the edited val set is recomputed, the train features are still served
    random0, _ = run("random", "r0")
    random1, _ = run("random", "r1", seed=1)
    assert random0 == [12, 8] and random1 == [12, 8]  # a random init is keyed by its seed


def test_torn_cache_file_is_recomputed(tmp_path):
    train, val = toy_splits(tmp_path, train_per_class=2, val_per_class=1)
    cfg = eval_config(tmp_path / "out", train, val)
    first = knn.main(cfg)
    for f in (tmp_path / "out" / "feature_cache").glob("*.pt"):
        f.write_bytes(f.read_bytes()[:100])
    second = knn.main(cfg)
    assert not second["features"]["train"]["cached"] and second["knn"] == first["knn"]
    assert all(torch.load(f, weights_only=True)["feats"].shape[0] > 0
               for f in (tmp_path / "out" / "feature_cache").glob("*.pt"))
