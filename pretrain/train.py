"""SimSiam pretraining: one loop for a CPU process, one GPU and DDP under torchrun.

    python -m pretrain.train --config pretrain/configs/imagenet_100ep.yaml data.train_dir=/data/imagenet/train

The loop is pretrain/loop.py; this module is the command line only.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(cfg):
    from pretrain.loop import main as train  # torch is imported only once the arguments are known

    return train(cfg)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(Path(__file__).parent / "configs" / "embedded_cpu.yaml"),
                   help="YAML run config (its _base_ holds every key with its meaning)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. optim.epochs=10")
    return p.parse_args(argv)


def cli(argv=None) -> None:
    from core.config import load_config
    from core.cli import run

    args = parse_args(argv)
    run(lambda: main(load_config(args.config, args.overrides)))


if __name__ == "__main__":
    cli()
