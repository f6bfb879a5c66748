#!/usr/bin/env python3
"""Convert a ResNet-50 checkpoint to detectron2 C4 weights, then verify the result.

    transfer/convert_to_d2.py IN OUT.pkl [--no-verify] [--detectron2-config FILE] [--seed N]
    python -m transfer.convert_to_d2 IN OUT.pkl ...        (the same)

IN: our or the official SimSiam checkpoint, MoCo v1/v2, a torchvision ResNet-50 state dict, or the
literal `random` (the scratch baseline, seeded by --seed). Verification (default on) loads OUT into
the detectron2 model of --detectron2-config and checks key coverage and res4/res5 feature equality
(transfer/verify.py); a failed verification exits 1 after printing why.

Positional IN OUT is MoCo's converter form and the documented exception to the project's
`--config FILE` / `key=value` command line: a conversion has no run config. Options may come in any
order; relative paths are taken from the working directory. A user mistake (missing or unreadable
checkpoint, not a ResNet-50, OUT not .pkl) is one `error:` line and exit 2. Arguments are parsed
before torch and detectron2 are imported, so --help answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Allow `transfer/convert_to_d2.py` (from any folder) as well as `python -m transfer.convert_to_d2`.
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli import plain_parser, run  # noqa: E402

DEFAULT_D2_CONFIG = "pascal_voc_R_50_C4_24k.yaml"


def parse_args(argv=None):
    p = plain_parser("transfer/convert_to_d2.py", __doc__.split("\n\n")[0])
    p.add_argument("source", metavar="IN", help="checkpoint path, or 'random' for a random-init ResNet-50")
    p.add_argument("out", metavar="OUT", help="output .pkl for detectron2 (MODEL.WEIGHTS)")
    p.add_argument("--no-verify", action="store_true", help="skip loading into detectron2 and the feature check")
    p.add_argument("--detectron2-config", default=DEFAULT_D2_CONFIG, metavar="FILE",
                   help="detectron2 config whose C4 model verifies OUT: a detectron_configs/ name or a path "
                        f"(default: {DEFAULT_D2_CONFIG})")
    p.add_argument("--seed", type=int, default=0, help="init seed when IN is 'random' (default 0)")
    return p.parse_intermixed_args(argv)


def main(args) -> bool:
    """Convert, print what was done, verify unless told not to; True when OUT is verified (or unchecked)."""
    from transfer.convert import convert  # torch: only once the arguments are known

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

    cfg = load_cfg(args.detectron2_config, ["MODEL.DEVICE", "cpu"])
    verdict = verify(result["out"], result["tv_state"], cfg)
    print(verdict.summary())
    return verdict.ok


def cli(argv=None) -> None:
    args = parse_args(argv)
    sys.exit(0 if run(main, args) else 1)


if __name__ == "__main__":
    cli()
