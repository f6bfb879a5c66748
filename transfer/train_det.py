"""Fine-tune and evaluate detectron2 R50-C4 (Faster R-CNN on VOC, Mask R-CNN on COCO), MoCo recipe.

    python -m transfer.train_det --config-file pascal_voc_R_50_C4_24k.yaml --data-root DATA \\
        [--num-gpus 8] [--trials 5] [--seed 0] [--coco-eval faster] [--resume] [--eval-only] \\
        MODEL.WEIGHTS converted.pkl OUTPUT_DIR out/voc [KEY VALUE ...]

The trainer under transfer.finetune (transfer/run_voc.sh, run_coco.sh), which users normally call.
Its command line is detectron2's tools/train_net.py form on purpose: the trailing `KEY VALUE` pairs
are detectron2's own config overrides (the output folder is detectron2's OUTPUT_DIR, the weights
MODEL.WEIGHTS), not this project's `key=value` run-config overrides; transfer.finetune builds them
from out_dir, checkpoint and its d2_opts list. Relative paths are taken from the working directory.
Beyond train_net.py:
  * the ExtraNorm ROI head and the datasets (from --data-root) are registered here, and the data
    layout is checked before anything is logged;
  * fresh runs load MODEL.WEIGHTS (a transfer/convert_to_d2.py .pkl) and refuse to train unless every
    backbone/res5 tensor was loaded (transfer/verify.py `load_with_report`);
  * --trials N trains N seeds into OUTPUT_DIR/trial{i}, then prints and writes mean +- sample std
    of AP/AP50/AP75 (box, and mask for COCO) to OUTPUT_DIR/trials_summary.json;
    per-trial metrics go to trial{i}/eval_results.json (which --resume also uses to skip finished trials);
  * no colour and no config dump on a stdout that is not a terminal (OUTPUT_DIR/config.yaml has it).
A user mistake is one `error:` line and exit 2. This module parses before importing detectron2 or
torch, so --help answers at once; the trainer itself is transfer/trainer.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python transfer/train_det.py` as well as `python -m transfer.train_det`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli import UserError, plain_parser, run  # noqa: E402

def parse_args(argv=None):
    """detectron2's default_argument_parser, rebuilt without importing detectron2, plus our options."""
    p = plain_parser("python -m transfer.train_det", __doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True, metavar="FILE",
                   help="detectron2 config: a file name in detectron_configs/ or a path")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="folder holding VOCdevkit/ and/or coco/ (default: $DETECTRON2_DATASETS or ./datasets)")
    p.add_argument("--trials", type=int, default=1, help="fine-tuning runs with seeds seed..seed+N-1 (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first trial (default 0)")
    p.add_argument("--coco-eval", default="faster", metavar="BACKEND",
                   help="COCO scoring backend: faster (default) or pycocotools, the slow reference; same AP")
    p.add_argument("--resume", action="store_true",
                   help="continue in OUTPUT_DIR: finished trials are skipped, the running one resumes from its last checkpoint")
    p.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS without training")
    p.add_argument("--scratch", action="store_true",
                   help="train from detectron2's own init with MODEL.WEIGHTS empty: the paper's scratch row "
                        "(PROTOCOL.md section 9); the only case that skips the check that every backbone tensor was loaded")
    p.add_argument("--num-gpus", type=int, default=1, help="processes (one per GPU) per machine (default 1)")
    p.add_argument("--num-machines", type=int, default=1, help="total number of machines (default 1)")
    p.add_argument("--machine-rank", type=int, default=0, help="the rank of this machine (default 0)")
    # detectron2's choice: a port fixed per user, so an orphaned job shows up as a port in use
    port = 2**15 + 2**14 + hash(os.getuid() if sys.platform != "win32" else 1) % 2**14
    p.add_argument("--dist-url", default=f"tcp://127.0.0.1:{port}",
                   help="initialisation URL of torch.distributed (detectron2's launch)")
    p.add_argument("opts", nargs="...", metavar="KEY VALUE",
                   help="detectron2 config overrides as space-separated pairs, e.g. OUTPUT_DIR out SOLVER.BASE_LR 0.01")
    args = p.parse_args(argv)
    for name in ("trials", "num_gpus", "num_machines"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.seed < 0:
        p.error("--seed must be >= 0")
    return args


def check_coco_eval(backend: str) -> None:
    """The COCO scoring backend is one transfer/coco_eval.py knows (checked after parsing: it imports detectron2)."""
    from transfer.coco_eval import BACKENDS

    if backend not in BACKENDS:
        raise UserError(f"unknown COCO eval backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def check_processes(processes: int) -> None:
    """Several processes need a GPU each: detectron2 wraps the model in DDP with device_ids=[local
    rank], which a CPU module refuses."""
    import torch

    if processes > 1 and not torch.cuda.is_available():
        raise UserError(f"{processes} processes (one per GPU) requested, and no GPU is visible: "
                        "on CPU run one process (num_gpus 1)")


def main(args) -> dict:
    """One process: set up, then --eval-only or the trials (transfer/trainer.py)."""
    from transfer.trainer import main as train

    return train(args)


def _launch(args) -> None:
    check_coco_eval(args.coco_eval)
    check_processes(args.num_gpus * args.num_machines)
    import torch
    from detectron2.engine import launch

    from core.preemption import REQUEUE_EXIT

    try:
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except torch.multiprocessing.ProcessExitedException as e:  # multi-GPU: launch's worker processes
        if e.exit_code == REQUEUE_EXIT:  # preempted workers saved; pass the requeue code on
            sys.exit(REQUEUE_EXIT)
        raise


def cli(argv=None) -> None:
    run(_launch, parse_args(argv))


if __name__ == "__main__":
    cli()
