"""The training objective of one batch, with the paper's empirical study as switches (PROTOCOL.md section 2).

Default (the recipe): L = D(p1, z2)/2 + D(p2, z1)/2 with D the negative cosine and z a stop-gradient
target from the same forward pass. The switches change one ingredient each:

  model.stop_gradient  false: gradients also flow into the targets z (Figure 2: collapse)
  loss.similarity      cosine | cross_entropy (section 4.5)
  loss.symmetry        symmetric | asymmetric: only D(p1, z2) | asymmetric_2x: D(p1, z2) on two view
                       pairs per image (section 4.6)
  loss.target          online: z of this step | kstep: z from a copy of the encoder refreshed every
                       loss.kstep steps | moving_average: a per-image moving average of z (section 5)

The predictor and BN switches live in the model (core.models), the optimizer ones in pretrain.loop.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from core.config import ConfigError
from core.distributed import all_gather_cat
from core.models import HEAD_BN, PREDICTORS
from pretrain.loss import SIMILARITIES, distance

SYMMETRIES = ("symmetric", "asymmetric", "asymmetric_2x")
TARGETS = ("online", "kstep", "moving_average")
OPTIMIZERS = ("sgd", "lars")


def check_switches(cfg) -> None:
    """Every ablation switch names a known variant, and no combination silently means something else."""
    choices = {"model.head_bn": HEAD_BN, "model.predictor": PREDICTORS, "loss.similarity": SIMILARITIES,
               "loss.symmetry": SYMMETRIES, "loss.target": TARGETS, "optim.optimizer": OPTIMIZERS}
    for key, allowed in choices.items():
        section, name = key.split(".")
        if cfg[section][name] not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {cfg[section][name]!r}")
    loss = cfg.loss
    if loss.target != "online" and not cfg.model.stop_gradient:
        raise ConfigError(f"model.stop_gradient=false needs loss.target=online: the {loss.target} targets are "
                         "constants by construction")
    if loss.target == "moving_average" and loss.symmetry == "asymmetric_2x":
        raise ConfigError("loss.target=moving_average keeps one target per image; use loss.symmetry=symmetric "
                         "or asymmetric")
    if loss.kstep < 0 or not 0.0 <= loss.ma_momentum < 1.0:
        raise ConfigError(f"loss.kstep must be >= 0 (0: once per epoch) and loss.ma_momentum in [0, 1); "
                         f"got {loss.kstep} and {loss.ma_momentum}")


def view_pairs(cfg) -> int:
    """View pairs drawn per image: 2 for the asymmetric 2x-sampling ablation, else 1."""
    return 2 if cfg.loss.symmetry == "asymmetric_2x" else 1


class Objective:
    """loss, z1, terms = objective(net, x1, x2, index, global_step); `terms` are the (p, target) pairs
    that entered the loss, so tests can see what each switch does."""

    def __init__(self, cfg, model: nn.Module, num_samples: int, steps_per_epoch: int):
        check_switches(cfg)
        self.D = distance(cfg.loss.similarity)
        self.stop_gradient = cfg.model.stop_gradient
        self.symmetry = cfg.loss.symmetry
        self.target = cfg.loss.target
        self.model = model  # the unwrapped model: its encoder is what the k-step copy mirrors
        if self.target == "kstep":
            # A frozen copy of f (backbone + projector) whose outputs are the targets eta. Refreshing it
            # every k steps is the paper's k-step alternation; k = 1 is SimSiam itself.
            self.every = cfg.loss.kstep or steps_per_epoch
            self.target_encoder = copy.deepcopy(model.encoder).requires_grad_(False)
        if self.target == "moving_average":
            # eta_x <- m * eta_x + (1 - m) * z(x) per image. On the CPU: ImageNet at d=2048 is 10.5 GB.
            self.momentum = cfg.loss.ma_momentum
            self.bank = torch.zeros(num_samples, cfg.model.dim)
            self.seen = torch.zeros(num_samples, dtype=torch.bool)

    # ------------------------------------------------------------------ targets
    @torch.no_grad()
    def _kstep_targets(self, x1, x2, global_step: int):
        if global_step % self.every == 0:
            self.target_encoder.load_state_dict(self.model.encoder.state_dict())
        # Train mode, as the online z: batch statistics in BN, so k = 1 reproduces SimSiam exactly.
        self.target_encoder.train()
        return self.target_encoder(x1), self.target_encoder(x2)

    @torch.no_grad()
    def _moving_average_targets(self, z1, z2, index):
        # Our reading of section 5: the views of this step are the fresh sample F(T'(x)) (their mean when
        # both are trained), on the unit sphere, where the cosine loss lives.
        views = [z2] if self.symmetry == "asymmetric" else [z1, z2]
        fresh = torch.stack([F.normalize(z.float(), dim=1) for z in views]).mean(0)
        # Every rank applies every rank's update, so the banks stay identical whichever rank sees an image.
        idx = all_gather_cat(index.to(fresh.device)).cpu()
        fresh_all = all_gather_cat(fresh).cpu()
        old, seen = self.bank[idx], self.seen[idx]
        self.bank[idx] = torch.where(seen[:, None], self.momentum * old + (1 - self.momentum) * fresh_all, fresh_all)
        self.seen[idx] = True
        eta = self.bank[index.cpu()].to(z1.device, z1.dtype)
        return eta, eta

    # ------------------------------------------------------------------ loss
    def __call__(self, net, x1, x2, index, global_step: int):
        p1, p2, z1, z2 = net(x1, x2)
        if self.target == "kstep":
            t1, t2 = self._kstep_targets(x1, x2, global_step)
        elif self.target == "moving_average":
            t1, t2 = self._moving_average_targets(z1, z2, index)
        else:
            t1, t2 = z1, z2
        if self.symmetry == "symmetric":
            terms = [(p1, t2), (p2, t1)]
        elif self.symmetry == "asymmetric":
            terms = [(p1, t2)]
        else:  # asymmetric_2x: the batch holds two view pairs per image, pair after pair
            terms = list(zip(p1.chunk(2), t2.chunk(2)))
        loss = sum(self.D(p, t, self.stop_gradient) for p, t in terms) / len(terms)
        return loss, z1, terms

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """What an exact resume needs besides the model: the k-step copy or the moving-average bank."""
        if self.target == "kstep":
            return {"target_encoder": self.target_encoder.state_dict()}
        if self.target == "moving_average":
            return {"bank": self.bank, "seen": self.seen}
        return {}

    def load_state_dict(self, state: dict) -> None:
        if self.target == "kstep":  # a checkpoint without the copy (another target): start a new window
            self.target_encoder.load_state_dict(state.get("target_encoder") or self.model.encoder.state_dict())
        if self.target == "moving_average" and "bank" in state:
            self.bank.copy_(state["bank"])
            self.seen.copy_(state["seen"])
