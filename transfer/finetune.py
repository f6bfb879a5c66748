"""One detection job: convert a checkpoint to detectron2, then fine-tune and evaluate it (VOC or COCO).

    python -m transfer.finetune [--config voc.yaml] --checkpoint CKPT --out-dir OUT [--data-root DIR] [key=value ...]
    transfer/run_voc.sh  --checkpoint CKPT --out-dir OUT [key=value ...]     (--config voc.yaml)
    transfer/run_coco.sh --checkpoint CKPT --out-dir OUT [key=value ...]     (--config coco_1x.yaml)

Every key and its meaning: transfer/configs/defaults.yaml; presets beside it (voc.yaml: VOC07+12,
24k iterations, 5 trials as the paper; voc07.yaml; coco_1x.yaml; coco_2x.yaml; tiny_voc.yaml and
tiny_coco.yaml: CPU smoke runs on the embedded data). Flags, `key=value` overrides and `--config` come
in any order; relative paths are taken from the working directory. detectron2's own `KEY VALUE`
config overrides go in the d2_opts list (`d2_opts='[SOLVER.BASE_LR, 0.01]'`): that form belongs to
detectron2's config, inside transfer.train_det, and nowhere else.

1. Check, before anything slow: the values, the checkpoint file, the detectron2 config with d2_opts,
   the data layout under data_root and its class list, a GPU per process. A mistake is one `error:`
   line and exit 2.
2. Convert and verify (transfer/convert_to_d2.py) into OUT/pretrained_d2.pkl; a failed verification
   exits 1. checkpoint=scratch converts nothing: the paper's scratch row is detectron2's own init
   fine-tuned with the same recipe (MoCo's baseline, PROTOCOL.md section 9); checkpoint=random is a
   converted random torchvision network, another thing ("random torchvision init"). The resolved config goes to OUT/finetune_config.yaml.
3. Become transfer.train_det (exec, so a preemption signal sent to this process reaches the trainer,
   which saves and exits 75) with MODEL.WEIGHTS OUT/pretrained_d2.pkl OUTPUT_DIR OUT and d2_opts:
   OUT/trial{i}/ (detectron2's files, eval_results.json), OUT/trials_summary.json, OUT/log.txt.
   With resume=true, finished trials are skipped and the running one resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

from core.cli import OUT_DIR, Command, Flag, UserError, run
from core.config import dump_config, int_at_least, load_config

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
WEIGHTS_NAME = "pretrained_d2.pkl"
CONFIG_NAME = "finetune_config.yaml"
# detectron2 keys this entry sets itself, and the run-config key each comes from
RESERVED_D2_KEYS = {"MODEL.WEIGHTS": "checkpoint (converted)", "OUTPUT_DIR": "out_dir",
                    "MODEL.PIXEL_MEAN": "the checkpoint format's input normalisation (checkpoint_format)",
                    "MODEL.PIXEL_STD": "the checkpoint format's input normalisation (checkpoint_format)"}
RANDOM, SCRATCH = "random", "scratch"
RULES = {"trials": int_at_least(1), "seed": int_at_least(0), "num_gpus": int_at_least(0)}

COMMAND = Command(
    "python -m transfer.finetune", __doc__.split("\n\n")[0], default_config="voc.yaml", presets=CONFIG_DIR,
    flags=(Flag("--checkpoint", "checkpoint", "ResNet-50 checkpoint of any format of core/checkpoint_formats.py, "
                "'scratch' (detectron2's init) or 'random' (a converted random torchvision init)", "CKPT"),
           Flag("--format", "checkpoint_format", "read the checkpoint as this format (empty: detected)", "NAME"),
           Flag("--checkpoint-key", "checkpoint_key", "top-level key holding the backbone (e.g. student for DINO)", "KEY"),
           Flag("--prefix", "checkpoint_prefix", "prefix stripped from the backbone's keys (empty: the format's)", "PREFIX"),
           OUT_DIR,
           Flag("--data-root", "data_root", "folder holding VOCdevkit/ and/or coco/", "DIR")),
    epilog=__doc__.split("\n\n", 1)[1])


def d2_options(values) -> list[str]:
    """d2_opts as detectron2 takes them: an even list of strings (YAML may have read 8 or 0.01 as numbers)."""
    if not isinstance(values, list) or len(values) % 2:
        raise UserError(f"d2_opts must be a flat list [KEY, VALUE, KEY, VALUE, ...], got {values!r}")
    opts = [str(v) for v in values]
    for key in opts[0::2]:
        if key in RESERVED_D2_KEYS:
            raise UserError(f"d2_opts sets {key}, which comes from {RESERVED_D2_KEYS[key]}; remove it from d2_opts")
    return opts


def check_values(cfg) -> None:
    if not cfg.checkpoint:
        raise UserError("no checkpoint given: pass --checkpoint FILE (a ResNet-50 checkpoint), 'scratch' "
                        "(detectron2's own init, the paper's scratch row) or 'random' (a converted random torchvision init)")
    if cfg.checkpoint not in (RANDOM, SCRATCH) and not Path(cfg.checkpoint).is_file():
        raise UserError(f"checkpoint not found: {cfg.checkpoint} (relative paths are taken from the current "
                        f"directory {Path.cwd()}); give an existing file, 'random' or 'scratch'")
    if not cfg.out_dir:
        raise UserError("out_dir is empty: pass --out-dir DIR")
    from core.checkpoint_formats import NAMES

    if cfg.checkpoint_format and cfg.checkpoint_format not in NAMES:
        raise UserError(f"checkpoint_format must be empty (detected) or one of {', '.join(NAMES)}, "
                        f"got {cfg.checkpoint_format!r}")


def absolute(path) -> Path:
    """From the working directory, `..` folded, symlinks kept: what the trainer and the saved config show."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def process_count(num_gpus: int) -> int:
    """num_gpus 0: every visible GPU, else one CPU process."""
    if num_gpus:
        return num_gpus
    import torch

    return max(torch.cuda.device_count(), 1)


def prepare(cfg) -> list[str]:
    """Steps 1 and 2; returns the transfer.train_det command line of step 3."""
    from transfer.train_det import check_coco_eval, check_processes

    check_values(cfg)
    opts = d2_options(cfg.d2_opts)
    check_coco_eval(cfg.coco_eval)  # imports detectron2: after the checks that need nothing
    processes = process_count(cfg.num_gpus)
    check_processes(processes)

    from transfer import datasets
    from transfer.d2_model import load_cfg, resolve_config_path

    d2_config = absolute(resolve_config_path(cfg.detectron2_config))
    logging.getLogger("transfer.d2_model").disabled = True  # its CPU-fallback notice is for the trainer's log
    d2_cfg = load_cfg(d2_config, opts)
    root = absolute(cfg.data_root or datasets.default_data_root())
    names = [*d2_cfg.DATASETS.TRAIN, *d2_cfg.DATASETS.TEST]
    datasets.check_layout(names, root)
    datasets.class_info(root, names)

    from transfer import convert_to_d2

    out = absolute(cfg.out_dir)
    checkpoint = cfg.checkpoint if cfg.checkpoint in (RANDOM, SCRATCH) else str(absolute(cfg.checkpoint))
    out.mkdir(parents=True, exist_ok=True)
    from transfer.trials import RANDOM_LABEL, SCRATCH_LABEL

    init = {SCRATCH: SCRATCH_LABEL, RANDOM: RANDOM_LABEL}.get(checkpoint, "checkpoint file (converted)")
    resolved = {**cfg.to_dict(), "checkpoint": checkpoint, "init": init, "out_dir": str(out), "data_root": str(root),
                "detectron2_config": str(d2_config), "num_gpus": processes, "d2_opts": opts}
    dump_config(resolved, out / CONFIG_NAME)
    trainer = [sys.executable, "-m", "transfer.train_det", "--config-file", str(d2_config), "--data-root", str(root),
               "--num-gpus", str(processes), "--trials", str(cfg.trials), "--seed", str(cfg.seed),
               "--coco-eval", cfg.coco_eval, *(["--resume"] if cfg.resume else [])]
    if cfg.checkpoint == SCRATCH:
        # MoCo's scratch row (PROTOCOL.md section 9): detectron2's own init, nothing converted; the
        # trainer's check that every backbone tensor was loaded is bypassed for this case only (--scratch).
        return [*trainer, "--scratch", "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(out), *opts]
    weights = out / WEIGHTS_NAME
    hatches = [arg for flag, value in (("--format", cfg.checkpoint_format), ("--checkpoint-key", cfg.checkpoint_key),
                                       ("--prefix", cfg.checkpoint_prefix)) if value for arg in (flag, str(value))]
    ok, result = convert_to_d2.convert_and_verify(convert_to_d2.parse_args(
        [checkpoint, str(weights), "--seed", str(cfg.seed), "--detectron2-config", str(d2_config), *hatches]))
    if not ok:
        print(f"stopped: {weights} failed verification (above); not fine-tuning", file=sys.stderr)
        sys.exit(1)
    # the detector sees pixels normalised as the checkpoint's format expects (SimCLR: [0, 1], no mean/std)
    from transfer.d2_model import pixel_options

    pixels = pixel_options(result["normalization"], d2_cfg.INPUT.FORMAT)
    dump_config({**resolved, "checkpoint_format_detected": result["kind"],
                 "input_normalization": {**result["normalization"].to_dict(), "d2_opts": pixels}}, out / CONFIG_NAME)
    return [*trainer, "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(out), *pixels, *opts]


def main(cfg) -> None:
    """Check, convert, then replace this process by the trainer (never returns)."""
    command = prepare(cfg)
    # The trainer runs from the caller's directory: the repo reaches it through PYTHONPATH, not a cd.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    print("$ " + shlex.join(command), flush=True)
    sys.stderr.flush()
    os.execve(sys.executable, command, env)


def cli(argv=None) -> None:
    def parse_and_run():
        ns = COMMAND.parse(argv)  # a missing --config file is a UserError too
        main(load_config(ns.config, ns.overrides, RULES))

    run(parse_and_run)


if __name__ == "__main__":
    cli()
