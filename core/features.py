"""Frozen pool5 features of a dataset in dataset order, under one process or DDP."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from core.distributed import all_gather_cat, world_size
from core.progress import Progress


class Pool5(nn.Module):
    """A torchvision ResNet up to global average pooling (its fc, classifier or projector, bypassed)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return torch.flatten(n.avgpool(x), 1)


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int = 0,
    rank: int = 0,
    desc: str = "features",
    show_progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features N x C, labels N) in dataset order. Each rank takes a strided shard; results are gathered
    with their indices and put back in order, so every rank returns the same full tensors."""
    was_training = backbone.training
    backbone.eval()
    net = Pool5(backbone)
    ws = world_size()
    indices = torch.arange(rank, len(dataset), ws)
    loader = DataLoader(Subset(dataset, indices.tolist()), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    feats, labels = [], []
    bar = Progress(total=len(indices), desc=desc, unit="img", enabled=show_progress and rank == 0)
    for images, target in loader:
        feats.append(net(images.to(device, non_blocking=True)).float())
        labels.append(torch.as_tensor(target).to(device))
        bar.update(len(images))  # the rate is images/s
    bar.close()
    feats = torch.cat(feats) if feats else torch.zeros(0, 1, device=device)
    labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    if ws > 1:
        feats = all_gather_cat(feats)
        labels = all_gather_cat(labels)
        order = torch.argsort(all_gather_cat(indices.to(device)))
        feats, labels = feats[order], labels[order]
    backbone.train(was_training)
    return feats.cpu(), labels.cpu()
