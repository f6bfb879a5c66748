"""The command line every eval entry point shares: the common flags map onto config keys.

    python -m eval.<knn|linear|fast_probe|all> --checkpoint PATH|random --arch resnet50 \
        --train-dir DIR --val-dir DIR --out-dir DIR [--config YAML] [dotted.key=value ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.config import Config, load_config
from core.cli import run

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "defaults.yaml"

# flag -> config key; a flag left out keeps the config's value.
_FLAGS = {"checkpoint": "checkpoint", "arch": "arch", "train_dir": "data.train_dir", "val_dir": "data.val_dir",
          "out_dir": "out_dir", "device": "device", "seed": "seed"}


def parse_args(description: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (eval/configs/defaults.yaml has every key)")
    p.add_argument("--checkpoint", help='checkpoint file (SimSiam, MoCo, torchvision) or "random"')
    p.add_argument("--arch", help="resnet50 | resnet18 | resnet18_cifar")
    p.add_argument("--train-dir", help="ImageFolder root of the labelled training images")
    p.add_argument("--val-dir", help="ImageFolder root of the validation images")
    p.add_argument("--out-dir", help="where results and the probe's checkpoint go")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int)
    p.add_argument("overrides", nargs="*", help="dotted.key=value config overrides, e.g. linear.epochs=10")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    # Flags are applied as overrides after the positional ones, so an explicit flag wins. Values are
    # JSON-quoted (valid YAML) so that a path such as "2024" or "a: b" stays a string.
    flags = [f"{key}={json.dumps(getattr(args, name))}" for name, key in _FLAGS.items()
             if getattr(args, name) is not None]
    return load_config(args.config, list(args.overrides) + flags)


def cli(main, description: str, argv=None) -> None:
    """Parse, build the config, run main(cfg); bad input ends as one line on stderr (exit 2)."""
    args = parse_args(description, argv)
    run(lambda: main(build_config(args)))
