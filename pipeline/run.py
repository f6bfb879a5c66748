"""The whole chain in one run directory: data -> pretrain -> eval -> voc -> coco -> report.

    python -m pipeline.run [--config FILE] [--out-dir RUN] [--from STAGE | --only STAGE] [key=value ...]
    python -m pipeline.run --config paper_200ep.yaml --out-dir runs/paper data_root=/data

Before any stage runs, every input of every stage about to run is checked (the data, VOC/COCO for
the detection jobs, the stage configs, supervised_checkpoint): a mistake is one `error:` line and
exit 2, not a failure hours later. Relative paths mean the caller's folder: the stages run in the
caller's working directory with absolute paths; pretrain.config and eval.config are a path or a
preset name of pretrain/configs/ and eval/configs/, as their --config.

Outside checkpoints (config key `checkpoints`: DINO, MoCo, SimCLR, ... files of any format of
core/checkpoint_formats.py) go through eval and detection beside our own and the baselines, each into
RUN/eval/<name>/ and RUN/detection/<job>/<name>/; with pretrain.enabled=false they are evaluated
without any pretraining (no `pretrained` row). Their files and formats are checked up front too.

Each stage runs the same command a user would run by hand (python -m pretrain.train,
python -m eval.<protocol>, transfer/run_voc.sh, ...) in a subprocess, so the chain exercises the
real entry points, and a stage's global state (detectron2's dataset registry, process groups) never
leaks into the next. A finished stage is recorded in RUN/done.json (core.files.mark_done) and is
skipped on a re-run; an interrupted one resumes from its own checkpoints. RUN/manifest.json records
the config, the git revision, package versions, the sha256 of every checkpoint and a fingerprint of
the dataset.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import yaml

from core.config import Config, ConfigError, Rule, dump_config, int_at_least, load_config
from core.files import clear_done, done_info, is_done, mark_done, write_json
from core.progress import say_outputs
from core.cli import OUT_DIR, Command, UserError, resolve_config, run

REPO = Path(__file__).resolve().parent.parent
STAGES = ("data", "pretrain", "eval", "voc", "coco", "report")
CONFIGS = Path(__file__).parent / "configs"


def _subset_of(*allowed: str) -> Rule:
    return Rule(f"a list drawn from {', '.join(allowed)}",
                lambda v: isinstance(v, list) and all(item in allowed for item in v))


RULES = {  # the keys a run cannot use otherwise; the stage configs have their own rules
    "pretrain.nproc_per_node": int_at_least(1),
    "eval.protocols": _subset_of("knn", "fast_probe", "head_grid", "linear", "all"),
    "detection.jobs": _subset_of("voc", "coco"),
    "detection.backbones": _subset_of("pretrained", "scratch", "random", "supervised"),
    "detection.trials": int_at_least(1),
    "pretrain.enabled": Rule("true or false", lambda v: isinstance(v, bool)),
    "checkpoints": Rule("a mapping name -> {path: FILE, arch, format, checkpoint_key, prefix}",
                        lambda v: v is None or isinstance(v, dict)),
}
# The rows the pipeline makes itself: an outside checkpoint may not take one of these folder names.
BUILTIN_ROWS = ("pretrained", "random", "scratch", "supervised")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # one folder name, no path separator or '..'
ENTRY_KEYS = {"path": "", "arch": "resnet50", "format": "", "checkpoint_key": "", "prefix": ""}  # defaults
# an entry's format keys -> the flags of eval.<protocol> and transfer.finetune that set them
CHOICE_FLAGS = (("format", "--format"), ("checkpoint_key", "--checkpoint-key"), ("prefix", "--prefix"))
PACKAGES = ("torch", "torchvision", "numpy", "sal-detectron2", "pycocotools", "faster-coco-eval", "scikit-learn")


def pretrain_command(nproc_per_node: int) -> list:
    """The pretraining entry point: plain python for one process, the torchrun wrapper for several."""
    if nproc_per_node == 1:
        return [sys.executable, "-m", "pretrain.train"]
    return ["bash", REPO / "pretrain/run.sh", "--standalone", "--nproc_per_node", nproc_per_node]


def outside_checkpoints(value) -> dict[str, dict]:
    """The config's `checkpoints` mapping checked and completed: name -> {path (absolute), arch, format,
    checkpoint_key, prefix}. One UserError for a bad name or entry."""
    out = {}
    for name, entry in (value or {}).items():
        name = str(name)
        where = f"checkpoints.{name}"
        if not SAFE_NAME.fullmatch(name) or name in BUILTIN_ROWS:
            why = "is a row the pipeline makes itself" if name in BUILTIN_ROWS else "is not a plain folder name"
            raise UserError(f"checkpoint name {name!r} {why}; name outside checkpoints with letters, digits, '.', "
                            f"'_' or '-', other than {', '.join(BUILTIN_ROWS)}")
        if isinstance(entry, str):  # name: FILE, the short form
            entry = {"path": entry}
        if not isinstance(entry, dict):
            raise UserError(f"{where} is {entry!r}; give {{path: FILE}} (and optionally arch, format, "
                            "checkpoint_key, prefix)")
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if unknown:
            raise UserError(f"unknown key {where}.{unknown[0]}; the keys of an outside checkpoint are "
                            f"{', '.join(ENTRY_KEYS)}")
        full = {k: str(default if entry.get(k) is None else entry[k]) for k, default in ENTRY_KEYS.items()}
        if not full["path"]:
            raise UserError(f"{where} has no path; give {where}.path=FILE")
        full["path"] = str(Path(full["path"]).resolve())
        out[name] = full
    return out


def choice_flags(entry: dict) -> list[str]:
    """--format / --checkpoint-key / --prefix of an entry, only those set ("" = detected)."""
    return [arg for key, flag in CHOICE_FLAGS if entry.get(key) for arg in (flag, entry[key])]


def detection_datasets(config: Path) -> str:
    """DATASETS.TRAIN and TEST of a detectron2 config, following its _BASE_ chain (the child wins)."""
    data = yaml.safe_load(config.read_text()) or {}
    base = detection_datasets(config.parent / data["_BASE_"]) if data.get("_BASE_") else ""
    own = data.get("DATASETS") or {}
    return " ".join(str(own[k]) for k in ("TRAIN", "TEST") if k in own) if own else base


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
        # absolute, like every path handed to a stage: what the stages print and record is unambiguous
        self.run_dir = Path(cfg.out_dir).resolve()
        self.data_root = Path(cfg.data_root).resolve()
        self.legacy_marks = self.run_dir / ".stages"  # <stage>.done files of runs from before done.json
        self.outside = outside_checkpoints(cfg.checkpoints)  # checked here: before anything is written

    # ------------------------------------------------------------------ bookkeeping
    def done(self, stage: str) -> bool:
        return is_done(self.run_dir, stage) or (self.legacy_marks / f"{stage}.done").exists()

    def _sh(self, *cmd, env: dict | None = None, stage: str) -> None:
        from core.preemption import REQUEUE_EXIT, Preempted, preemption_signals, wait_forwarding  # torch

        # The caller's working directory (relative paths mean what the user meant); the repo on the
        # path so that `-m pretrain.train` resolves from anywhere.
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONPATH": path, "PYTHON": sys.executable, **(env or {})}
        print(f"[pipeline:{stage}] $ {' '.join(str(c) for c in cmd)}", flush=True)
        code = wait_forwarding(subprocess.Popen([str(c) for c in cmd], env=env))
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
        from core.runtime import file_sha256, git_revision  # torch: not before the command line is parsed

        finished = done_info(self.run_dir)
        stages = {s: finished.get(s, {}) for s in STAGES if self.done(s)}
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
            # outside checkpoints under their absolute path: the files this run's outside rows were read from
            "checkpoints": {**{str(p.relative_to(self.run_dir)): file_sha256(p) for p in checkpoints},
                            **{e["path"]: file_sha256(e["path"]) for e in self.outside.values()}},
            "datasets": [dataset_fingerprint(self.data_root)] if self.data_root.is_dir() else [],
        }
        write_json(self.run_dir / "manifest.json", manifest)

    # ------------------------------------------------------------------ what the stages share
    def pretrained_checkpoint(self) -> Path:
        from core.checkpoint import epoch_checkpoints

        found = epoch_checkpoints(self.run_dir / "pretrain")
        if not found:
            raise UserError(f"no pretraining checkpoint in {self.run_dir / 'pretrain'}; run the pretrain stage first")
        return found[-1]

    def backbones(self, detection: bool = False) -> dict[str, dict]:
        """Backbones evaluated side by side, name -> {path, arch, format options}: ours (when pretraining is
        on), random init, the supervised file if given, then every outside checkpoint. Detection also offers
        scratch, detectron2's own init: the paper's scratch row (PROTOCOL.md section 9), where random is a
        converted random torchvision network. Our rows share the pretraining config's arch."""
        arch = self.arch()
        out = {"pretrained": str(self.pretrained_checkpoint())} if self.cfg.pretrain.enabled else {}
        out.update({"scratch": "scratch"} if detection else {})
        out["random"] = "random"
        if self.cfg.supervised_checkpoint:
            out["supervised"] = str(Path(self.cfg.supervised_checkpoint).resolve())
        return {**{name: {"path": path, "arch": arch} for name, path in out.items()}, **self.outside}

    def stage_config(self, stage: str) -> Path:
        """pretrain.config / eval.config as the stage's --config reads it: a path, else a preset name."""
        return resolve_config(self.cfg[stage].config, REPO / stage / "configs").resolve()

    def pretrain_overrides(self) -> list[str]:
        folder = self.data_root / "imagefolder"
        return [f"data.train_dir={folder / 'train'}", f"monitor.knn_train_dir={folder / 'train'}",
                f"monitor.knn_val_dir={folder / 'val'}", *self.cfg.pretrain.overrides,
                f"out_dir={self.run_dir / 'pretrain'}"]

    def arch(self) -> str:
        return load_config(self.stage_config("pretrain"), self.pretrain_overrides()).arch

    def _stage_cfg(self, stage: str, load, overrides: list[str]):
        """A stage's config loaded and range-checked as its own command line will, named on error."""
        path = self.stage_config(stage)
        try:
            return load(path, overrides)
        except ConfigError as e:
            raise ConfigError(f"{stage}.config {path} (with {stage}.overrides): {e}") from None

    def check_inputs(self, stages: list[str]) -> None:
        """Every input of every stage in `stages`, before the first one starts: a missing COCO must not
        surface after hours of pretraining. Raises one UserError naming the first gap and its fix."""
        from core.images import image_folder  # torchvision: only once the command line is parsed
        from eval.cli import load as load_eval
        from pretrain.train import check_inputs as check_pretrain_inputs, load as load_pretrain

        cfg, todo = self.cfg, set(stages)
        generated = "data" in todo and cfg.generate_embedded  # the data stage writes everything below
        jobs = [job for job in ("voc", "coco") if job in todo and job in cfg.detection.jobs]
        if not generated and (todo & {"data", "pretrain", "eval"} or jobs) and not self.data_root.is_dir():
            raise UserError(f"data_root {self.data_root} does not exist; point data_root at your datasets "
                            "or set generate_embedded=true")
        folder = self.data_root / "imagefolder"
        if todo & {"pretrain", "eval"}:  # eval reads the pretraining config for the arch of our rows
            pretrain_cfg = self._stage_cfg("pretrain", load_pretrain, self.pretrain_overrides())
            if "pretrain" in todo and cfg.pretrain.enabled and not generated:
                check_pretrain_inputs(pretrain_cfg, cfg.pretrain.nproc_per_node)
        if "eval" in todo:
            # what stage_eval's flags set, after the overrides as there; each outside checkpoint's arch too
            for arch in dict.fromkeys([pretrain_cfg.arch, *(e["arch"] for e in self.outside.values())]):
                self._stage_cfg("eval", load_eval, [
                    *cfg.eval.overrides, f"arch={arch}", "checkpoint=random", f"data.train_dir={folder / 'train'}",
                    f"data.val_dir={folder / 'val'}", f"out_dir={self.run_dir / 'eval'}"])
            if not generated:
                image_folder(folder / "val")
        uses_pretrained = "eval" in todo or (jobs and "pretrained" in cfg.detection.backbones)
        if cfg.pretrain.enabled and "pretrain" not in todo and uses_pretrained:
            try:
                self.pretrained_checkpoint()
            except UserError as e:
                raise UserError(f"{e}, or set pretrain.enabled=false to evaluate only outside checkpoints") from None
        if "eval" in todo or jobs:
            self.check_outside(detection=bool(jobs))
        uses_supervised = "eval" in todo or (jobs and "supervised" in cfg.detection.backbones)
        if cfg.supervised_checkpoint and uses_supervised and not Path(cfg.supervised_checkpoint).is_file():
            raise UserError(f"supervised_checkpoint {Path(cfg.supervised_checkpoint).resolve()} does not exist; "
                            'give a torchvision ResNet-50 file, or supervised_checkpoint="" to leave that row out')
        for job in jobs:
            config = resolve_config(cfg.detection[f"{job}_config"], REPO / "detectron_configs")
            if generated:
                continue
            if job == "voc":
                needed = ["VOCdevkit/VOC2007"] + (["VOCdevkit/VOC2012"] if "voc_2012" in detection_datasets(config) else [])
            else:
                needed = ["coco/annotations"]
            for rel in needed:
                if not (self.data_root / rel).is_dir():
                    rest = [j for j in cfg.detection.jobs if j != job]
                    raise UserError(f"detection job {job} ({config.name}) needs {self.data_root / rel}, which does not "
                                    f"exist; put the dataset there (the standard layout under data_root), or leave "
                                    f"the job out with detection.jobs=[{','.join(rest)}]")

    def check_outside(self, detection: bool) -> None:
        """Each outside file exists and reads as a backbone of its arch in a known format (no model runs);
        detection needs ResNet-50."""
        from core.checkpoint import read_backbone
        from core.checkpoint_formats import Choice

        for name, e in self.outside.items():
            if not Path(e["path"]).is_file():
                raise UserError(f"checkpoints.{name}.path {e['path']} does not exist; give the file of that "
                                f"checkpoint, or leave {name} out of checkpoints")
            if detection and e["arch"] != "resnet50":
                raise UserError(f"checkpoints.{name} is a {e['arch']}, and detection needs a resnet50; leave it "
                                "out, or run without detection (detection.jobs=[])")
            try:
                read_backbone(e["path"], e["arch"], Choice.of(e["format"], e["checkpoint_key"], e["prefix"]))
            except UserError as err:
                raise UserError(f"checkpoints.{name}: {err}") from None

    # ------------------------------------------------------------------ stages
    def stage_data(self) -> None:
        if self.cfg.generate_embedded:
            self._sh(sys.executable, "-m", "embedded", "--out-dir", self.data_root, stage="data")
        elif not self.data_root.is_dir():
            raise UserError(f"data_root {self.data_root} does not exist; point data_root at your datasets "
                            "or set generate_embedded=true")

    def stage_pretrain(self) -> None:
        if not self.cfg.pretrain.enabled:
            print("[pipeline:pretrain] skipped (pretrain.enabled=false): only the outside checkpoints and baselines")
            return
        self._sh(*pretrain_command(self.cfg.pretrain.nproc_per_node), "--config", self.stage_config("pretrain"),
                 *self.pretrain_overrides(), stage="pretrain")

    def eval_command(self, protocol: str, name: str, backbone: dict) -> list:
        folder = self.data_root / "imagefolder"
        return [sys.executable, "-m", f"eval.{protocol}", "--config", self.stage_config("eval"),
                "--checkpoint", backbone["path"], "--arch", backbone["arch"], *choice_flags(backbone),
                "--train-dir", folder / "train", "--val-dir", folder / "val",
                "--out-dir", self.run_dir / "eval" / name, *self.cfg.eval.overrides]

    def stage_eval(self) -> None:
        for name, backbone in self.backbones().items():
            for protocol in self.cfg.eval.protocols:
                self._sh(*self.eval_command(protocol, name, backbone), stage="eval")

    def detection_command(self, job: str, name: str, backbone: dict) -> list:
        det = self.cfg.detection
        preset = {"voc": "voc.yaml", "coco": "coco_1x.yaml"}[job]  # transfer/configs/, as run_voc.sh / run_coco.sh
        out = self.run_dir / "detection" / job / name
        return [sys.executable, "-m", "transfer.finetune", "--config", preset, "--checkpoint", backbone["path"],
                *choice_flags(backbone), "--out-dir", out, "--data-root", self.data_root,
                f"detectron2_config={det[f'{job}_config']}", f"trials={det.trials}",
                "d2_opts=" + yaml.safe_dump(list(det.overrides), default_flow_style=True, width=10**9).strip(),
                "resume=true" if out.exists() else "resume=false"]  # an earlier, interrupted attempt

    def _detection(self, job: str) -> None:
        if job not in self.cfg.detection.jobs:
            print(f"[pipeline:{job}] skipped (not in detection.jobs)")
            return
        for name, backbone in self.backbones(detection=True).items():
            if name in self.outside or name in self.cfg.detection.backbones:  # every outside checkpoint is fine-tuned
                self._sh(*self.detection_command(job, name, backbone), stage=job)

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
        chosen = [only] if only else list(STAGES[STAGES.index(start):]) if start else list(STAGES)
        self.check_inputs([s for s in chosen if (only or start) or not self.done(s)])  # before anything is written
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(self.cfg, self.run_dir / "pipeline_config.yaml")
        for stage in STAGES:
            forced = stage in chosen and (only or start)
            if stage not in chosen or (self.done(stage) and not forced):
                if self.done(stage):
                    print(f"[pipeline:{stage}] done earlier, skipped")
                continue
            clear_done(self.run_dir, stage)
            (self.legacy_marks / f"{stage}.done").unlink(missing_ok=True)
            begin = time.perf_counter()
            getattr(self, f"stage_{stage}")()
            mark_done(self.run_dir, stage, seconds=time.perf_counter() - begin)
            self.write_manifest()
            print(f"[pipeline:{stage}] finished in {time.perf_counter() - begin:.0f} s", flush=True)
        say_outputs("pipeline", self.run_dir)


def main(cfg: Config, start: str | None = None, only: str | None = None) -> Path:
    Pipeline(cfg).run(start, only)
    return Path(cfg.out_dir)


def command() -> Command:
    cmd = Command("python -m pipeline.run", __doc__, default_config=CONFIGS / "demo.yaml", presets=CONFIGS,
                  flags=(OUT_DIR,))
    group = cmd.add_mutually_exclusive_group()
    group.add_argument("--from", dest="start", choices=STAGES, metavar="STAGE",
                       help=f"re-run this stage and every later one ({', '.join(STAGES)}; default: every stage not done)")
    group.add_argument("--only", choices=STAGES, metavar="STAGE", help="run just this stage (default: every stage not done)")
    return cmd


def cli(argv=None) -> None:
    args = command().parse(argv)
    run(lambda: main(load_config(args.config, args.overrides, RULES), args.start, args.only))


if __name__ == "__main__":
    cli()
