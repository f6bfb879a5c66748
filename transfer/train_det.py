"""Fine-tune and evaluate detectron2 R50-C4 (Faster R-CNN on VOC, Mask R-CNN on COCO), MoCo recipe.

    python -m transfer.train_det --config-file pascal_voc_R_50_C4_24k.yaml --data-root DATA \\
        [--num-gpus 8] [--trials 5] [--seed 0] [--resume] [--eval-only] \\
        MODEL.WEIGHTS converted.pkl OUTPUT_DIR out/voc

In the style of detectron2's tools/train_net.py (`setup()` + `main()` under `launch`), plus:
  * the ExtraNorm ROI head and the datasets (from --data-root) are registered here;
  * fresh runs load MODEL.WEIGHTS (a transfer/convert_to_d2.py .pkl) and refuse to train unless every
    backbone/res5 tensor was loaded (transfer/verify.py `load_with_report`);
  * --trials N trains N seeds into OUTPUT_DIR/trial{i}, then prints and writes mean +- sample std
    of AP/AP50/AP75 (box, and mask for COCO) to OUTPUT_DIR/trials_summary.json;
    per-trial metrics go to trial{i}/eval_results.json (which --resume also uses to skip finished trials).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python transfer/train_det.py` as well as `python -m transfer.train_det`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import detectron2.utils.comm as comm  # noqa: E402
import torch  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.engine import DefaultTrainer, HookBase, default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.evaluation import PascalVOCDetectionEvaluator  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from core.preemption import REQUEUE_EXIT, PreemptionFlag  # noqa: E402
from core.cli import UserError, run  # noqa: E402
from transfer import datasets  # noqa: E402
from transfer.coco_eval import BACKENDS, BackendCOCOEvaluator  # noqa: E402
from transfer.d2_model import load_cfg, resolve_config_path  # noqa: E402  (registers Res5ROIHeadsExtraNorm)
from transfer.trials import aggregate, format_table, write_json  # noqa: E402
from transfer.verify import SafeCheckpointer, load_with_report  # noqa: E402

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
        self.coverage = load_pretrained(model, self.cfg.MODEL.WEIGHTS)
        self.start_iter = 0


def require_weights(weights: str) -> None:
    """Never fall back to detectron2's own init (or a download) when no pretrained file is given."""
    if not weights:
        raise UserError("MODEL.WEIGHTS is empty: convert a checkpoint with transfer/convert_to_d2.py "
                        "(IN = 'random' for the scratch baseline) and pass MODEL.WEIGHTS file.pkl")
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


def parse_args(argv=None) -> argparse.Namespace:
    parser = default_argument_parser(epilog=__doc__)
    parser.add_argument("--data-root", default=None,
                        help="folder holding VOCdevkit/ and/or coco/ (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--trials", type=int, default=1, help="number of fine-tuning runs with seeds seed..seed+N-1")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first trial")
    parser.add_argument("--coco-eval", choices=BACKENDS, default="faster",
                        help="COCO scoring backend (same AP; pycocotools is the slow reference)")
    args = parser.parse_args(argv)
    if not args.config_file:
        parser.error("--config-file is required (a file in detectron_configs/ or a path)")
    if args.trials < 1:
        parser.error("--trials must be >= 1")
    if args.num_gpus * args.num_machines > 1 and not torch.cuda.is_available():
        # detectron2 wraps the model in DDP with device_ids=[local rank], which CPU modules refuse
        parser.error("--num-gpus/--num-machines start one process per GPU, and no GPU is visible: "
                     "on CPU run one process (--num-gpus 1)")
    return args


def setup(args):
    """Config (ours + overrides), NUM_CLASSES from the data, logging, dataset registration."""
    args.config_file = str(resolve_config_path(args.config_file))  # default_setup re-reads it
    cfg = load_cfg(args.config_file, args.opts)
    if not args.resume:
        require_weights(cfg.MODEL.WEIGHTS)  # fail before any data or model work
    root = Path(args.data_root) if args.data_root else datasets.default_data_root()
    names = [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]
    classes = datasets.class_info(root, names)
    if classes.names is not None and cfg.MODEL.ROI_HEADS.NUM_CLASSES != len(classes.names):
        previous, cfg.MODEL.ROI_HEADS.NUM_CLASSES = cfg.MODEL.ROI_HEADS.NUM_CLASSES, len(classes.names)
    else:
        previous = None
    cfg.SEED = args.seed  # default_setup seeds everything with it; each trial re-seeds with its own
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="transfer", abbrev_name="transfer")
    if previous is not None:
        logger.info("MODEL.ROI_HEADS.NUM_CLASSES %d -> %d for %s", previous, len(classes.names), classes.source)
    datasets.register_datasets(names, root, classes)
    Trainer.coco_backend = args.coco_eval
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
        (Path(tcfg.OUTPUT_DIR) / "config.yaml").write_text(tcfg.dump())
    trainer = Trainer(tcfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    results = getattr(trainer, "_last_eval_results", None)
    if not results:
        raise RuntimeError("training finished without evaluation results")
    if comm.is_main_process():
        record = {"seed": tcfg.SEED, "weights": tcfg.MODEL.WEIGHTS, "results": results}
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
        write_json({"config": args.config_file, "weights": cfg.MODEL.WEIGHTS,
                    "seeds": list(range(args.seed, args.seed + args.trials)), "summary": summary},
                   Path(cfg.OUTPUT_DIR) / SUMMARY_FILE)
    return summary


def cli(argv=None) -> None:
    args = parse_args(argv)
    try:
        run(lambda a: launch(main, a.num_gpus, num_machines=a.num_machines, machine_rank=a.machine_rank,
                                 dist_url=a.dist_url, args=(a,)), args)
    except torch.multiprocessing.ProcessExitedException as e:  # multi-GPU: launch's worker processes
        if e.exit_code == REQUEUE_EXIT:  # preempted workers saved; pass the requeue code on
            sys.exit(REQUEUE_EXIT)
        raise


if __name__ == "__main__":
    cli()
