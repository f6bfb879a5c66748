"""What the fast data path's two halves exchange: the per-view parameter layout and ViewBatch.

The workers (pretrain.fast_data) draw each view's random parameters into a float vector laid out
as PARAMS; the device side (pretrain.batch_augment) reads them back by name through P. Both import
this module, so neither needs the other's.
"""

from __future__ import annotations

import torch

# Layout of the per-view parameter vector handed to the device (float32).
PARAMS = ("jitter", "brightness", "contrast", "saturation", "hue", "order0", "order1", "order2", "order3",
          "gray", "blur", "sigma", "flip")
P = {name: k for k, name in enumerate(PARAMS)}


class ViewBatch:
    """uint8 crops (B, 3, S, S) and their parameters (B, len(PARAMS)); moves to a device as one.

    It has .to() and .pin_memory() so that the training loop's `x1.to(device, ...)` and the
    DataLoader's pinning work on it unchanged; BatchAugment turns it into the normalised tensor.
    host_params stays on the CPU: BatchAugment picks the images of each op from it, so it never
    waits on the GPU (a nonzero() of a GPU mask would sync at every op)."""

    def __init__(self, pixels: torch.Tensor, params: torch.Tensor, host_params: torch.Tensor | None = None):
        self.pixels, self.params = pixels, params
        self.host_params = params if host_params is None else host_params

    def to(self, device, non_blocking: bool = False, memory_format=None) -> "ViewBatch":
        # memory_format applies to the float output (BatchAugment), not to the uint8 crops
        return ViewBatch(self.pixels.to(device, non_blocking=non_blocking),
                         self.params.to(device, non_blocking=non_blocking), self.host_params)

    def pin_memory(self) -> "ViewBatch":
        return ViewBatch(self.pixels.pin_memory(), self.params.pin_memory(), self.host_params)

    def __len__(self) -> int:
        return len(self.pixels)
