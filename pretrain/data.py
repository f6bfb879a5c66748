"""Pretraining data: ImageFolder with clear errors, the SimSiam two-view augmentation, resumable sampling.

Augmentation randomness is a pure function of (seed, epoch, sample index): each sample reseeds the
RNG before its two views are drawn. So the views do not depend on the number of workers or on
which worker got the sample, and a run resumed in the middle of an epoch sees exactly the views an
uninterrupted run would have seen.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from core.cli import UserError

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


def eval_transform(size: int = 224) -> transforms.Compose:
    """Clean view for kNN/linear evaluation: resize to size*256/224, centre crop `size`, normalise."""
    return transforms.Compose([
        transforms.Resize(round(size * 256 / 224)),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def load_rgb(path: str) -> Image.Image:
    """Decode an image fully and convert it to RGB, or raise BadImageError naming the file.

    * Truncated files fail here, not later in a worker (img.load() decodes every byte).
    * The format is read from the content, not the name: a PNG or WebP saved as .jpg decodes as what
      it is, as every other reader of these datasets (torchvision, PIL, OpenCV) does.
    * CMYK, grayscale, palette and RGBA images are converted to RGB.
    * An image above PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS, 89.5 Mpx by default) is
      refused: PIL only warns between 1x and 2x the limit, we make that an error too, because such a
      file in a training set is a corrupt header or a hostile file, and decoding it can exhaust memory.
      Raise Image.MAX_IMAGE_PIXELS in your own launcher if you really train on larger images.
    """
    try:
        if os.path.getsize(path) == 0:
            raise BadImageError(f"image {path} is empty (0 bytes). Remove or replace the file, "
                                "or set data.skip_bad_images=true to skip and count such files")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(path, "rb") as f:
                img = Image.open(f)
                img.load()
                return img.convert("RGB")
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(
            f"image {path} is refused as a decompression bomb ({e}). Remove the file, or set "
            "data.skip_bad_images=true to skip and count such files"
        ) from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, UnidentifiedImageError...
        raise BadImageError(
            f"cannot decode image {path} ({type(e).__name__}: {e}). Remove or replace the file, "
            "or set data.skip_bad_images=true to skip and count such files"
        ) from None


def is_image_file(path: str) -> bool:
    """What the dataset reads: image extensions only, hidden files excluded. Stray files (README.txt,
    .DS_Store, labels.csv) and macOS '._name.jpg' resource forks, which carry an image extension but
    hold no image, are ignored rather than failing the run."""
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def image_folder(root: str | Path, transform=None, skip_bad: bool = False) -> datasets.ImageFolder:
    """torchvision ImageFolder over `root/<class>/*.jpg`, with one clear message for a wrong layout.

    A class folder without images is an error that names it: ImageFolder would otherwise either fail
    with a list of every empty class or, told to allow it, give that class a label no sample carries
    (and a classifier one output too many)."""
    root = Path(root)
    layout = f"expected {root}/<class_name>/<image>.jpg (one sub-folder per class)"
    if not root.is_dir():
        raise UserError(f"dataset dir {root} does not exist; {layout}")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise UserError(f"dataset dir {root} has no usable images (no class sub-folders); {layout}")
    empty = [c for c in classes if not any(is_image_file(os.path.join(dp, n)) for dp, _, ns in
                                           os.walk(root / c, followlinks=True) for n in ns)]
    if empty:
        shown = ", ".join(str(root / c) for c in empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
        raise UserError(f"dataset dir {root} has no usable images in class folder(s) {shown} "
                        f"(extensions {', '.join(IMG_EXTENSIONS)}); add images or remove the folder; {layout}")
    ds = datasets.ImageFolder(str(root), transform=transform, loader=_skipping_loader if skip_bad else load_rgb,
                              is_valid_file=is_image_file)
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


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation draws (every data backend uses this one rule)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


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
        # Only the CPU generator drives the transforms; torch.manual_seed would also reseed every
        # CUDA device (~100 us a call, 10% of a small image's augmentation).
        torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, index))

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


class ResumableSampler(Sampler):
    """DistributedSampler (shuffled per epoch via set_epoch) that can skip the samples already consumed."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int, drop_last: bool = True):
        self.inner = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                                        seed=seed, drop_last=drop_last)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return iter(list(self.inner)[self.skip:])

    def __len__(self) -> int:
        return len(self.inner) - self.skip
