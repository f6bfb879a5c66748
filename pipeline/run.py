"""The whole chain in one run directory: data -> pretrain -> eval -> voc -> coco -> report.

    python -m pipeline.run [--config pipeline/configs/demo.yaml] [--from STAGE | --only STAGE] [key=value ...]

Each stage runs the same command a user would run by hand (python -m pretrain.train,
python -m eval.<protocol>, transfer/run_voc.sh, ...) in a subprocess, so the chain exercises the
real entry points, and a stage's global state (detectron2's dataset registry, process groups) never
leaks into the next. A finished stage leaves RUN/.stages/<stage>.done and is skipped on a re-run; an
interrupted one resumes from its own checkpoints. RUN/manifest.json records the config, the git
revision, package versions, the sha256 of every checkpoint and a fingerprint of the dataset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from core.checkpoint import epoch_checkpoints
from core.config import Config, dump_config, load_config
from core.preemption import REQUEUE_EXIT, Preempted, preemption_signals, wait_forwarding
from core.cli import UserError, run
from core.runtime import file_sha256, git_revision

REPO = Path(__file__).resolve().parent.parent
STAGES = ("data", "pretrain", "eval", "voc", "coco", "report")
PACKAGES = ("torch", "torchvision", "numpy", "sal-detectron2", "pycocotools", "faster-coco-eval", "scikit-learn")


def pretrain_command(nproc_per_node: int) -> list:
    """The pretraining entry point: plain python for one process, the torchrun wrapper for several."""
    if nproc_per_node == 1:
        return [sys.executable, "-m", "pretrain.train"]
    return ["bash", REPO / "pretrain/run.sh", "--standalone", "--nproc_per_node", nproc_per_node]


def dataset_fingerprint(root: Path) -> dict:
    """sha256 over every file's relative path and size, plus the full bytes of annotation files.

    Cheap on ImageNet (no image is read) yet changes when a file is added, removed, resized or an
    annotation edited."""
    h = hashlib.sha256()
    files = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        h.update(f"{rel}\t{path.stat().st_size}\n".encode())
        if path.suffix in (".xml", ".json", ".txt"):
            h.update(path.read_bytes())
        files += 1
    return {"root": str(root), "files": files, "sha256": h.hexdigest()}


class Pipeline:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        # absolute: the stage commands run from the repo root, the user may not
        self.run_dir = Path(cfg.run_dir).resolve()
        self.data_root = Path(cfg.data_root).resolve()
        self.marks = self.run_dir / ".stages"

    # ------------------------------------------------------------------ bookkeeping
    def done(self, stage: str) -> bool:
        return (self.marks / f"{stage}.done").exists()

    def _mark(self, stage: str, seconds: float) -> None:
        self.marks.mkdir(parents=True, exist_ok=True)
        (self.marks / f"{stage}.done").write_text(json.dumps({"finished": time.time(), "seconds": seconds}))

    def _sh(self, *cmd, env: dict | None = None, stage: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHON": sys.executable, **(env or {})}
        print(f"[pipeline:{stage}] $ {' '.join(str(c) for c in cmd)}", flush=True)
        code = wait_forwarding(subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env))
        # 75: the stage saved its state after SIGTERM/SIGUSR1. Stages without checkpoints of their own
        # (kNN, fast probe, report) just die of the signal; they are redone on the re-run.
        if code == REQUEUE_EXIT or -code in preemption_signals():  # pass the requeue code on
            message = (f"[pipeline:{stage}] preempted; the stage saved its state. Re-run the same command to "
                       f"resume (exit {REQUEUE_EXIT} = requeue)")
            print(message, file=sys.stderr, flush=True)
            raise Preempted(message)
        if code != 0:
            raise UserError(f"stage '{stage}' failed (exit {code}); its output is above. Fix the cause and "
                            f"re-run the same command: finished stages are skipped, this one resumes")

    def write_manifest(self) -> None:
        stages = {s: json.loads((self.marks / f"{s}.done").read_text()) for s in STAGES if self.done(s)}
        checkpoints = sorted(self.run_dir.glob("pretrain/checkpoint_*.pth.tar")) + sorted(self.run_dir.glob("detection/*/*/*.pkl"))
        versions = {}
        for name in PACKAGES:
            try:
                versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                versions[name] = None
        manifest = {
            "config": self.cfg.to_dict(),
            "git_revision": git_revision(),
            "python": sys.version.split()[0],
            "packages": versions,
            "stages": stages,
            "checkpoints": {str(p.relative_to(self.run_dir)): file_sha256(p) for p in checkpoints},
            "datasets": [dataset_fingerprint(self.data_root)] if self.data_root.is_dir() else [],
        }
        tmp = self.run_dir / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2))
        tmp.replace(self.run_dir / "manifest.json")

    # ------------------------------------------------------------------ what the stages share
    def pretrained_checkpoint(self) -> Path:
        found = epoch_checkpoints(self.run_dir / "pretrain")
        if not found:
            raise UserError(f"no pretraining checkpoint in {self.run_dir / 'pretrain'}; run the pretrain stage first")
        return found[-1]

    def backbones(self) -> dict[str, str]:
        """Backbones evaluated side by side: ours, random init, and the supervised file if given."""
        out = {"pretrained": str(self.pretrained_checkpoint()), "random": "random"}
        if self.cfg.supervised_checkpoint:
            out["supervised"] = self.cfg.supervised_checkpoint
        return out

    def arch(self) -> str:
        return load_config(REPO / self.cfg.pretrain.config, self.cfg.pretrain.overrides).arch

    # ------------------------------------------------------------------ stages
    def stage_data(self) -> None:
        if self.cfg.generate_embedded:
            self._sh(sys.executable, "-m", "embedded", "--out", self.data_root, stage="data")
        elif not self.data_root.is_dir():
            raise UserError(f"data_root {self.data_root} does not exist; point data_root at your datasets "
                            "or set generate_embedded=true")

    def stage_pretrain(self) -> None:
        folder = self.data_root / "imagefolder"
        data = [f"data.train_dir={folder / 'train'}", f"monitor.knn_train_dir={folder / 'train'}",
                f"monitor.knn_val_dir={folder / 'val'}"]
        self._sh(*pretrain_command(self.cfg.pretrain.nproc_per_node), "--config", self.cfg.pretrain.config, *data, *self.cfg.pretrain.overrides,
                 f"out_dir={self.run_dir / 'pretrain'}", stage="pretrain")

    def stage_eval(self) -> None:
        folder = self.data_root / "imagefolder"
        arch = self.arch()
        for name, ckpt in self.backbones().items():
            for protocol in self.cfg.eval.protocols:
                self._sh(sys.executable, "-m", f"eval.{protocol}", "--config", self.cfg.eval.config,
                         "--checkpoint", ckpt, "--arch", arch, "--train-dir", folder / "train",
                         "--val-dir", folder / "val", "--out-dir", self.run_dir / "eval" / name,
                         *self.cfg.eval.overrides, stage="eval")

    def _detection(self, job: str) -> None:
        if job not in self.cfg.detection.jobs:
            print(f"[pipeline:{job}] skipped (not in detection.jobs)")
            return
        script = REPO / "transfer" / f"run_{job}.sh"
        env = {"CONFIG": self.cfg.detection[f"{job}_config"], "DATA_ROOT": str(self.data_root),
               "TRIALS": str(self.cfg.detection.trials)}
        for name, ckpt in self.backbones().items():
            if name not in self.cfg.detection.backbones:
                continue
            out = self.run_dir / "detection" / job / name
            resume = ["--resume"] if out.exists() else []  # an earlier, interrupted attempt
            self._sh("bash", script, ckpt, out, *resume, *self.cfg.detection.overrides, env=env, stage=job)

    def stage_voc(self) -> None:
        self._detection("voc")

    def stage_coco(self) -> None:
        self._detection("coco")

    def stage_report(self) -> None:
        from pipeline.report import write_report  # matplotlib only when the report is made

        protocol = {"dataset": self.cfg.dataset_name, "voc_config": self.cfg.detection.voc_config,
                    "coco_config": self.cfg.detection.coco_config, "trials": self.cfg.detection.trials}
        path = write_report(self.run_dir, protocol)
        print(f"[pipeline:report] {path}")

    # ------------------------------------------------------------------ driver
    def run(self, start: str | None = None, only: str | None = None) -> None:
        for name in (start, only):
            if name is not None and name not in STAGES:
                raise UserError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(self.cfg, self.run_dir / "pipeline_config.yaml")
        chosen = [only] if only else list(STAGES[STAGES.index(start):]) if start else list(STAGES)
        for stage in STAGES:
            forced = stage in chosen and (only or start)
            if stage not in chosen or (self.done(stage) and not forced):
                if self.done(stage):
                    print(f"[pipeline:{stage}] done earlier, skipped")
                continue
            (self.marks / f"{stage}.done").unlink(missing_ok=True)
            begin = time.perf_counter()
            getattr(self, f"stage_{stage}")()
            self._mark(stage, time.perf_counter() - begin)
            self.write_manifest()
            print(f"[pipeline:{stage}] finished in {time.perf_counter() - begin:.0f} s", flush=True)


def main(cfg: Config, start: str | None = None, only: str | None = None) -> Path:
    Pipeline(cfg).run(start, only)
    return Path(cfg.run_dir)


def cli(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "pipeline/configs/demo.yaml"))
    group = p.add_mutually_exclusive_group()
    group.add_argument("--from", dest="start", help=f"re-run this stage and every later one ({', '.join(STAGES)})")
    group.add_argument("--only", help="run just this stage")
    p.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. detection.trials=5")
    args = p.parse_args(argv)
    run(lambda: main(load_config(args.config, args.overrides), args.start, args.only))


if __name__ == "__main__":
    cli()
