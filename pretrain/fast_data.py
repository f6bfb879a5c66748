"""The fast pretraining data path (data.backend=fast): geometry in the worker, photometry on the device.

The official view is crop -> colour jitter (p=0.8) -> grayscale (p=0.2) -> blur (p=0.5) -> flip ->
normalise, all on PIL images in DataLoader workers; at 224 px the photometric ops cost most of the
CPU time. Here a worker only
  1. draws every random parameter of both views with the very torchvision samplers, in the very
     order, from the very per-sample seed of the official path (so for a given (seed, epoch, index)
     the fast path uses the crop boxes, jitter factors, op order, grayscale, blur sigma and flip
     that the official path would have used: the distribution is the official one by construction,
     and resume / worker-count independence carry over unchanged);
  2. decodes the JPEG at a reduced DCT scale (PIL draft) when both crop boxes still hold at least
     crop_size pixels per side at that scale, then crops and resizes on uint8 with PIL's
     antialiased bilinear filter (the official RandomResizedCrop's);
  3. returns two uint8 crops and a small float parameter vector per view.
pretrain.batch_augment.BatchAugment then applies jitter, grayscale, blur, flip and normalisation
to the whole batch as tensor ops on the training device. On a CPU-only run the "device" is the
training process itself, where the ops would not overlap the training step, and they measured no
cheaper than PIL's uint8 ones (bench/bench_data.py); so data.photometric=auto keeps the official PIL
ops in the workers there: the views are then the official ones bit for bit (when no reduced-scale
decode applies) at no extra cost.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import transforms
from torchvision.transforms import functional as TF

from core.cli import UserError
from core.images import IMAGENET_MEAN, IMAGENET_STD
from pretrain.batch_augment import BatchAugment
from pretrain.data import (
    BLUR_SIGMA,
    JITTER,
    P_BLUR,
    P_FLIP,
    P_GRAY,
    P_JITTER,
    GaussianBlur,
    TwoViewDataset,
    collate_skipping,
)
from pretrain.view_batch import P, ViewBatch

BACKENDS = ("official", "fast", "dali")
DRAFT_SCALES = (8, 4, 2)  # the reduced DCT scales libjpeg offers, largest first


class ViewSampler:
    """Draws one view's parameters exactly as pretrain.data.simsiam_augmentation does.

    Every draw goes through the same torchvision sampler, with the same skip logic (RandomApply
    skips when p < rand, so a skipped jitter consumes no factor draws), from torch's default CPU
    generator: replaying draw() under the official path's seed reproduces its parameters exactly.
    """

    def __init__(self, min_scale: float = 0.2, blur: bool = True):
        self.crop = transforms.RandomResizedCrop(1, scale=(min_scale, 1.0))
        self.jitter = transforms.ColorJitter(*JITTER)
        self.blur = GaussianBlur(BLUR_SIGMA) if blur else None
        self.p_jitter, self.p_gray, self.p_blur, self.p_flip = P_JITTER, P_GRAY, P_BLUR, P_FLIP

    def draw(self, width: int, height: int) -> tuple[tuple[int, int, int, int], list[float]]:
        """((top, left, h, w) crop box in the image's pixels, parameter vector in PARAMS order)."""
        # get_params only reads the shape; an expanded 1-element tensor stands in for the image.
        i, j, h, w = self.crop.get_params(torch.empty(1, 1, 1).expand(1, height, width), self.crop.scale, self.crop.ratio)
        v = [0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0]
        if not self.p_jitter < torch.rand(1):
            order, b, c, s, hue = self.jitter.get_params(self.jitter.brightness, self.jitter.contrast,
                                                         self.jitter.saturation, self.jitter.hue)
            v[0:9] = [1.0, b, c, s, hue, *[float(o) for o in order]]
        if torch.rand(1) < self.p_gray:
            v[P["gray"]] = 1.0
        if self.blur is not None and not self.p_blur < torch.rand(1):
            lo, hi = self.blur.sigma
            v[P["blur"]], v[P["sigma"]] = 1.0, lo + (hi - lo) * torch.rand(()).item()  # GaussianBlur's own rule
        if torch.rand(1) < self.p_flip:
            v[P["flip"]] = 1.0
        return (i, j, h, w), v


def draft_scale(boxes, size: int) -> int:
    """Largest DCT reduction at which every crop box keeps >= size pixels per side (1: full decode)."""
    short = min(min(h, w) for _, _, h, w in boxes)
    return next((r for r in DRAFT_SCALES if short // r >= size), 1)


def crop_resize(img: Image.Image, box, full_size: tuple[int, int], size: int) -> Image.Image:
    """RandomResizedCrop's crop + antialiased bilinear resize, with the box mapped onto a drafted image."""
    i, j, h, w = box
    sx, sy = full_size[0] / img.width, full_size[1] / img.height
    if sx == sy == 1:  # crop first, as TF.resized_crop does (resize(box=) would also filter pixels outside the box)
        return img.crop((j, i, j + w, i + h)).resize((size, size), Image.BILINEAR)
    return img.resize((size, size), Image.BILINEAR, box=(j / sx, i / sy, (j + w) / sx, (i + h) / sy))


def official_view(img: Image.Image, box, params, size: int) -> torch.Tensor:
    """The official PIL view for given parameters (the op list of simsiam_augmentation, replayed).

    Under the same seed it equals simsiam_augmentation(img) bit for bit, which is what proves that
    ViewSampler draws the official parameters (tests/pretrain/test_fast_data.py)."""
    return pil_photometric(TF.resized_crop(img, *box, [size, size], transforms.InterpolationMode.BILINEAR), params)


def pil_photometric(img: Image.Image, params) -> torch.Tensor:
    """The official view's ops after the crop, on PIL uint8 (the fast path's CPU-device mode)."""
    v = params
    if v[P["jitter"]]:
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for k in v[P["order0"]:P["order3"] + 1]:
            img = ops[int(k)](img, v[P["brightness"] + int(k)])
    if v[P["gray"]]:
        img = TF.rgb_to_grayscale(img, num_output_channels=3)
    if v[P["blur"]]:
        img = img.filter(ImageFilter.GaussianBlur(radius=v[P["sigma"]]))
    if v[P["flip"]]:
        img = TF.hflip(img)
    return TF.normalize(TF.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)


class FastTwoViewDataset(TwoViewDataset):
    """TwoViewDataset's items ((views, index), same seeding) with each view a (uint8 crop, parameters) pair."""

    def __init__(self, base, size: int, min_scale: float = 0.2, blur: bool = True, seed: int = 0, pairs: int = 1,
                 draft: bool = True, photometric: str = "device"):
        super().__init__(base, transform=None, seed=seed, pairs=pairs)
        if photometric not in ("device", "workers"):
            raise UserError(f"photometric={photometric!r}: expected device or workers")
        self.size, self.sampler, self.draft, self.photometric = size, ViewSampler(min_scale, blur), draft, photometric

    def __getitem__(self, index: int):
        path, _ = self.base.samples[index]
        self._reseed(index)
        try:
            with open(path, "rb") as f:
                img = Image.open(f)
                full = img.size
                draws = [self.sampler.draw(*full) for _ in range(2 * self.pairs)]
                r = draft_scale([b for b, _ in draws], self.size) if self.draft else 1
                if r > 1 and img.format == "JPEG":
                    img.draft("RGB", (math.ceil(full[0] / r), math.ceil(full[1] / r)))
                img.load()
                img = img.convert("RGB")
        except Exception:
            # The dataset's own loader names the file (BadImageError), or returns None when
            # data.skip_bad_images is on; should it decode after all, draw again on its image.
            img = self.base.loader(path)
            if img is None:
                return None
            self._reseed(index)
            full = img.size
            draws = [self.sampler.draw(*full) for _ in range(2 * self.pairs)]
        crops = [(crop_resize(img, box, full, self.size), v) for box, v in draws]
        if self.photometric == "workers":  # finished views, batched by pretrain.data.collate_skipping
            return tuple(pil_photometric(c, v) for c, v in crops), index
        return tuple((torch.from_numpy(np.array(c)).permute(2, 0, 1), torch.tensor(v, dtype=torch.float32))
                     for c, v in crops), index


def collate_views(batch):
    """collate_skipping's (x1, x2, skipped, index) with x1/x2 ViewBatches: pair after pair, B * pairs rows."""
    good = [b for b in batch if b is not None]
    if not good:
        return None, None, len(batch), None
    pairs = len(good[0][0]) // 2

    def stack(k):  # view k of every pair
        rows = [views[2 * j + k] for j in range(pairs) for views, _ in good]
        return ViewBatch(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]))

    return stack(0), stack(1), len(batch) - len(good), torch.tensor([i for _, i in good])


def check_backend(backend: str) -> None:
    """One clear message for an unknown or unavailable backend."""
    if backend not in BACKENDS:
        raise UserError(f"data.backend={backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "dali":
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            raise UserError("data.backend=dali needs NVIDIA DALI, which is not installed: pip install -e '.[dali]' "
                            "(nvidia-dali-cuda120; nvidia-dali-cuda130 for CUDA 13); or use data.backend=fast, "
                            "which needs nothing extra") from None


def fast_two_view_data(base, cfg, device: torch.device, pairs: int = 1):
    """(dataset, collate_fn, augment) of the fast and dali backends for pretrain.loop; augment is None when
    the photometric ops run in the workers (then the loader yields finished views, as the official one)."""
    check_backend(cfg.data.backend)
    if cfg.data.backend == "dali":  # DALI yields crops on the device; the photometric ops follow there
        if cfg.data.skip_bad_images:
            raise UserError("data.skip_bad_images=true needs data.backend=fast or official (DALI fails a whole batch)")
        return FastTwoViewDataset(base, cfg.data.crop_size, cfg.data.min_scale, cfg.data.blur, cfg.seed,
                                  pairs=pairs), collate_views, BatchAugment()
    where = cfg.data.photometric
    if where not in ("auto", "device", "workers"):
        raise UserError(f"data.photometric={where!r} is not one of auto, device, workers")
    if where == "auto":  # on a CPU, ops in the training process would not overlap the step (module doc)
        where = "workers" if device.type == "cpu" else "device"
    dataset = FastTwoViewDataset(base, cfg.data.crop_size, cfg.data.min_scale, cfg.data.blur, cfg.seed, pairs=pairs,
                                 photometric=where)
    if where == "workers":
        return dataset, collate_skipping, None
    return dataset, collate_views, BatchAugment()
