"""Pretraining data: ImageFolder with clear errors, the SimSiam two-view augmentation, resumable sampling.

Augmentation randomness is a pure function of (seed, epoch, sample index): each sample reseeds the
RNG before its two views are drawn. So the views do not depend on the number of workers or on
which worker got the sample, and a run resumed in the middle of an epoch sees exactly the views an
uninterrupted run would have seen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler
from torchvision import datasets, transforms

from core.runtime import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BadImageError(UserError):
    """An image file that cannot be decoded."""


class GaussianBlur:
    """PIL Gaussian blur with sigma ~ U[sigma_min, sigma_max] (PIL's radius is the sigma)."""

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, img: Image.Image) -> Image.Image:
        lo, hi = self.sigma
        sigma = lo + (hi - lo) * torch.rand(()).item()
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))

    def __repr__(self) -> str:
        return f"GaussianBlur(sigma={self.sigma})"


def simsiam_augmentation(size: int = 224, min_scale: float = 0.2, blur: bool = True) -> transforms.Compose:
    """The official SimSiam view (MoCo v2's): crop, colour jitter, grayscale, blur, flip, normalise."""
    ops = [
        transforms.RandomResizedCrop(size, scale=(min_scale, 1.0)),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
    ]
    if blur:  # off in the CIFAR recipe
        ops.append(transforms.RandomApply([GaussianBlur((0.1, 2.0))], p=0.5))
    ops += [transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return transforms.Compose(ops)


def eval_transform(size: int = 224) -> transforms.Compose:
    """Clean view for kNN/linear evaluation: resize to size*256/224, centre crop `size`, normalise."""
    return transforms.Compose([
        transforms.Resize(round(size * 256 / 224)),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def load_rgb(path: str) -> Image.Image:
    """Decode an image fully (truncated files fail here, not later) and convert CMYK/gray/RGBA to RGB."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
            return img.convert("RGB")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise BadImageError(
            f"cannot decode image {path} ({type(e).__name__}: {e}). Remove or replace the file, "
            "or set data.skip_bad_images=true to skip and count such files"
        ) from None


def image_folder(root: str | Path, transform=None, skip_bad: bool = False) -> datasets.ImageFolder:
    """torchvision ImageFolder over `root/<class>/*.jpg`, with one clear message for a wrong layout."""
    root = Path(root)
    layout = f"expected {root}/<class_name>/<image>.jpg (one sub-folder per class)"
    if not root.is_dir():
        raise UserError(f"dataset dir {root} does not exist; {layout}")
    try:
        ds = datasets.ImageFolder(str(root), transform=transform, loader=_skipping_loader if skip_bad else load_rgb)
    except FileNotFoundError as e:
        raise UserError(f"dataset dir {root} has no usable images ({e}); {layout}") from None
    return ds


def drop_undecodable(ds: datasets.ImageFolder) -> int:
    """Remove the samples that do not decode (one extra pass over the files); returns how many."""
    good = []
    for path, target in ds.samples:
        try:
            load_rgb(path)
            good.append((path, target))
        except BadImageError:
            pass
    dropped = len(ds.samples) - len(good)
    ds.samples = ds.imgs = good
    ds.targets = [t for _, t in good]
    return dropped


def _skipping_loader(path: str):
    try:
        return load_rgb(path)
    except BadImageError:
        return None  # counted and dropped by collate_skipping


class TwoViewDataset(Dataset):
    """Two independent draws of the augmentation per image, seeded by (seed, epoch, index)."""

    def __init__(self, base: datasets.ImageFolder, transform, seed: int):
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        path, _ = self.base.samples[index]
        img = self.base.loader(path)
        if img is None:
            return None
        # Only the CPU generator drives the transforms; torch.manual_seed would also reseed every
        # CUDA device (~100 us a call, 10% of a small image's augmentation).
        torch.default_generator.manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]))
        return self.transform(img), self.transform(img)


def collate_skipping(batch):
    """Stack the views of the decodable samples; also return how many samples were skipped."""
    good = [b for b in batch if b is not None]
    if not good:
        return None, None, len(batch)
    x1 = torch.stack([b[0] for b in good])
    x2 = torch.stack([b[1] for b in good])
    return x1, x2, len(batch) - len(good)


class ResumableSampler(Sampler):
    """DistributedSampler (shuffled per epoch via set_epoch) that can skip the samples already consumed."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int):
        self.inner = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                                        seed=seed, drop_last=True)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return iter(list(self.inner)[self.skip:])

    def __len__(self) -> int:
        return len(self.inner) - self.skip
