"""Pretraining data: the SimSiam two-view augmentation and its dataset and collate function.

Augmentation randomness is a pure function of (seed, epoch, sample index) (core.sampling): each
sample reseeds the RNG before its two views are drawn, so the views do not depend on the number of
workers and a run resumed in the middle of an epoch sees exactly the views an uninterrupted run
would have seen. Image folders, decoding and bad images are core.images'.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset
from torchvision import datasets, transforms

from core.images import IMAGENET_MEAN, IMAGENET_STD
from core.sampling import reseed_sample


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


# The official view's constants, shared by every data backend (pretrain/fast_data.py draws the same).
JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
P_JITTER, P_GRAY, P_BLUR, P_FLIP = 0.8, 0.2, 0.5, 0.5
BLUR_SIGMA = (0.1, 2.0)


def simsiam_augmentation(size: int = 224, min_scale: float = 0.2, blur: bool = True) -> transforms.Compose:
    """The official SimSiam view (MoCo v2's): crop, colour jitter, grayscale, blur, flip, normalise."""
    ops = [
        transforms.RandomResizedCrop(size, scale=(min_scale, 1.0)),
        transforms.RandomApply([transforms.ColorJitter(*JITTER)], p=P_JITTER),
        transforms.RandomGrayscale(p=P_GRAY),
    ]
    if blur:  # off in the CIFAR recipe
        ops.append(transforms.RandomApply([GaussianBlur(BLUR_SIGMA)], p=P_BLUR))
    ops += [transforms.RandomHorizontalFlip(p=P_FLIP), transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return transforms.Compose(ops)


class TwoViewDataset(Dataset):
    """Independent draws of the augmentation per image, seeded by (seed, epoch, index).

    An item is (views, index): `views` holds 2 * pairs tensors, pair j being views (2j, 2j+1); pairs=2
    is the "asymmetric, 2x sampling" ablation. The index lets per-image state (the moving-average
    targets of section 5) follow the sample whatever the worker or rank.
    """

    def __init__(self, base: datasets.ImageFolder, transform, seed: int, pairs: int = 1):
        self.base, self.transform, self.seed, self.epoch, self.pairs = base, transform, seed, 0, pairs

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _reseed(self, index: int) -> None:
        reseed_sample(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        path, _ = self.base.samples[index]
        img = self.base.loader(path)
        if img is None:
            return None
        self._reseed(index)
        return tuple(self.transform(img) for _ in range(2 * self.pairs)), index


def collate_skipping(batch):
    """(x1, x2, skipped, index) from the decodable samples: x1/x2 stack the first/second view of each
    pair, pair after pair (B * pairs rows); index holds the B dataset indices; skipped counts the rest."""
    good = [b for b in batch if b is not None]
    if not good:
        return None, None, len(batch), None
    pairs = len(good[0][0]) // 2
    x1 = torch.cat([torch.stack([views[2 * j] for views, _ in good]) for j in range(pairs)])
    x2 = torch.cat([torch.stack([views[2 * j + 1] for views, _ in good]) for j in range(pairs)])
    index = torch.tensor([i for _, i in good])
    return x1, x2, len(batch) - len(good), index
