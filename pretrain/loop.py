"""The SimSiam pretraining loop: one loop for a CPU process, one GPU and DDP under torchrun.

The command line lives in pretrain/train.py, which imports this module only after parsing, so that
`--help` and usage errors answer without importing torch."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from core.checkpoint import epoch_checkpoints, read_checkpoint
from core.config import Config, dump_config
from core.distributed import all_reduce_mean, barrier, convert_sync_batchnorm, init_distributed
from core.files import mark_done, remove_stale_temp_files, save_atomic
from core.images import eval_transform, image_folder
from core.knn_monitor import knn_monitor, knn_sets
from core.lars import LARS
from core.models import SimSiam, build_model
from core.preemption import PreemptionFlag
from core.progress import Progress, say_outputs
from core.cli import UserError
from core.runtime import MetricsLogger, check_writable_dir, git_revision, rng_state, seed_everything
from core.sampling import ResumableSampler
from core.schedule import cosine_lr, scaled_lr, set_lr
from pretrain.data import TwoViewDataset, collate_skipping, simsiam_augmentation
from pretrain.fast_data import fast_two_view_data
from pretrain.loss import output_std
from pretrain.objective import Objective, check_switches, view_pairs

LAST = "checkpoint_last.pth.tar"  # mid-epoch checkpoint (save_every_steps, stop_after_steps)


class TrainingStopped(UserError):
    """The run stopped on purpose: non-finite loss or collapse alarm."""


def build_optimizer(model: SimSiam, cfg: Config, init_lr: float) -> torch.optim.Optimizer:
    """SGD (or LARS, Table 2's large batches) on all parameters, BN and biases included, with weight
    decay, as the official code groups them; the predictor may keep a fixed lr. Frozen parameters (the
    bias before the affine-free BN, a fixed predictor) never get a gradient, so neither the step nor
    the decay moves them."""
    groups = [
        {"params": list(model.encoder.parameters()), "fix_lr": False},
        {"params": list(model.predictor.parameters()), "fix_lr": cfg.optim.fix_pred_lr},
    ]
    groups = [g for g in groups if g["params"]]  # the identity predictor has no parameters
    o = cfg.optim
    if o.optimizer == "lars":
        return LARS(groups, lr=init_lr, momentum=o.momentum, weight_decay=o.weight_decay, trust_coefficient=o.lars_trust)
    return torch.optim.SGD(groups, lr=init_lr, momentum=o.momentum, weight_decay=o.weight_decay)


def checkpoint_dict(model, optimizer, objective, cfg, epoch: int, step_in_epoch: int, global_step: int) -> dict:
    """The official format (epoch, arch, state_dict with `module.` keys, optimizer) plus our extras."""
    return {
        "epoch": epoch,  # epochs completed
        "arch": cfg.arch,
        "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "step_in_epoch": step_in_epoch,  # batches of epoch `epoch` already done (0 at epoch ends)
        "global_step": global_step,
        "config": cfg.to_dict(),
        "git_revision": git_revision(),
        "rng": rng_state(),
        "objective": objective.state_dict(),  # the k-step copy or moving-average bank of the ablations
    }


def latest_checkpoint(out_dir: Path) -> tuple[Path, dict] | tuple[None, None]:
    """The most advanced checkpoint in out_dir by (epoch, step_in_epoch), with its loaded contents."""
    candidates = epoch_checkpoints(out_dir)[-1:] + ([out_dir / LAST] if (out_dir / LAST).exists() else [])
    best, best_ck, best_pos = None, None, (-1, -1)
    for path in candidates:
        ck = read_checkpoint(path)
        pos = (ck["epoch"], ck.get("step_in_epoch", 0))
        if pos > best_pos:
            best, best_ck, best_pos = path, ck, pos
    return best, best_ck


def resume(model, optimizer, objective, cfg, out_dir: Path) -> tuple[int, int, int, Path | None]:
    path, ck = latest_checkpoint(out_dir)  # read once: a ResNet-50 checkpoint is ~300 MB
    if path is None:
        objective.load_state_dict({})
        return 0, 0, 0, None
    if ck["arch"] != cfg.arch:
        raise UserError(f"{path} holds a {ck['arch']} but the config asks for {cfg.arch}; use another out_dir")
    model.load_state_dict({k.removeprefix("module."): v for k, v in ck["state_dict"].items()})
    optimizer.load_state_dict(ck["optimizer"])
    objective.load_state_dict(ck.get("objective", {}))
    return ck["epoch"], ck.get("step_in_epoch", 0), ck.get("global_step", 0), path


def main(cfg: Config) -> Path:
    preempt = PreemptionFlag().install()  # SIGTERM/SIGUSR1: save at the next step boundary, exit 75
    try:
        return train(cfg, preempt)
    finally:  # also when the run stops on an error: in-process callers get their handlers back
        preempt.restore()


def train(cfg: Config, preempt: PreemptionFlag) -> Path:
    check_switches(cfg)  # a misspelt ablation variant fails before any work
    dist = init_distributed(cfg.device)
    out_dir = check_writable_dir(cfg.out_dir)
    if dist.is_main:  # half-written temp files of a run killed (-9) mid-save: never read, only in the way
        for stale in remove_stale_temp_files(out_dir, "checkpoint_*"):
            print(f"pretrain: removed {stale.name}, left by a run killed while saving")
    seed_everything(cfg.seed)
    ws = dist.world_size
    if cfg.optim.batch_size % ws:
        raise UserError(f"optim.batch_size={cfg.optim.batch_size} is not divisible by the {ws} processes")
    per_rank_batch = cfg.optim.batch_size // ws

    base = image_folder(cfg.data.train_dir, skip_bad=cfg.data.skip_bad_images)
    collate, augment = collate_skipping, None  # augment: the fast backend's device-side photometric ops
    if cfg.data.backend == "official":
        dataset = TwoViewDataset(base, simsiam_augmentation(cfg.data.crop_size, cfg.data.min_scale, cfg.data.blur),
                                 cfg.seed, pairs=view_pairs(cfg))
    else:
        dataset, collate, augment = fast_two_view_data(base, cfg, dist.device, pairs=view_pairs(cfg))
    sampler = ResumableSampler(dataset, ws, dist.rank, cfg.seed)
    steps_per_epoch = len(sampler) // per_rank_batch
    if steps_per_epoch == 0:
        raise UserError(f"{len(base)} training images give no full batch of {cfg.optim.batch_size}; lower optim.batch_size")
    loader = DataLoader(dataset, batch_size=per_rank_batch, sampler=sampler, num_workers=cfg.data.workers,
                        collate_fn=collate, pin_memory=dist.device.type == "cuda", drop_last=True)
    if cfg.data.backend == "dali":  # decode + crop on the GPU; same batches, same interface
        from pretrain.dali_data import DaliLoader
        loader = DaliLoader(dataset, sampler, per_rank_batch, dist.device, cfg.data.workers)

    model = build_model(cfg)
    if ws > 1 and cfg.train.sync_bn:
        model = convert_sync_batchnorm(model)
    model = model.to(dist.device)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    init_lr = scaled_lr(cfg.optim.base_lr, cfg.optim.batch_size)
    optimizer = build_optimizer(model, cfg, init_lr)
    objective = Objective(cfg, model, len(base), steps_per_epoch)
    start_epoch, skip_steps, global_step, resumed_from = resume(model, optimizer, objective, cfg, out_dir)
    net = DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None) if ws > 1 else model

    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.amp]
    scaler = torch.amp.GradScaler(dist.device.type, enabled=amp_dtype is torch.float16)
    logger = MetricsLogger(out_dir, enabled=dist.is_main)
    if dist.is_main:
        dump_config(cfg, out_dir / "config.yaml")
        print(f"pretrain: {len(base)} images, {ws} process(es), batch {cfg.optim.batch_size}, lr {init_lr:g}, "
              f"{steps_per_epoch} steps/epoch, device {dist.device}"
              + (f"; resumed from {resumed_from.name} (epoch {start_epoch}, step {skip_steps})" if resumed_from else ""))
    healthy_std = 1.0 / math.sqrt(cfg.model.dim)
    low_std_epochs = 0
    monitor_sets = knn_sets(cfg, eval_transform(cfg.data.crop_size))
    last_good = resumed_from

    def save(path: Path, epoch: int, step_in_epoch: int) -> None:
        nonlocal last_good
        if dist.is_main:
            save_atomic(checkpoint_dict(model, optimizer, objective, cfg, epoch, step_in_epoch, global_step), path)
        last_good = path
        barrier()

    for epoch in range(start_epoch, cfg.optim.epochs):
        lr = cosine_lr(init_lr, epoch, cfg.optim.epochs, cfg.optim.warmup_epochs)
        set_lr(optimizer, lr, init_lr)
        first_step = skip_steps if epoch == start_epoch else 0
        sampler.set_epoch(epoch, skip=first_step * per_rank_batch)
        dataset.set_epoch(epoch)
        net.train()
        sums = {"loss": 0.0, "z_std": 0.0, "n": 0, "skipped": 0, "data_s": 0.0}
        t_epoch = t_data = time.perf_counter()
        bar = Progress(loader, desc=f"pretrain epoch {epoch}", unit="step", enabled=dist.is_main)
        for step, (x1, x2, skipped, index) in enumerate(bar, start=first_step):
            sums["data_s"] += time.perf_counter() - t_data
            sums["skipped"] += skipped
            if x1 is None:  # every image of this batch failed to decode (data.skip_bad_images)
                if ws > 1:  # skipping alone would leave the other ranks waiting in their collectives
                    raise TrainingStopped(f"every image of a batch on rank {dist.rank} failed to decode (epoch {epoch}, "
                                          f"step {step}); remove the bad files (metrics count them) and re-run: it resumes")
                continue
            x1 = x1.to(dist.device, non_blocking=True, memory_format=memory_format)
            x2 = x2.to(dist.device, non_blocking=True, memory_format=memory_format)
            if augment is not None:
                x1, x2 = augment(x1, memory_format), augment(x2, memory_format)
            with torch.autocast(dist.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss, z1, _ = objective(net, x1, x2, index, global_step)
            if not torch.isfinite(loss):
                where = f"{last_good}" if last_good else "none yet"
                raise TrainingStopped(f"loss is {loss.item()} at epoch {epoch} step {step}; stopped. "
                                      f"Last good checkpoint: {where}. Lower the lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            global_step += 1
            sums["loss"] += loss.item()
            sums["z_std"] += output_std(z1)
            sums["n"] += 1
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if cfg.train.stop_after_steps and global_step >= cfg.train.stop_after_steps:
                save(out_dir / LAST, epoch, step + 1)
                if dist.is_main:
                    print(f"pretrain: stopped after {global_step} steps as asked (train.stop_after_steps)")
                logger.close()
                return out_dir / LAST
            saved = bool(cfg.train.save_every_steps) and global_step % cfg.train.save_every_steps == 0
            if saved:
                save(out_dir / LAST, epoch, step + 1)
            if preempt.should_stop(dist.device):  # collective: every rank stops at this same step
                if not saved:
                    save(out_dir / LAST, epoch, step + 1)
                logger.close()
                preempt.exit(f"pretrain: preempted at epoch {epoch} step {step + 1}; saved {out_dir / LAST}")
            t_data = time.perf_counter()
        elapsed = time.perf_counter() - t_epoch
        n = max(sums["n"], 1)
        record = {
            "epoch": epoch + 1,
            "step": global_step,
            "lr": lr,
            "loss": all_reduce_mean(sums["loss"] / n, dist.device),
            "z_std": all_reduce_mean(sums["z_std"] / n, dist.device),
            "z_std_healthy": healthy_std,
            "images_per_s": sums["n"] * cfg.optim.batch_size / elapsed,
            "data_wait_frac": sums["data_s"] / elapsed,
            "skipped_images": int(all_reduce_mean(sums["skipped"], dist.device) * ws),
        }
        if monitor_sets and ((epoch + 1) % cfg.monitor.knn_every == 0 or epoch + 1 == cfg.optim.epochs):
            record["knn_top1"] = knn_monitor(model, cfg, dist, monitor_sets)
        logger.log(record, global_step)
        if dist.is_main:
            print("pretrain: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
        save(out_dir / f"checkpoint_{epoch + 1:04d}.pth.tar", epoch + 1, 0)
        if dist.is_main and cfg.train.keep_checkpoints:  # after the new file is complete, never before
            for old in epoch_checkpoints(out_dir)[:-cfg.train.keep_checkpoints]:
                old.unlink()
        if record["z_std"] < cfg.monitor.collapse_ratio * healthy_std:
            low_std_epochs += 1
            if cfg.monitor.collapse_patience and low_std_epochs >= cfg.monitor.collapse_patience:
                raise TrainingStopped(
                    f"collapse alarm: std of l2-normalised z is {record['z_std']:.2e}, below "
                    f"{cfg.monitor.collapse_ratio} x 1/sqrt({cfg.model.dim}) = {cfg.monitor.collapse_ratio * healthy_std:.2e} "
                    f"for {low_std_epochs} epochs. The representation collapsed; check stop_gradient, the predictor "
                    "and the lr (monitor.collapse_patience=0 disables the alarm)")
        else:
            low_std_epochs = 0
        if preempt.should_stop(dist.device):  # e.g. during the kNN monitor: the epoch checkpoint is written
            logger.close()
            preempt.exit(f"pretrain: preempted after epoch {epoch + 1}; saved {out_dir / f'checkpoint_{epoch + 1:04d}.pth.tar'}")
    logger.close()
    if dist.is_main:
        mark_done(out_dir, "pretrain", epochs=cfg.optim.epochs)
        if cfg.train.keep_checkpoints:  # deleted files should not surprise anyone looking for an epoch
            print(f"pretrain: kept the newest {cfg.train.keep_checkpoints} epoch checkpoint(s), older epochs deleted "
                  "(train.keep_checkpoints=0 keeps every epoch)")
        say_outputs("pretrain", out_dir)
    return out_dir
