"""The backbones and the SimSiam model (Chen & He, CVPR 2021), laid out as the official code.

Parameter names match the official checkpoints: the backbone's classifier `fc` is replaced by the
projection MLP, so projector keys are `encoder.fc.{0,1,3,4,6,7}.*` and predictor keys
`predictor.{0,1,3}.*`; DDP adds the `module.` prefix.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

ARCHS = ("resnet50", "resnet18", "resnet18_cifar")


def build_backbone(arch: str, num_classes: int = 1000, zero_init_residual: bool = True) -> nn.Module:
    """A torchvision ResNet; `resnet18_cifar` has a 3x3 stride-1 stem and no max-pool (32x32 inputs)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    tv_name = "resnet18" if arch == "resnet18_cifar" else arch
    net = getattr(torchvision.models, tv_name)(weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual)
    if arch == "resnet18_cifar":
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    return net


def feature_dim(backbone: nn.Module) -> int:
    """Width of pool5 (the input of the classifier): 2048 for ResNet-50, 512 for ResNet-18."""
    fc = backbone.fc
    return fc.in_features if isinstance(fc, nn.Linear) else fc[0].in_features


class SimSiam(nn.Module):
    """encoder f = backbone + projection MLP; predictor h. forward returns p1, p2, z1, z2.

    proj_layers=3 is the ImageNet recipe; 2 the CIFAR one (the middle hidden layer removed).
    """

    def __init__(self, arch: str = "resnet50", dim: int = 2048, pred_dim: int = 512, proj_layers: int = 3):
        super().__init__()
        if proj_layers not in (2, 3):
            raise ValueError(f"proj_layers must be 2 or 3, got {proj_layers}")
        # The backbone's own fc, created with num_classes=dim, becomes the projector's last linear.
        self.encoder = build_backbone(arch, num_classes=dim, zero_init_residual=True)
        prev_dim = self.encoder.fc.weight.shape[1]
        hidden = []
        for _ in range(proj_layers - 1):
            hidden += [nn.Linear(prev_dim, prev_dim, bias=False), nn.BatchNorm1d(prev_dim), nn.ReLU(inplace=True)]
        self.encoder.fc = nn.Sequential(
            *hidden,
            self.encoder.fc,
            nn.BatchNorm1d(dim, affine=False),  # the projector's output BN has no affine parameters
        )
        # The bias before an affine-free BN is cancelled by the BN's mean subtraction: freeze it, as the
        # official code does, so weight decay does not drift it either.
        self.encoder.fc[-2].bias.requires_grad = False
        self.predictor = nn.Sequential(
            nn.Linear(dim, pred_dim, bias=False),
            nn.BatchNorm1d(pred_dim),
            nn.ReLU(inplace=True),  # hidden layer
            nn.Linear(pred_dim, dim),  # output layer: no BN, no ReLU
        )
        self.dim = dim

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        z1 = self.encoder(x1)  # N x dim
        z2 = self.encoder(x2)
        p1 = self.predictor(z1)  # N x dim
        p2 = self.predictor(z2)
        return p1, p2, z1, z2
