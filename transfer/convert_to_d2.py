#!/usr/bin/env python3
"""Convert a ResNet-50 checkpoint to detectron2 C4 weights, then verify the result.

    transfer/convert_to_d2.py IN OUT.pkl [--no-verify] [--detectron2-config FILE] [--seed N]
                              [--format NAME] [--checkpoint-key KEY] [--prefix PREFIX]
    python -m transfer.convert_to_d2 IN OUT.pkl ...        (the same)

IN: a ResNet-50 checkpoint of any format of core/checkpoint_formats.py (SimSiam, MoCo v1-v3, BYOL,
SwAV, SimCLR v1/v2, Barlow Twins, VICReg, DINO, DenseCL, PixPro, solo-learn, lightly, mmselfsup,
timm, torchvision), detected and reported, or named with --format / --checkpoint-key / --prefix; or
the literal `random` (the scratch baseline, seeded by --seed). The format's input normalisation is
printed: detectron2 must use it as MODEL.PIXEL_MEAN/STD (transfer.finetune sets them). Verification
(default on) loads OUT into the detectron2 model of --detectron2-config with that normalisation and
checks key coverage and res4/res5 feature equality (transfer/verify.py); a failed verification
exits 1 after printing why.

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
    p.add_argument("--format", default=None, metavar="NAME",
                   help="read IN as this checkpoint format (default: detected; python -m core.inspect_checkpoint IN)")
    p.add_argument("--checkpoint-key", default=None, metavar="KEY",
                   help="top-level key of IN holding the backbone (e.g. student for DINO; default: the format's)")
    p.add_argument("--prefix", default=None, metavar="PREFIX",
                   help="prefix stripped from the backbone's keys (default: the format's)")
    return p.parse_intermixed_args(argv)


def main(args) -> bool:
    """Convert, print what was done, verify unless told not to; True when OUT is verified (or unchecked)."""
    return convert_and_verify(args)[0]


def convert_and_verify(args) -> tuple[bool, dict]:
    """main's work; also returns convert()'s summary (format, input normalisation) for transfer.finetune."""
    from core.checkpoint_formats import Choice
    from transfer.convert import convert  # torch: only once the arguments are known

    choice = Choice.of(args.format, args.checkpoint_key, args.prefix)
    result = convert(args.source, args.out, seed=args.seed, choice=choice)
    if result["kind"] != "random":
        print(result["detection"].report())
    norm = result["normalization"]
    print(f"converted {result['kind']} checkpoint {args.source} -> {result['out']} "
          f"({result['num_tensors']} tensors; heads, momentum encoders and fc dropped); input normalisation "
          f"{norm.name}: detectron2 needs PIXEL_MEAN {[round(255 * m, 3) for m in norm.mean]} "
          f"PIXEL_STD {[round(255 * s, 3) for s in norm.std]} (RGB, 0-255 pixels)")
    if result["filled_counters"]:
        print(f"note: {len(result['filled_counters'])} BN num_batches_tracked counters absent from the source, written as 0")
    if args.no_verify:
        print("verification skipped (--no-verify)")
        return True, result
    from transfer.d2_model import load_cfg, pixel_options  # detectron2 imports are slow: only when verifying
    from transfer.verify import verify

    input_format = load_cfg(args.detectron2_config).INPUT.FORMAT
    cfg = load_cfg(args.detectron2_config, ["MODEL.DEVICE", "cpu", *pixel_options(norm, input_format)])
    verdict = verify(result["out"], result["tv_state"], cfg, mean=norm.mean, std=norm.std)
    print(verdict.summary())
    return verdict.ok, result


def cli(argv=None) -> None:
    args = parse_args(argv)
    sys.exit(0 if run(main, args) else 1)


if __name__ == "__main__":
    cli()
