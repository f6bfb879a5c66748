"""Say what a checkpoint holds and how every stage would read it, without running a model.

    python -m core.inspect_checkpoint CKPT [--json] [--format NAME] [--checkpoint-key KEY] [--prefix P] [--arch A]

Prints the detection report: the format (core/checkpoint_formats.py), the container key read, the
prefix stripped or the mapping used, the tensors kept and dropped (heads, momentum encoders,
queues) with counts and examples, and the input normalisation the weights expect. With --arch the
backbone is also checked strictly against that architecture (key set, shapes, finite values), as
eval and transfer do. The flags are the escape hatches every stage takes. A file that does not fit
is one `error:` line and exit 2. Arguments are parsed before torch is imported (fast --help).
"""

from __future__ import annotations

import json
import sys

from core.cli import plain_parser, run
from core.checkpoint_formats import NAMES


def parse_args(argv=None):
    p = plain_parser("python -m core.inspect_checkpoint", __doc__.split("\n\n")[0])
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file (.pth, .pth.tar, .ckpt)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--format", default=None, metavar="NAME", help=f"read it as this format: {', '.join(NAMES)}")
    p.add_argument("--checkpoint-key", default=None, metavar="KEY",
                   help="top-level key holding the backbone's tensors (e.g. student for DINO)")
    p.add_argument("--prefix", default=None, metavar="PREFIX", help="prefix to strip from the backbone's keys")
    p.add_argument("--arch", default=None, metavar="ARCH", help="also check the backbone strictly against this arch")
    return p.parse_intermixed_args(argv)


def main(args) -> dict:
    from core.checkpoint import check_backbone_state, detect_backbone, read_checkpoint
    from core.checkpoint_formats import Choice
    from core.errors import CheckpointError

    choice = Choice.of(args.format, args.checkpoint_key, args.prefix)
    detection = detect_backbone(read_checkpoint(args.checkpoint), args.checkpoint, choice)
    report = detection.to_dict()
    if args.arch:
        if detection.archs and args.arch not in detection.archs:
            raise CheckpointError(f"{args.checkpoint}: {detection.format} checkpoints hold "
                                  f"{' or '.join(detection.archs)} backbones, not {args.arch}")
        check_backbone_state(detection.state, args.arch, args.checkpoint)
        report["arch_check"] = {"arch": args.arch, "ok": True}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(detection.report())
        if args.arch:
            print(f"  strict check against {args.arch}: OK (every tensor present, shapes match, all finite)")
    return report


def cli(argv=None) -> None:
    args = parse_args(argv)
    run(main, args)
    sys.exit(0)


if __name__ == "__main__":
    cli()
