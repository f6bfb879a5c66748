"""The photometric half of the fast data path: the official view's jitter, grayscale, blur, flip and
normalisation, batched as tensor ops on the training device from parameters drawn in the workers.

Deterministic given its inputs (no randomness here), so resume stays exact. `reference_view` is the
per-image implementation with torchvision.transforms.v2.functional that the batch version is
tested against for fixed parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from core.images import IMAGENET_MEAN, IMAGENET_STD
from pretrain.view_batch import P, ViewBatch

SIGMA_MAX = 2.0
KERNEL = 2 * math.ceil(3 * SIGMA_MAX) + 1  # 13 taps: +-3 sigma of the widest blur, one size for all
GRAY = (0.2989, 0.587, 0.114)  # torchvision's luma weights (its grayscale, contrast and saturation)
CPU_CHUNK = 16  # images per pass when the "device" is a CPU


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (GRAY[0] * x[:, 0] + GRAY[1] * x[:, 1] + GRAY[2] * x[:, 2]).unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = f.view(-1, 1, 1, 1)
    return (f * a + (1 - f) * b).clamp_(0, 1)


def _brightness(x, f):
    return (x * f.view(-1, 1, 1, 1)).clamp_(0, 1)


def _contrast(x, f):
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _saturation(x, f):
    return _blend(x, _gray(x), f)


def _hue(x, shift):
    """Rotate the hue by shift (in turns) in HSV space, branch-free so the whole batch goes at once."""
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    c = v - x.min(1).values  # chroma
    safe_c = torch.where(c > 0, c, torch.ones_like(c))
    s = c / torch.where(v > 0, v, torch.ones_like(v))
    h = torch.where(v == r, (g - b) / safe_c, torch.where(v == g, 2 + (b - r) / safe_c, 4 + (r - g) / safe_c))
    h = torch.where(c > 0, h, torch.zeros_like(h))
    h = torch.remainder(h / 6 + shift.view(-1, 1, 1), 1.0) * 6
    # back to RGB: channel n is v - v*s*clamp(min(k, 4-k), 0, 1), k = (n + h) mod 6, n = 5, 3, 1
    out = [v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)
           for k in (torch.remainder(n + h, 6) for n in (5.0, 3.0, 1.0))]
    return torch.stack(out, 1)


_JITTER = (_brightness, _contrast, _saturation, _hue)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur, one sigma per image, KERNEL taps, reflect padding (torchvision's)."""
    n, ch, hgt, wid = x.shape
    t = torch.arange(KERNEL, device=x.device, dtype=x.dtype) - KERNEL // 2
    k = torch.softmax(-0.5 * (t.view(1, -1) / sigma.view(-1, 1)) ** 2, dim=1)  # (n, KERNEL), rows sum to 1
    k = k.repeat_interleave(ch, 0)  # one kernel per (image, channel) group
    y = F.pad(x.reshape(1, n * ch, hgt, wid), [KERNEL // 2] * 4, mode="reflect")
    y = F.conv2d(y, k.view(n * ch, 1, 1, KERNEL), groups=n * ch)
    y = F.conv2d(y, k.view(n * ch, 1, KERNEL, 1), groups=n * ch)
    return y.view(n, ch, hgt, wid)


class BatchAugment:
    """ViewBatch (uint8 crops + parameters) -> normalised float views, every op on the batch's device."""

    def __init__(self):
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    @staticmethod
    def _apply(x: torch.Tensor, mask: torch.Tensor, fn, *args) -> None:
        # Only the images that draw the op pay for it. mask lives on the CPU (host_params), so
        # choosing the images never waits for the device.
        idx = mask.nonzero().flatten()
        if idx.numel():
            idx = idx.to(x.device, non_blocking=True)
            x[idx] = fn(x[idx], *(a[idx] for a in args))

    def __call__(self, batch: ViewBatch, memory_format=torch.contiguous_format) -> torch.Tensor:
        n = len(batch)
        if batch.pixels.device.type == "cpu" and n > CPU_CHUNK:
            # every op is per image, so chunks give the same result; on a CPU, chunks that stay in
            # cache measured ~30% faster than whole-batch passes (memory-bound elementwise ops)
            return torch.cat([self(ViewBatch(batch.pixels[i:i + CPU_CHUNK], batch.params[i:i + CPU_CHUNK],
                                             batch.host_params[i:i + CPU_CHUNK]), memory_format)
                              for i in range(0, n, CPU_CHUNK)]).contiguous(memory_format=memory_format)
        p, h = batch.params, batch.host_params  # the same values, on the device and on the CPU
        x = batch.pixels.float().div_(255)
        jitter = h[:, P["jitter"]] > 0.5
        for pos in range(4):  # ColorJitter applies its four ops in a per-image random order
            order = h[:, P["order0"] + pos]
            for op, fn in enumerate(_JITTER):
                self._apply(x, jitter & (order == op), fn, p[:, P["brightness"] + op])
        self._apply(x, h[:, P["gray"]] > 0.5, lambda y: _gray(y).expand(-1, 3, -1, -1))
        self._apply(x, h[:, P["blur"]] > 0.5, _blur, p[:, P["sigma"]])
        self._apply(x, h[:, P["flip"]] > 0.5, lambda y: y.flip(-1))
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return ((x - mean) / std).contiguous(memory_format=memory_format)


def reference_view(pixels: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """One view, one op at a time with torchvision.transforms.v2.functional: what BatchAugment must equal."""
    v = [float(a) for a in params]
    x = TF.to_dtype(pixels, torch.float32, scale=True)
    if v[P["jitter"]] > 0.5:
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for pos in range(4):
            k = int(v[P["order0"] + pos])
            x = ops[k](x, v[P["brightness"] + k])
    if v[P["gray"]] > 0.5:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if v[P["blur"]] > 0.5:
        x = TF.gaussian_blur(x, [KERNEL, KERNEL], [v[P["sigma"]], v[P["sigma"]]])
    if v[P["flip"]] > 0.5:
        x = TF.horizontal_flip(x)
    return TF.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD))
