"""BN running statistics of an untrained backbone, re-estimated on data (precise BN).

A freshly built ResNet's BN layers hold running mean 0 and variance 1. In eval mode they then pass
every activation through unnormalised, and the activations of an untrained network grow and drift
from layer to layer, so the pool5 features of different images nearly coincide. The random-init
baseline of the literature normalises with statistics of real data: here, as precise BN does
(detectron2's `update_bn_stats`), the network runs in train mode over N training images with every
BN's momentum set to None (a plain average over the batches), and the averages are then frozen.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from core.features import Pool5

BN_STATS = ("recompute", "init")  # the choices of an eval config's random_init.bn_stats


def bn_layers(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def reestimate_bn_stats(net: nn.Module, dataset: Dataset, num_images: int, *, batch_size: int, seed: int,
                        device: torch.device, num_workers: int = 0) -> dict:
    """Replace the running statistics of every BN of `net` by their average over `num_images` images of
    `dataset` (a seeded random subset; all of it if smaller), computed in train mode, batch by batch.
    Returns what was done, for the result's protocol. `net` is left in eval mode."""
    n = min(num_images, len(dataset))
    if n < 2:
        raise ValueError(f"BN statistics need at least 2 images, got {n}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    # A last batch of one image has no variance to measure (and BN refuses it at a 1x1 layer4): fold it
    # into the batch before by dropping it only in that case.
    drop_last = n % batch_size == 1
    loader = DataLoader(Subset(dataset, order.tolist()), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, drop_last=drop_last)
    layers = bn_layers(net)
    momenta = [bn.momentum for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: every batch counts equally, the order does not matter
    net.train()
    body = Pool5(net)  # the classifier is not needed for BN statistics
    batches = seen = 0
    for images, _ in loader:
        body(images.to(device))
        batches += 1
        seen += len(images)
    for bn, momentum in zip(layers, momenta):
        bn.momentum = momentum
    net.eval()  # frozen from here on: features use these statistics
    return {"bn_stats": "recompute", "images": seen, "batches": batches, "batch_size": batch_size,
            "method": "precise BN: train-mode passes, per-batch statistics averaged, then frozen"}
