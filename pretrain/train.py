"""SimSiam pretraining: one loop for a CPU process, one GPU and DDP under torchrun.

    python -m pretrain.train [--config FILE] [--out-dir DIR] [--check [--world-size N]] [key=value ...]
    python -m pretrain.train --config imagenet_100ep.yaml data.train_dir=/data/imagenet/train

Writes OUT_DIR/config.yaml, metrics.jsonl, tb/ and checkpoint_XXXX.pth.tar; re-running resumes there.
`--check` only validates the config and the inputs (the training images, the kNN monitor's folders,
the batch against the images and the processes) and exits: pretrain/run.sh runs it once before
launching torchrun, so a mistake is one `error:` line instead of one per worker plus torchrun's
traceback. The loop is pretrain/loop.py; this module is the command line, and imports torch only
once the arguments are parsed, so `--help` answers at once.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.cli import OUT_DIR, Command, Flag, UserError, run, warn

CONFIGS = Path(__file__).parent / "configs"
FLAGS = (OUT_DIR, Flag("--arch", "arch", "backbone", "ARCH"), Flag("--device", "device", "auto | cpu | cuda", "DEVICE"))


def rules() -> dict:
    """The range of every pretraining key that a run cannot use otherwise (PROTOCOL.md section 1).

    A function, not a constant: the choices come from the model code, which imports torch."""
    from core.config import DEVICE, at_least, in_range, int_at_least, one_of, positive
    from core.models import ARCHS

    count, non_negative = int_at_least(1), int_at_least(0)
    return {
        "arch": one_of(*ARCHS), "device": DEVICE, "seed": non_negative,
        "data.crop_size": count, "data.min_scale": in_range(0, 1, high_open=False),
        "data.workers": non_negative, "data.backend": one_of("official", "fast", "dali"),
        "data.photometric": one_of("auto", "device", "workers"),
        "model.dim": count, "model.pred_dim": count, "model.proj_layers": one_of(2, 3),
        "optim.batch_size": count, "optim.base_lr": positive(), "optim.momentum": in_range(0, 1, low_open=False),
        "optim.weight_decay": at_least(0), "optim.epochs": count, "optim.warmup_epochs": non_negative,
        "optim.lars_trust": positive(), "train.amp": one_of("none", "bf16", "fp16"),
        "train.save_every_steps": non_negative, "train.keep_checkpoints": non_negative,
        "train.stop_after_steps": non_negative, "monitor.knn_every": non_negative, "monitor.knn_k": count,
        "monitor.knn_t": positive(), "monitor.knn_batch_size": count, "monitor.collapse_ratio": at_least(0),
        "monitor.collapse_patience": non_negative,
    }


def load(config: str | Path, overrides=()):
    """A pretraining config, range-checked (rules()) and with its ablation switches checked."""
    from core.config import load_config
    from pretrain.objective import check_switches

    cfg = load_config(config, overrides, rules())
    check_switches(cfg)
    return cfg


def check_inputs(cfg, world_size: int = 1) -> None:
    """What the run reads, checked before any process starts: a UserError names the first problem."""
    from core.images import image_folder

    if cfg.optim.batch_size % world_size:
        raise UserError(f"optim.batch_size={cfg.optim.batch_size} is not divisible by the {world_size} processes; "
                        "give a multiple of the process count")
    images = len(image_folder(cfg.data.train_dir).samples)
    if images < cfg.optim.batch_size:
        raise UserError(f"{images} training images give no full batch of {cfg.optim.batch_size}; lower optim.batch_size")
    m = cfg.monitor
    if m.knn_every and m.knn_train_dir and m.knn_val_dir:
        bank = len(image_folder(m.knn_train_dir).samples)
        image_folder(m.knn_val_dir)
        if m.knn_k > bank:
            warn(f"monitor.knn_k={m.knn_k} is larger than the kNN bank ({bank} images in {m.knn_train_dir}); "
                 f"the vote uses all {bank}")


def main(cfg):
    from pretrain.loop import main as train  # torch is imported only once the arguments are known

    return train(cfg)


def command() -> Command:
    cmd = Command("python -m pretrain.train", __doc__, default_config=CONFIGS / "embedded_cpu.yaml",
                  presets=CONFIGS, flags=FLAGS)
    cmd.add_argument("--check", action="store_true", help="validate the config and the inputs, then exit")
    cmd.add_argument("--world-size", type=int, default=1, metavar="N",
                     help="processes the run will have, for --check's batch divisibility test")
    return cmd


def _run(args) -> None:
    cfg = load(args.config, args.overrides)
    # Under torchrun every worker would repeat the checks (and warnings); pretrain/run.sh ran them once.
    if args.check or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        check_inputs(cfg, args.world_size if args.check else 1)
    if args.check:
        print(f"pretrain: config and inputs OK ({args.config})")
        return
    main(cfg)


def cli(argv=None) -> None:
    args = command().parse(argv)
    run(_run, args)


if __name__ == "__main__":
    cli()
