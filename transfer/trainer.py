"""The detectron2 side of transfer.train_det: trainer, evaluators, logging setup and the trial loop.

Imported only once the command line is parsed (transfer/train_det.py), because detectron2 and torch
take seconds to import and `--help` should not wait for them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import detectron2.utils.comm as comm
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, HookBase
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from core.cli import UserError
from core.files import mark_done, write_text
from core.preemption import PreemptionFlag
from core.progress import say_outputs
from transfer import datasets
from transfer.coco_eval import BackendCOCOEvaluator
from transfer.d2_model import load_cfg, resolve_config_path  # registers Res5ROIHeadsExtraNorm
from transfer.trials import SCRATCH_LABEL, aggregate, format_table, write_json
from transfer.verify import SafeCheckpointer, load_with_report

RESULTS_FILE = "eval_results.json"  # detectron2's own metrics.json holds the training event stream
SUMMARY_FILE = "trials_summary.json"
logger = logging.getLogger("transfer.train_det")


class PreemptionHook(HookBase):
    """SIGTERM/SIGUSR1 during fine-tuning: after the current iteration, save model_XXXXXXX.pth (which
    detectron2's --resume continues from: it holds the iteration, optimizer and scheduler) and exit
    REQUEUE_EXIT (core/preemption.py). All ranks agree on the iteration through an all-reduce."""

    def __init__(self):
        self.flag = PreemptionFlag()

    def before_train(self):
        self.flag.install()

    def after_train(self):
        self.flag.restore()

    def after_step(self):
        device = next(self.trainer.model.parameters()).device
        if not self.flag.should_stop(device):
            return
        name = f"model_{self.trainer.iter:07d}"
        # as detectron2's PeriodicCheckpointer saves (main process only): the trainer state holds the iteration
        self.trainer.checkpointer.save(name, iteration=self.trainer.iter)
        comm.synchronize()
        path = os.path.join(self.trainer.checkpointer.save_dir, name + ".pth")
        self.flag.exit(f"detection: preempted after iteration {self.trainer.iter}; saved {path}, "
                       "continue with --resume")


class Trainer(DefaultTrainer):
    """DefaultTrainer with our evaluators and a checked load of the pretrained weights."""

    coco_backend = "faster"
    coverage = None  # the verify.Coverage of the last fresh load
    scratch = False  # --scratch: detectron2's own init, nothing loaded (the paper's scratch row)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name):
        kind = MetadataCatalog.get(dataset_name).evaluator_type
        if kind == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        if kind == "coco":
            return BackendCOCOEvaluator(dataset_name, os.path.join(cfg.OUTPUT_DIR, "inference"), cls.coco_backend)
        raise UserError(f"no evaluator for dataset {dataset_name} (evaluator_type {kind!r})")

    def build_hooks(self):
        return [*super().build_hooks(), PreemptionHook()]

    def resume_or_load(self, resume=True):
        if resume and self.checkpointer.has_checkpoint():
            return super().resume_or_load(resume=True)  # model, optimizer, scheduler, iteration
        model = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
        if self.scratch:  # the explicit exception to "every backbone tensor loaded": nothing is loaded
            logger.info("%s: no weights loaded, the whole model keeps detectron2's init", SCRATCH_LABEL)
        else:
            self.coverage = load_pretrained(model, self.cfg.MODEL.WEIGHTS)
        self.start_iter = 0


def init_label(scratch: bool) -> str:
    return SCRATCH_LABEL if scratch else "converted weights (MODEL.WEIGHTS)"


def require_weights(weights: str) -> None:
    """Never fall back to detectron2's own init (or a download) when no pretrained file is given."""
    if not weights:
        raise UserError("MODEL.WEIGHTS is empty: convert a checkpoint with transfer/convert_to_d2.py "
                        "and pass MODEL.WEIGHTS file.pkl, or pass --scratch for the paper's scratch row (detectron2's own init)")
    if not os.path.isfile(weights):
        raise UserError(f"MODEL.WEIGHTS {weights} not found")


def load_pretrained(model, weights: str):
    """Load converted weights; any backbone/res5 tensor left at random init is an error, not a warning."""
    require_weights(weights)
    try:
        coverage = load_with_report(model, weights)
    except ValueError as e:
        raise UserError(str(e)) from None
    if not coverage.ok:
        raise UserError(f"{weights}: {coverage.summary()}")
    logger.info("%s; new layers (random init): extra norm + %d head tensors (RPN, box%s predictors)",
                coverage.summary(), len(coverage.heads),
                "/mask" if any("mask_head" in k for k in coverage.heads) else "")
    return coverage


def setup_logging(cfg, args) -> None:
    """detectron2's default_setup (loggers, environment, OUTPUT_DIR/config.yaml, seeding), except that
    stdout gets colour and the full config only when it is a terminal: in a job log (pipeline, Slurm,
    CI) ~400 lines of escape-coloured YAML would bury the first message that matters, and the config
    is saved to OUTPUT_DIR/config.yaml anyway."""
    tty = sys.stdout.isatty()
    rank = comm.get_rank()
    if comm.is_main_process():
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="fvcore", color=tty)
    d2_logger = setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, color=tty)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="transfer", abbrev_name="transfer", color=tty)
    d2_logger.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    d2_logger.info("Environment info:\n%s", collect_env_info())
    d2_logger.info("Command line arguments: %s", args)
    saved = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    if comm.is_main_process():
        write_text(saved, cfg.dump())
    if tty:
        d2_logger.info("Running with full config:\n%s", cfg.dump())
    d2_logger.info("Full config saved to %s", saved)
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)  # each process its own, deterministic seed
    if not args.eval_only:
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK


def setup(args):
    """Config (ours + overrides), NUM_CLASSES from the data, logging, dataset registration."""
    args.config_file = str(resolve_config_path(args.config_file))
    cfg = load_cfg(args.config_file, args.opts)
    if args.scratch and cfg.MODEL.WEIGHTS:
        raise UserError(f"--scratch trains from detectron2's init, yet MODEL.WEIGHTS is {cfg.MODEL.WEIGHTS}; "
                        "drop one of them")
    if not args.resume and not args.scratch:
        require_weights(cfg.MODEL.WEIGHTS)  # fail before any data or model work
    root = Path(args.data_root) if args.data_root else datasets.default_data_root()
    names = [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]
    datasets.check_layout(names, root)  # a missing folder is one line, before any log output
    classes = datasets.class_info(root, names)
    if classes.names is not None and cfg.MODEL.ROI_HEADS.NUM_CLASSES != len(classes.names):
        previous, cfg.MODEL.ROI_HEADS.NUM_CLASSES = cfg.MODEL.ROI_HEADS.NUM_CLASSES, len(classes.names)
    else:
        previous = None
    cfg.SEED = args.seed  # setup_logging seeds everything with it; each trial re-seeds with its own
    cfg.freeze()
    setup_logging(cfg, args)
    if previous is not None:
        logger.info("MODEL.ROI_HEADS.NUM_CLASSES %d -> %d for %s", previous, len(classes.names), classes.source)
    datasets.register_datasets(names, root, classes)
    Trainer.coco_backend = args.coco_eval
    Trainer.scratch = args.scratch
    return cfg


def trial_config(cfg, index: int, seed: int):
    tcfg = cfg.clone()
    tcfg.defrost()
    tcfg.SEED = seed
    tcfg.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, f"trial{index}")
    tcfg.freeze()
    return tcfg


def run_trial(tcfg, resume: bool) -> dict:
    done = Path(tcfg.OUTPUT_DIR) / RESULTS_FILE
    if resume and done.is_file():
        logger.info("trial in %s already finished (%s): skipped", tcfg.OUTPUT_DIR, done.name)
        return json.loads(done.read_text())["results"]
    seed_all_rng(tcfg.SEED + comm.get_rank())  # data order and head init follow the trial's seed
    if comm.is_main_process():
        Path(tcfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
        write_text(Path(tcfg.OUTPUT_DIR) / "config.yaml", tcfg.dump())
    trainer = Trainer(tcfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    results = getattr(trainer, "_last_eval_results", None)
    if not results:
        raise RuntimeError("training finished without evaluation results")
    if comm.is_main_process():
        record = {"seed": tcfg.SEED, "weights": tcfg.MODEL.WEIGHTS, "init": init_label(trainer.scratch),
                  "results": results}
        if trainer.coverage is not None:  # None when resumed from a detectron2 checkpoint
            c = trainer.coverage
            record["weights_check"] = {"loaded": len(c.loaded), "new_layer": c.new_layer,
                                       "not_found": c.not_found, "unused": c.unused}
        write_json(record, done)
    return results


def evaluate_only(cfg, args) -> dict:
    model = Trainer.build_model(cfg)
    SafeCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
    results = Trainer.test(cfg, model)
    if comm.is_main_process():
        write_json({"weights": cfg.MODEL.WEIGHTS, "results": results}, Path(cfg.OUTPUT_DIR) / RESULTS_FILE)
    return results


def main(args) -> dict:
    """One process of detectron2's launch: --eval-only, or --trials fine-tuning runs and their summary."""
    cfg = setup(args)
    if args.eval_only:
        return evaluate_only(cfg, args)
    per_trial = []
    for i in range(args.trials):
        tcfg = trial_config(cfg, i, args.seed + i)
        logger.info("trial %d/%d: seed %d, output %s", i + 1, args.trials, tcfg.SEED, tcfg.OUTPUT_DIR)
        per_trial.append(run_trial(tcfg, args.resume))
    summary = aggregate(per_trial)
    if comm.is_main_process():
        table = format_table(summary)
        print(f"\n{args.trials} trial(s), seeds {args.seed}..{args.seed + args.trials - 1}, "
              f"weights {cfg.MODEL.WEIGHTS}\n{table}")
        write_json({"config": args.config_file, "weights": cfg.MODEL.WEIGHTS, "init": init_label(args.scratch),
                    "seeds": list(range(args.seed, args.seed + args.trials)), "summary": summary,
                    # the input normalisation (0-255 pixels, INPUT.FORMAT order), set from the checkpoint's format
                    "input_normalization": {"pixel_mean": list(cfg.MODEL.PIXEL_MEAN), "pixel_std": list(cfg.MODEL.PIXEL_STD),
                                            "format": cfg.INPUT.FORMAT}},
                   Path(cfg.OUTPUT_DIR) / SUMMARY_FILE)
        mark_done(cfg.OUTPUT_DIR, "detection", summary=SUMMARY_FILE, trials=args.trials)  # the last write
        say_outputs("detection", cfg.OUTPUT_DIR)
    return summary
