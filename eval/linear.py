"""The official linear probe (PROTOCOL.md section 3): a trainable fc on a frozen backbone.

    python -m eval.linear --checkpoint PATH|random --arch resnet50 --train-dir DIR --val-dir DIR --out-dir DIR

torchvision ResNet with only `fc` trainable (init normal(0, 0.01), bias 0); the backbone stays in
eval mode, so its BN statistics never change, and after the first epoch every non-fc tensor is
compared bit for bit with the checkpoint. LARS (eta 0.001, no clip), momentum 0.9, wd 0, batch 4096,
lr 0.1 x batch/256, cosine per epoch, 90 epochs; train RandomResizedCrop + flip, val centre crop.

Because the backbone is frozen (and checked to be), the val pass of every epoch is the fc applied to
the cached centre-crop val features: the same numbers as a full forward, without 90 val passes.
Plain SGD (linear.optimizer=sgd) needs a very large lr on SimSiam features: ~30 at batch 256
(linear.batch_size=256 linear.base_lr=30) gives ~65% on ImageNet where LARS gives 68.1.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m eval.linear: parse before the imports below load torch (fast --help)
    from eval.cli import run_protocol

    run_protocol("eval.linear", __doc__)
    raise SystemExit  # the protocol ran as the module eval.linear, which run_protocol imported

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from core.checkpoint import load_backbone_state, read_checkpoint
from core.config import Config
from core.distributed import all_reduce_mean, barrier
from core.features import Pool5
from core.files import remove_stale_temp_files, save_atomic
from core.images import image_folder
from core.knn import topk_accuracy
from core.lars import LARS
from core.preemption import PreemptionFlag
from core.progress import Progress
from core.cli import UserError
from core.runtime import MetricsLogger
from core.sampling import ResumableSampler
from core.schedule import cosine_lr, scaled_lr, set_lr
from eval.cli import run_protocol
from eval.context import EvalContext, checkpoint_choice, train_augmentation
from eval.feature_cache import SeededView

CHECKPOINT = "linear_probe.pth.tar"


class BackboneChangedError(UserError):
    """The frozen backbone differs from the checkpoint: the probe's number would not measure the checkpoint."""


class FrozenBackboneClassifier(nn.Module):
    """pool5 of the frozen backbone (no autograd graph: nothing there requires grad) -> trainable fc."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.pool5 = Pool5(net)
        self.fc = net.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            feats = self.pool5(x)
        return self.fc(feats)


def init_fc(fc: nn.Linear, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        fc.weight.copy_(torch.randn(fc.weight.shape, generator=g) * 0.01)
        fc.bias.zero_()
    fc.requires_grad_(True)


def build_optimizer(params, cfg: Config, lr: float) -> torch.optim.Optimizer:
    lin = cfg.linear
    if lin.optimizer == "lars":
        return LARS(params, lr=lr, momentum=lin.momentum, weight_decay=lin.weight_decay, trust_coefficient=lin.lars_trust)
    return torch.optim.SGD(params, lr=lr, momentum=lin.momentum, weight_decay=lin.weight_decay)


def check_backbone_unchanged(net: nn.Module, cfg: Config, initial: dict, epoch: int) -> None:
    """Every non-fc parameter and buffer must equal the checkpoint's bit for bit (tensors the checkpoint
    lacks, such as num_batches_tracked in some exports, must equal their value at load)."""
    with torch.random.fork_rng(devices=[]):  # a "random" checkpoint reseeds to rebuild its weights
        expected, _ = load_backbone_state(cfg.checkpoint, cfg.arch, cfg.seed, checkpoint_choice(cfg))
    if str(cfg.checkpoint) == "random" and cfg.random_init.bn_stats == "recompute":
        # its BN statistics (and their batch counters) were re-estimated on data at load (eval/context.py):
        # the values after loading are the reference
        expected = {k: v for k, v in expected.items() if "running_" not in k and not k.endswith("num_batches_tracked")}
    changed = [k for k, v in net.state_dict().items()
               if not k.startswith("fc.") and not torch.equal(v.cpu(), expected.get(k, initial[k]))]
    if changed:
        raise BackboneChangedError(
            f"linear probe sanity check failed after epoch {epoch}: {len(changed)} backbone tensors differ from "
            f"checkpoint {cfg.checkpoint}: {', '.join(changed[:5])}. Only fc may train and the backbone must stay in "
            "eval mode (BN statistics frozen); if the checkpoint file was rewritten during the run, evaluate a copy")


def _run_key(ctx: EvalContext) -> dict:
    """What a resumed probe must share with the run that wrote its checkpoint."""
    cfg = ctx.cfg
    ckpt = {k: v for k, v in ctx.checkpoint_id.items() if k != "path"}  # a moved file is still the same weights
    return {"checkpoint": ckpt, "train_dir": str(Path(cfg.data.train_dir).resolve()),
            "num_train": len(ctx.train_set), "image_size": cfg.data.image_size, "seed": cfg.seed,
            "linear": cfg.linear.to_dict()}


def _validate(cfg: Config, world: int) -> None:
    lin = cfg.linear
    if lin.optimizer not in ("lars", "sgd"):
        raise UserError(f"linear.optimizer must be lars or sgd, got {lin.optimizer!r}")
    if lin.epochs < 1 or lin.batch_size < 1 or lin.save_every < 1:
        raise UserError("linear.epochs, linear.batch_size and linear.save_every must be >= 1")
    if lin.batch_size % world:
        raise UserError(f"linear.batch_size={lin.batch_size} is not divisible by the {world} processes")


def main(cfg: Config, ctx: EvalContext | None = None) -> dict:
    ctx = ctx or EvalContext(cfg)
    dist, net, lin = ctx.dist, ctx.net, cfg.linear
    _validate(cfg, dist.world_size)
    init_fc(net.fc, cfg.seed)
    initial = {k: v.detach().cpu().clone() for k, v in net.state_dict().items() if not k.startswith("fc.")}
    val_feats, val_labels, val_info = ctx.center_features("val")
    val_feats, val_labels = val_feats.to(dist.device), val_labels.to(dist.device)

    train_tf = train_augmentation(cfg.data.image_size, lin.min_scale, ctx.normalization)
    # Per-sample seeded augmentation (seed, epoch, index): the same crops whatever the worker count,
    # the number of processes or a resume, so DDP and single-process runs train on identical batches.
    train_set = SeededView(image_folder(cfg.data.train_dir), train_tf, cfg.seed, view=0)
    # DistributedSampler's order (shuffled per epoch), able to skip the batches a preempted run did
    sampler = ResumableSampler(train_set, dist.world_size, dist.rank, cfg.seed, drop_last=False)
    per_rank_batch = lin.batch_size // dist.world_size
    loader = DataLoader(train_set, batch_size=per_rank_batch, sampler=sampler,
                        num_workers=cfg.data.workers, pin_memory=dist.device.type == "cuda")
    model = FrozenBackboneClassifier(net)
    # Buffers are frozen and identical on every rank: broadcasting them each step would only cost time.
    ddp = DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
                                  broadcast_buffers=False) if dist.world_size > 1 else model
    init_lr = scaled_lr(lin.base_lr, lin.batch_size)
    optimizer = build_optimizer(list(net.fc.parameters()), cfg, init_lr)

    ckpt_path = ctx.out_dir / CHECKPOINT
    run_key = _run_key(ctx)
    start_epoch, history, skip_steps, partial = 0, [], 0, (0.0, 0)
    preempt = PreemptionFlag().install()  # SIGTERM/SIGUSR1: save after the current step, exit 75
    if dist.is_main:  # half-written files of a probe killed (-9) while saving
        remove_stale_temp_files(ctx.out_dir, CHECKPOINT)
    if ckpt_path.exists():
        saved = read_checkpoint(ckpt_path)
        if saved.get("run_key") != run_key:
            raise UserError(f"{ckpt_path} belongs to a probe of another checkpoint or config; "
                            "use another --out-dir, or delete that file to start over")
        net.fc.load_state_dict(saved["fc"])
        optimizer.load_state_dict(saved["optimizer"])
        start_epoch, history = saved["epoch"], saved["history"]
        skip_steps, partial = saved.get("step_in_epoch", 0), (saved.get("loss_sum", 0.0), saved.get("seen", 0))
        if dist.is_main:
            print(f"linear: resumed from {ckpt_path} after epoch {start_epoch}"
                  + (f" and {skip_steps} steps of the next" if skip_steps else ""))
    logger = MetricsLogger(ctx.out_dir, enabled=dist.is_main and start_epoch < lin.epochs)
    if dist.is_main:
        print(f"linear: {len(train_set)} train images, {lin.optimizer} lr {init_lr:g} (base {lin.base_lr:g} x "
              f"{lin.batch_size}/256), batch {lin.batch_size}, {lin.epochs} epochs")

    for epoch in range(start_epoch, lin.epochs):
        lr = cosine_lr(init_lr, epoch, lin.epochs)
        set_lr(optimizer, lr, init_lr)
        first_step = skip_steps if epoch == start_epoch else 0
        sampler.set_epoch(epoch, skip=first_step * per_rank_batch)
        train_set.view = epoch
        net.eval()  # the whole model, always: BN statistics of the backbone must not move
        (loss_sum, seen), data_s = partial if first_step else (0.0, 0), 0.0
        t_epoch = t_data = time.perf_counter()
        bar = Progress(loader, desc=f"linear epoch {epoch}", unit="step", enabled=dist.is_main)
        for step, (images, target) in enumerate(bar, start=first_step):
            data_s += time.perf_counter() - t_data
            images, target = images.to(dist.device, non_blocking=True), target.to(dist.device, non_blocking=True)
            loss = F.cross_entropy(ddp(images), target)
            if not torch.isfinite(loss):
                raise UserError(f"linear probe loss is {loss.item()} at epoch {epoch}; lower linear.base_lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * images.shape[0]
            seen += images.shape[0]
            if preempt.should_stop(dist.device):  # collective: all ranks stop after the same step
                if dist.is_main:  # loss_sum/seen are rank 0's: a resumed DDP epoch logs an approximate loss
                    save_atomic({"epoch": epoch, "step_in_epoch": step + 1, "loss_sum": loss_sum, "seen": seen,
                                 "fc": net.fc.state_dict(), "optimizer": optimizer.state_dict(),
                                 "history": history, "run_key": run_key}, ckpt_path)
                barrier()
                logger.close()
                preempt.exit(f"linear: preempted at epoch {epoch} step {step + 1}; saved {ckpt_path}")
            t_data = time.perf_counter()
        elapsed = time.perf_counter() - t_epoch
        if epoch == start_epoch:  # the official sanity check, after the first epoch this process trained
            check_backbone_unchanged(net, cfg, initial, epoch + 1)
        with torch.no_grad():
            acc = topk_accuracy(net.fc(val_feats), val_labels)
        record = {"epoch": epoch + 1, "lr": lr, "loss": all_reduce_mean(loss_sum / max(seen, 1), dist.device),
                  "val_top1": acc["top1"], "val_top5": acc["top5"],
                  "images_per_s": all_reduce_mean(seen, dist.device) * dist.world_size / elapsed,
                  "data_wait_frac": data_s / elapsed}
        history.append(record)
        logger.log({f"linear/{k}": v for k, v in record.items()}, epoch + 1)
        if dist.is_main:
            print("linear: " + ", ".join(f"{k} {v:.4g}" for k, v in record.items()))
        if (epoch + 1) % lin.save_every == 0 or epoch + 1 == lin.epochs:
            if dist.is_main:
                save_atomic({"epoch": epoch + 1, "fc": net.fc.state_dict(), "optimizer": optimizer.state_dict(),
                             "history": history, "run_key": run_key}, ckpt_path)
            barrier()
    logger.close()
    preempt.restore()

    last = history[-1]
    best = max(history, key=lambda r: (r["val_top1"], r["epoch"]))
    pick = lambda r: {"epoch": r["epoch"], "top1": round(r["val_top1"], 4), "top5": round(r["val_top5"], 4)}  # noqa: E731
    result = {
        "protocol": ctx.protocol(
            method="official linear probe: frozen backbone in eval mode, trainable fc",
            optimizer=lin.optimizer, epochs=lin.epochs, batch_size=lin.batch_size, base_lr=lin.base_lr, lr=init_lr,
            lr_schedule="cosine per epoch", momentum=lin.momentum, weight_decay=lin.weight_decay,
            lars_trust=lin.lars_trust if lin.optimizer == "lars" else None, fc_init="normal(0, 0.01), bias 0",
            train_transform=repr(train_tf), val="fc on the cached centre-crop val features"),
        "linear": {"last_epoch": pick(last), "best_epoch": {**pick(best), "note": "best epoch chosen on val (optimistic)"}},
        "sanity_check": "every non-fc tensor bit-identical to the checkpoint after the first trained epoch",
        "train_images_per_s": round(float(np.mean([r["images_per_s"] for r in history])), 1),
        "features": {"val": val_info},
    }
    if dist.is_main:
        print(f"linear: last epoch {last['epoch']} top1 {last['val_top1']:.2f} top5 {last['val_top5']:.2f}; "
              f"best epoch {best['epoch']} top1 {best['val_top1']:.2f}")
    ctx.write_result("linear", result)  # the last write and the last line
    net.fc.requires_grad_(False)
    return result


def cli_main(argv=None) -> None:
    run_protocol(__name__, __doc__, argv)
