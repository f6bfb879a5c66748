"""Convert a ResNet-50 checkpoint to detectron2 C4 weights, then verify the result.

    python -m transfer.convert_to_d2 IN OUT.pkl [--no-verify] [--config FILE] [--seed N]

IN: our or the official SimSiam checkpoint, MoCo v1/v2, a torchvision ResNet-50 state dict, or the
literal `random` (the scratch baseline, seeded by --seed). Verification (default on) loads OUT into
the detectron2 model of --config and checks key coverage and res4/res5 feature equality
(transfer/verify.py); a failed verification exits 1 after printing why.
"""

from __future__ import annotations

import argparse
import sys

# Allow `python transfer/convert_to_d2.py` from the repo root as well as `python -m transfer.convert_to_d2`.
if __package__ in (None, ""):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

from core.cli import run  # noqa: E402
from transfer.convert import convert  # noqa: E402

DEFAULT_CONFIG = "pascal_voc_R_50_C4_24k.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", metavar="IN", help="checkpoint path, or 'random' for a random-init ResNet-50")
    p.add_argument("out", metavar="OUT", help="output .pkl for detectron2 (MODEL.WEIGHTS)")
    p.add_argument("--no-verify", action="store_true", help="skip loading into detectron2 and the feature check")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="detectron2 config whose C4 model is used for verification (a detectron_configs/ name or a path)")
    p.add_argument("--seed", type=int, default=0, help="init seed when IN is 'random'")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> bool:
    result = convert(args.source, args.out, seed=args.seed)
    print(f"converted {result['kind']} checkpoint {args.source} -> {result['out']} "
          f"({result['num_tensors']} tensors; projector/predictor/fc dropped)")
    if result["filled_counters"]:
        print(f"note: {len(result['filled_counters'])} BN num_batches_tracked counters absent from the source, written as 0")
    if args.no_verify:
        print("verification skipped (--no-verify)")
        return True
    from transfer.d2_model import load_cfg  # detectron2 imports are slow: only when verifying
    from transfer.verify import verify

    cfg = load_cfg(args.config, ["MODEL.DEVICE", "cpu"])
    verdict = verify(result["out"], result["tv_state"], cfg)
    print(verdict.summary())
    return verdict.ok


def cli(argv=None) -> None:
    ok = True

    def _run(args):
        nonlocal ok
        ok = main(args)

    run(_run, parse_args(argv))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    cli()
