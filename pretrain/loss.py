"""The SimSiam loss, a pure function with the stop-gradient inside."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def negative_cosine(p: torch.Tensor, z: torch.Tensor, stop_gradient: bool = True) -> torch.Tensor:
    """D(p, z) = -cos(p, stopgrad(z)), averaged over the batch. Minimum -1 (p parallel to z)."""
    if stop_gradient:
        z = z.detach()  # the paper's key ingredient: z is a constant target for this term
    return -F.cosine_similarity(p, z, dim=-1).mean()


def simsiam_loss(p1, p2, z1, z2, stop_gradient: bool = True) -> torch.Tensor:
    """Symmetrised loss L = D(p1, z2)/2 + D(p2, z1)/2."""
    return 0.5 * negative_cosine(p1, z2, stop_gradient) + 0.5 * negative_cosine(p2, z1, stop_gradient)


@torch.no_grad()
def output_std(z: torch.Tensor) -> float:
    """Mean over channels of the per-channel std of l2-normalised z: ~1/sqrt(d) when healthy, 0 at collapse."""
    return F.normalize(z.float(), dim=1).std(dim=0).mean().item()
