"""Reproducible data order and per-sample randomness, shared by pretraining and the linear probe.

Every random draw of a sample's augmentation is a pure function of (seed, epoch, index): the sample
reseeds torch's CPU generator before its views are drawn. So the views do not depend on the number
of workers or on which worker got the sample, and a run resumed in the middle of an epoch sees
exactly the views an uninterrupted run would have seen. The order of samples comes from
ResumableSampler, which can skip the part of an epoch already consumed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Sampler
from torch.utils.data.distributed import DistributedSampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation draws (every data backend uses this one rule)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def reseed_sample(seed: int, epoch: int, index: int) -> None:
    """Seed the draws of sample `index` in `epoch` (for a fixed cached view, `epoch` is the view number).

    Only the CPU generator drives the transforms; torch.manual_seed would also reseed every CUDA
    device (~100 us a call, 10% of a small image's augmentation, and a captured stack trace per
    sample where CUDA is lazily initialised)."""
    torch.default_generator.manual_seed(sample_seed(seed, epoch, index))


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
