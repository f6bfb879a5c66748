"""The command line every eval entry point shares: core.cli's Command with the eval flags and rules.

    python -m eval.<knn|linear|fast_probe|head_grid|all> --checkpoint PATH|random [--arch ARCH] --train-dir DIR \
        --val-dir DIR [--out-dir DIR] [--config FILE] [dotted.key=value ...]    (in any order)

This module imports no torch: `python -m eval.knn` parses here first and only then imports the
protocol's module (see run_protocol), so `--help` and usage errors answer at once.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from core.cli import OUT_DIR, Command, Flag, run

CONFIGS = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIGS / "defaults.yaml"

FLAGS = (
    Flag("--checkpoint", "checkpoint", 'checkpoint file of any format of core/checkpoint_formats.py, or "random"', "PATH"),
    Flag("--format", "checkpoint_format", "read the checkpoint as this format (empty: detected)", "NAME"),
    Flag("--checkpoint-key", "checkpoint_key", "top-level key holding the backbone (e.g. student for DINO)", "KEY"),
    Flag("--prefix", "checkpoint_prefix", "prefix stripped from the backbone's keys (empty: the format's)", "PREFIX"),
    Flag("--arch", "arch", "backbone of the checkpoint", "ARCH"),
    Flag("--train-dir", "data.train_dir", "ImageFolder root of the labelled training images", "DIR"),
    Flag("--val-dir", "data.val_dir", "ImageFolder root of the validation images", "DIR"),
    OUT_DIR,
    Flag("--device", "device", "auto | cpu | cuda", "DEVICE"),
    Flag("--seed", "seed", "seed of the probe, the shuffles and a random backbone", "N"),
)
# eval.voc07_svm reads a VOC layout, not two ImageFolders: --data-root replaces --train-dir / --val-dir.
VOC_FLAGS = tuple(f for f in FLAGS if f.key not in ("data.train_dir", "data.val_dir")) + (
    Flag("--data-root", "data.voc_root", "folder holding VOCdevkit/VOC2007 (trainval and test)", "DIR"),)


def rules() -> dict:
    """The range of every eval key a protocol cannot use otherwise (PROTOCOL.md sections 3 and 4).

    A function, not a constant: the arch choices come from the model code, which imports torch."""
    from core.bn_stats import BN_STATS
    from core.checkpoint_formats import NAMES
    from core.config import DEVICE, at_least, in_range, int_at_least, one_of, positive
    from core.models import ARCHS

    count, non_negative = int_at_least(1), int_at_least(0)
    return {
        "arch": one_of(*ARCHS), "device": DEVICE, "seed": non_negative, "checkpoint_format": one_of("", *NAMES),
        "data.image_size": count, "data.workers": non_negative, "features.batch_size": count,
        "knn.memory_mb": positive(), "knn.precision": one_of("float32", "bf16", "fp16"),
        "linear.epochs": count, "linear.batch_size": count, "linear.optimizer": one_of("lars", "sgd"),
        "linear.base_lr": positive(), "linear.momentum": in_range(0, 1, low_open=False),
        "linear.weight_decay": at_least(0), "linear.lars_trust": positive(),
        "linear.min_scale": in_range(0, 1, high_open=False), "linear.save_every": count,
        "fast_probe.aug_views": non_negative, "fast_probe.holdout_fraction": in_range(0, 1),
        "fast_probe.max_iter": count,
        "head_grid.epochs": count, "head_grid.batch_size": count, "head_grid.momentum": in_range(0, 1, low_open=False),
        "head_grid.holdout_fraction": in_range(0, 1),
        "random_init.bn_stats": one_of(*BN_STATS), "random_init.bn_images": int_at_least(2),
        "voc07_svm.folds": int_at_least(2), "voc07_svm.positive_weight": positive(), "voc07_svm.max_iter": count,
        "voc07_svm.low_shot": one_of(True, False), "voc07_svm.low_shot_samples": count,
    }


def load(config: str | Path, overrides=()):
    """An eval config, range-checked by rules()."""
    from core.config import load_config

    return load_config(config, overrides, rules())


def command(prog: str, description: str, flags: tuple[Flag, ...] = FLAGS) -> Command:
    return Command(prog, description, default_config=DEFAULT_CONFIG, presets=CONFIGS, flags=flags)


def run_protocol(module: str, description: str, argv=None, flags: tuple[Flag, ...] = FLAGS) -> None:
    """Parse, then import `module` (eval.knn, ...) and run its main(cfg); bad input ends as one
    `error:` line on stderr, exit 2. The import comes after parsing because the protocols import torch."""
    args = command(f"python -m {module}", description, flags).parse(argv)
    run(lambda: importlib.import_module(module).main(load(args.config, args.overrides)))
