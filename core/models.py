"""The backbones and the SimSiam model (Chen & He, CVPR 2021), laid out as the official code.

Parameter names match the official checkpoints: the backbone's classifier `fc` is replaced by the
projection MLP, so projector keys are `encoder.fc.{0,1,3,4,6,7}.*` and predictor keys
`predictor.{0,1,3}.*`; DDP adds the `module.` prefix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torchvision
from torch import nn

if TYPE_CHECKING:  # annotation only: the model does not need the config machinery to import
    from core.config import Config

ARCHS = ("resnet50", "resnet18", "resnet34", "resnet101", "resnet152", "resnet18_cifar")


def build_backbone(arch: str, num_classes: int = 1000, zero_init_residual: bool = False) -> nn.Module:
    """A torchvision ResNet with the architecture's standard init; `resnet18_cifar` has a 3x3 stride-1
    stem and no max-pool (32x32 inputs).

    zero_init_residual (the last BN of every residual branch starts at 0, so each block starts as the
    identity) is a training trick of the SimSiam recipe, which turns it on in SimSiam below. It is off by
    default because an untrained network built with it is not the literature's random-init baseline:
    every branch is switched off and the features of different images nearly coincide.
    """
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


# Table 3 of the paper: where the heads carry BN. "default" is the recipe.
HEAD_BN = {  # name -> (hidden layers, projector output, predictor output)
    "none": (False, False, False),
    "hidden": (True, False, False),
    "default": (True, True, False),
    "all": (True, True, True),
}
# Table 1: the predictor h. learned (the recipe; its lr schedule is optim.fix_pred_lr), identity (no
# predictor: p = z), fixed_random (kept at its random init, never updated).
PREDICTORS = ("learned", "identity", "fixed_random")


def _hidden_layer(width_in: int, width_out: int, bn: bool) -> list[nn.Module]:
    # A linear followed by BN needs no bias (BN's shift replaces it); without BN it keeps one.
    return [nn.Linear(width_in, width_out, bias=not bn), *([nn.BatchNorm1d(width_out)] if bn else []), nn.ReLU(inplace=True)]


class SimSiam(nn.Module):
    """encoder f = backbone + projection MLP; predictor h. forward returns p1, p2, z1, z2.

    proj_layers=3 is the ImageNet recipe; 2 the CIFAR one (the middle hidden layer removed). With the
    defaults the layout and parameter names are the official code's; `head_bn` and `predictor` are
    the ablations of Tables 3 and 1.
    """

    def __init__(self, arch: str = "resnet50", dim: int = 2048, pred_dim: int = 512, proj_layers: int = 3,
                 head_bn: str = "default", predictor: str = "learned"):
        super().__init__()
        if proj_layers not in (2, 3):
            raise ValueError(f"proj_layers must be 2 or 3, got {proj_layers}")
        if head_bn not in HEAD_BN:
            raise ValueError(f"head_bn must be one of {', '.join(HEAD_BN)}, got {head_bn!r}")
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor must be one of {', '.join(PREDICTORS)}, got {predictor!r}")
        hidden_bn, proj_out_bn, pred_out_bn = HEAD_BN[head_bn]
        # The backbone's own fc, created with num_classes=dim, becomes the projector's last linear.
        self.encoder = build_backbone(arch, num_classes=dim, zero_init_residual=True)
        prev_dim = self.encoder.fc.weight.shape[1]
        hidden = []
        for _ in range(proj_layers - 1):
            hidden += _hidden_layer(prev_dim, prev_dim, hidden_bn)
        out_bn = [nn.BatchNorm1d(dim, affine=False)] if proj_out_bn else []  # no affine parameters
        self.encoder.fc = nn.Sequential(*hidden, self.encoder.fc, *out_bn)
        if proj_out_bn:
            # The bias before an affine-free BN is cancelled by the BN's mean subtraction: freeze it, as
            # the official code does, so weight decay does not drift it either.
            self.encoder.fc[-2].bias.requires_grad = False
        if predictor == "identity":
            self.predictor = nn.Identity()
        else:
            self.predictor = nn.Sequential(
                *_hidden_layer(dim, pred_dim, hidden_bn),  # hidden layer
                nn.Linear(pred_dim, dim),  # output layer: no ReLU; BN only in Table 3's unstable variant
                *([nn.BatchNorm1d(dim, affine=False)] if pred_out_bn else []),
            )
            if predictor == "fixed_random":
                self.predictor.requires_grad_(False)  # Table 1: fixed at random init (1.5%)
        self.dim = dim

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        z1 = self.encoder(x1)  # N x dim
        z2 = self.encoder(x2)
        p1 = self.predictor(z1)  # N x dim
        p2 = self.predictor(z2)
        return p1, p2, z1, z2


def build_model(cfg: Config) -> SimSiam:
    """The SimSiam model a pretraining config describes (cfg.arch and cfg.model); pretraining builds
    it, and so does every comparison that must start from the same random init."""
    m = cfg.model
    return SimSiam(cfg.arch, m.dim, m.pred_dim, m.proj_layers, head_bn=m.head_bn, predictor=m.predictor)
