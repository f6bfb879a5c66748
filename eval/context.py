"""What every evaluation protocol starts from: the process group, the datasets, the frozen backbone
with its identity (path, sha256, detected kind), the feature cache, and the protocol record that
every result JSON carries."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torchvision import transforms

from core.bn_stats import reestimate_bn_stats
from core.checkpoint import RANDOM, load_backbone
from core.checkpoint_formats import IMAGENET, Choice, Detection, Normalization
from core.config import Config, dump_config
from core.distributed import init_distributed
from core.files import mark_done, write_json
from core.images import eval_transform, image_folder
from core.models import ARCHS, feature_dim
from core.progress import say_outputs
from core.cli import UserError
from core.runtime import check_writable_dir, file_sha256, git_revision, seed_everything
from eval.feature_cache import LAYER, SeededView, cached_features



def train_augmentation(size: int, min_scale: float, norm: Normalization = IMAGENET) -> transforms.Compose:
    """The linear probe's training view (official): RandomResizedCrop(size) + horizontal flip, then the
    input normalisation of the checkpoint's format."""
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(min_scale, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(norm.mean, norm.std),
    ])


def checkpoint_choice(cfg: Config) -> Choice:
    """The escape hatches of the config (checkpoint_format / checkpoint_key / checkpoint_prefix)."""
    return Choice.of(cfg.checkpoint_format, cfg.checkpoint_key, cfg.checkpoint_prefix)


class FrozenBackbone(NamedTuple):
    net: torch.nn.Module  # eval mode, no gradients, on the device
    detection: Detection  # the checkpoint's format, input normalisation and report
    transform: transforms.Compose  # the clean centre-crop view, normalised as the format expects
    random_init: dict | None  # how a "random" backbone's BN statistics were set (None for a file)
    identity: dict  # protocol.checkpoint of every result: path, sha256, kind, tensors read, arch, seed


def frozen_backbone(cfg: Config, bn_set, device, num_classes: int = 1000, also=()) -> FrozenBackbone:
    """The checkpoint (or "random") as a frozen backbone, its centre-crop view set on `bn_set` and `also`
    (datasets with a `transform`), and its identity. A random backbone's BN statistics are re-estimated on
    `bn_set` (random_init.bn_stats: recompute), a stated choice that is part of its identity. Shared by
    EvalContext and the protocols that read other layouts (eval.voc07_svm)."""
    net, detection = load_backbone(cfg.checkpoint, cfg.arch, cfg.seed, num_classes=num_classes,
                                   choice=checkpoint_choice(cfg))
    norm = detection.normalization
    transform = eval_transform(cfg.data.image_size, norm.mean, norm.std)
    for ds in (bn_set, *also):
        ds.transform = transform
    net.requires_grad_(False)
    net.eval()  # frozen: BN uses the checkpoint's running statistics, always
    net.to(device)
    is_random = str(cfg.checkpoint) == RANDOM
    random_init = _random_init_record(net, cfg, bn_set, device) if is_random else None
    identity = {
        "path": RANDOM if is_random else str(Path(cfg.checkpoint).resolve()),
        "sha256": None if is_random else file_sha256(cfg.checkpoint),
        "kind": detection.format,
        "read": detection.selection(),  # which tensors of the file: the key of features and probes
        "arch": cfg.arch,
        "seed": cfg.seed if is_random else None,
        "random_init": random_init,
    }
    return FrozenBackbone(net, detection, transform, random_init, identity)


def _random_init_record(net, cfg: Config, bn_set, device) -> dict:
    """Re-estimate the random backbone's BN statistics on `bn_set` images (bn_stats: recompute) or keep
    the init's mean 0 / var 1 (init); either way, say which in the protocol."""
    ri = cfg.random_init
    record = {"init": "torchvision standard init, zero_init_residual off", "bn_stats": ri.bn_stats}
    if ri.bn_stats == "init":
        return {**record, "method": "running mean 0 / var 1 of the init, eval mode"}
    # centre crops of bn_set, the images the features are taken of; seeded subset, so the cache key holds
    done = reestimate_bn_stats(net, bn_set, ri.bn_images, batch_size=cfg.features.batch_size,
                               seed=cfg.seed, device=device, num_workers=cfg.data.workers)
    return {**record, **done}


class EvalContext:
    """Opened once per command (eval.all shares one across protocols, so features are loaded once)."""

    def __init__(self, cfg: Config):
        if not cfg.checkpoint:
            raise UserError("no checkpoint given: pass --checkpoint PATH (SimSiam, MoCo or torchvision) "
                            "or --checkpoint random")
        if cfg.arch not in ARCHS:
            raise UserError(f"unknown arch {cfg.arch!r}; choose one of {', '.join(ARCHS)}")
        for key in ("train_dir", "val_dir"):
            if not cfg.data[key]:
                flag = "--" + key.replace("_", "-")
                raise UserError(f"no {key.replace('_', ' ')} given: pass {flag} DIR (an ImageFolder root)")
        self.cfg = cfg
        try:
            self.dist = init_distributed(cfg.device)
        except RuntimeError as e:  # e.g. device=cuda on a machine without a GPU
            raise UserError(str(e)) from None
        self.out_dir = check_writable_dir(cfg.out_dir)
        self.cache_dir = Path(cfg.features.cache_dir or self.out_dir / "feature_cache")
        seed_everything(cfg.seed)
        # transforms are set once the checkpoint's format tells the input normalisation (below)
        self.train_set = image_folder(cfg.data.train_dir)
        self.val_set = image_folder(cfg.data.val_dir)
        if self.val_set.classes != self.train_set.classes:
            only_val = sorted(set(self.val_set.classes) - set(self.train_set.classes))
            only_train = sorted(set(self.train_set.classes) - set(self.val_set.classes))
            raise UserError(f"val dir {cfg.data.val_dir} and train dir {cfg.data.train_dir} have different classes "
                            f"(only in val: {only_val[:5]}, only in train: {only_train[:5]}); labels would not match")
        self.num_classes = len(self.train_set.classes)
        frozen = frozen_backbone(cfg, self.train_set, self.dist.device, self.num_classes, also=(self.val_set,))
        self.net, self.detection, self.normalization = frozen.net, frozen.detection, frozen.detection.normalization
        self.val_transform, self.random_init, self.checkpoint_id = frozen.transform, frozen.random_init, frozen.identity
        is_random = self.random_init is not None
        self._memo = {}
        if self.dist.is_main:
            dump_config(cfg, self.out_dir / "eval_config.yaml")
            c = self.checkpoint_id
            if not is_random:
                print(self.detection.report())
            print(f"eval: {c['kind']} checkpoint {c['path']} ({cfg.arch}), {len(self.train_set)} train / "
                  f"{len(self.val_set)} val images, {self.num_classes} classes, device {self.dist.device}")

    # ------------------------------------------------------------------ features

    def _features(self, name: str, dataset):
        if name not in self._memo:
            self._memo[name] = cached_features(
                self.net, self.checkpoint_id, dataset, self.cache_dir, device=self.dist.device,
                batch_size=self.cfg.features.batch_size, workers=self.cfg.data.workers, rank=self.dist.rank, desc=name)
        return self._memo[name]

    def center_features(self, split: str):
        """(feats, labels, info) of the clean centre-crop pass over 'train' or 'val'."""
        return self._features(f"{split} centre crop", self.train_set if split == "train" else self.val_set)

    def augmented_train_features(self, view: int):
        """(feats, labels, info) of augmented view `view` of the training set (linear probe's train aug)."""
        aug = train_augmentation(self.cfg.data.image_size, self.cfg.linear.min_scale, self.normalization)
        return self._features(f"train view {view}", SeededView(self.train_set, aug, self.cfg.seed, view))

    # ------------------------------------------------------------------ provenance

    def protocol(self, **specific) -> dict:
        """The whole protocol of a result: checkpoint identity, layer, data, transforms, seed, plus `specific`."""
        cfg = self.cfg
        return {
            "checkpoint": dict(self.checkpoint_id),
            "layer": LAYER,
            "feature_dim": feature_dim(self.net),
            "train_dir": str(Path(cfg.data.train_dir).resolve()),
            "val_dir": str(Path(cfg.data.val_dir).resolve()),
            "num_train": len(self.train_set),
            "num_val": len(self.val_set),
            "num_classes": self.num_classes,
            "image_size": cfg.data.image_size,
            "val_transform": repr(self.val_transform),
            "input_normalization": self.normalization.to_dict(),
            "seed": cfg.seed,
            "device": str(self.dist.device),
            "world_size": self.dist.world_size,
            "git_revision": git_revision(),
            **specific,
        }

    def write_result(self, name: str, result: dict) -> Path:
        """out_dir/<name>.json (rank 0): a protocol's last output, so its done marker (stage `name`)
        and the closing line follow it."""
        path = self.out_dir / f"{name}.json"
        if self.dist.is_main:
            write_json(path, result)
            mark_done(self.out_dir, name, result=path.name)
            say_outputs(f"eval {name}", self.out_dir)
        return path

