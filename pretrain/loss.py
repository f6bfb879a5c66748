"""The SimSiam loss terms, pure functions with the stop-gradient inside."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIMILARITIES = ("cosine", "cross_entropy")


def negative_cosine(p: torch.Tensor, z: torch.Tensor, stop_gradient: bool = True) -> torch.Tensor:
    """D(p, z) = -cos(p, stopgrad(z)), averaged over the batch. Minimum -1 (p parallel to z)."""
    if stop_gradient:
        z = z.detach()  # the paper's key ingredient: z is a constant target for this term
    return -F.cosine_similarity(p, z, dim=-1).mean()


def cross_entropy_similarity(p: torch.Tensor, z: torch.Tensor, stop_gradient: bool = True) -> torch.Tensor:
    """The paper's cross-entropy ablation (section 4.5): D(p, z) = -softmax(stopgrad(z)) . log_softmax(p),
    softmax over channels, averaged over the batch (63.2% vs cosine's 68.1%)."""
    if stop_gradient:
        z = z.detach()
    return -(F.softmax(z, dim=-1) * F.log_softmax(p, dim=-1)).sum(dim=-1).mean()


def distance(similarity: str):
    """The D(p, z) of config key loss.similarity."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"loss.similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}")
    return negative_cosine if similarity == "cosine" else cross_entropy_similarity


def simsiam_loss(p1, p2, z1, z2, stop_gradient: bool = True) -> torch.Tensor:
    """Symmetrised loss L = D(p1, z2)/2 + D(p2, z1)/2."""
    return 0.5 * negative_cosine(p1, z2, stop_gradient) + 0.5 * negative_cosine(p2, z1, stop_gradient)


@torch.no_grad()
def output_std(z: torch.Tensor) -> float:
    """Mean over channels of the per-channel std of l2-normalised z: ~1/sqrt(d) when healthy, 0 at collapse."""
    return F.normalize(z.float(), dim=1).std(dim=0).mean().item()
