"""The transfer entry points under the project's command-line contract (core/cli.py): --help without
torch or detectron2, user mistakes as one `error:` line and exit 2 before any slow work, relative paths
meaning the caller's folder, the run_voc.sh wrapper and convert_to_d2.py executed directly."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import load_config
from embedded.generator import EmbeddedDataConfig, generate
from transfer import finetune
from transfer.convert import read_d2_weights
from tests.helpers import REPO

# The tiny configs need 4 training images for 2 iterations of batch 2; 2 test images keep evaluation cheap.
DATA = EmbeddedDataConfig(seed=0, cls_train_per_class=1, cls_val_per_class=1, voc07_trainval=4, voc07_test=2,
                          voc12_trainval=2, coco_train=4, coco_val=2)
FAST = ["SOLVER.MAX_ITER", 2, "TEST.PRECISE_BN.NUM_ITER", 1, "DATALOADER.NUM_WORKERS", 0,
        "MODEL.RPN.POST_NMS_TOPK_TEST", 16, "TEST.DETECTIONS_PER_IMAGE", 16]
ANSI = "\x1b["


def env() -> dict:
    """The venv's python3 first on PATH (what the wrappers and the shebang run), one thread; no PYTHONPATH:
    the entry points must find the repo themselves, from any folder."""
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**base, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "OMP_NUM_THREADS": "1"}


def call(args: list, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=600)


def one_error(proc: subprocess.CompletedProcess) -> str:
    """Exit 2, exactly one `error:` line (the last), no traceback, no colour."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == errors[0]
    assert "Traceback" not in proc.stderr and ANSI not in proc.stderr + proc.stdout
    return errors[0]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("embedded") / "data", DATA)


# ---------------------------------------------------------------- --help
HELP = {
    "finetune": [sys.executable, "-X", "importtime", "-m", "transfer.finetune", "--help"],
    "convert_to_d2": [sys.executable, "-X", "importtime", "-m", "transfer.convert_to_d2", "--help"],
    "convert_to_d2.py": [sys.executable, "-X", "importtime", REPO / "transfer" / "convert_to_d2.py", "--help"],
    "train_det": [sys.executable, "-X", "importtime", "-m", "transfer.train_det", "--help"],
}


@pytest.mark.parametrize("entry", HELP)
def test_help_imports_neither_torch_nor_detectron2(tmp_path, entry):
    proc = call(HELP[entry], tmp_path)  # from another folder: the entry finds the repo by itself
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]
    heavy = [line for line in proc.stderr.splitlines() if re.search(r"\b(torch|detectron2)\b", line)]
    assert not heavy, heavy[:5]


# ---------------------------------------------------------------- finetune: checks before conversion
def _without(data_root: Path, dest: Path, *relative: str) -> Path:
    shutil.copytree(data_root, dest, ignore=shutil.ignore_patterns("imagefolder"))
    for rel in relative:
        target = dest / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return dest


@pytest.mark.parametrize("preset, removed, expected", [
    ("tiny_voc.yaml", "VOCdevkit", "dataset voc_2007_trainval: missing"),
    ("tiny_voc.yaml", "VOCdevkit/VOC2012/JPEGImages", "dataset voc_2012_trainval: missing"),
    ("tiny_coco.yaml", "coco/annotations/instances_val2017.json", "dataset coco_2017_val: missing"),
])
def test_data_layout_errors_come_before_conversion(tmp_path, data_root, preset, removed, expected):
    broken = _without(data_root, tmp_path / "data", removed)
    proc = call([sys.executable, "-m", "transfer.finetune", "--config", preset, "--checkpoint", "random",
                 "--out-dir", "out", "--data-root", "data"], tmp_path)
    err = one_error(proc)
    assert err.startswith(f"error: {expected}") and str(broken / removed) in err and "expected layout" in err
    assert not (tmp_path / "out" / finetune.WEIGHTS_NAME).exists()  # nothing converted, nothing written


@pytest.mark.parametrize("args, expected", [
    (["--checkpoint", "missing.pth"], "checkpoint not found: missing.pth"),
    (["--config", "nope.yaml", "--checkpoint", "random"], "config file not found: nope.yaml"),
    (["--checkpoint", "random", "trials=0"], "config key 'trials' is 0, which cannot be used; set trials to an integer >= 1"),
    (["--checkpoint", "random", "epochs=3"], "unknown config key 'epochs'"),
    (["--checkpoint", "random", "d2_opts=[OUTPUT_DIR, x]"], "d2_opts sets OUTPUT_DIR, which comes from out_dir"),
    (["--checkpoint", "random", "d2_opts=[SOLVER.BASE_LR]"], "d2_opts must be a flat list"),
    (["--checkpoint", "random", "coco_eval=fast"], "unknown COCO eval backend 'fast'"),
])
def test_finetune_value_errors_are_one_line(tmp_path, args, expected):
    err = one_error(call([sys.executable, "-m", "transfer.finetune", "--out-dir", "out", *args], tmp_path))
    assert expected in err
    assert not (tmp_path / "out").exists()


def test_presets_differ_from_the_defaults_only_in_their_job(tmp_path):
    """Every preset loads; the paper's VOC job is 5 trials of the 24k config, COCO one trial of 1x/2x."""
    presets = {p.name: load_config(p) for p in finetune.CONFIG_DIR.glob("*.yaml")}
    assert {"defaults.yaml", "voc.yaml", "voc07.yaml", "coco_1x.yaml", "coco_2x.yaml", "tiny_voc.yaml",
            "tiny_coco.yaml"} <= set(presets)
    jobs = {name: (cfg.detectron2_config, cfg.trials) for name, cfg in presets.items()}
    assert jobs["voc.yaml"] == ("pascal_voc_R_50_C4_24k.yaml", 5)
    assert jobs["voc07.yaml"] == ("pascal_voc07_R_50_C4_9k.yaml", 5)
    assert jobs["coco_1x.yaml"] == ("coco_R_50_C4_1x.yaml", 1) and jobs["coco_2x.yaml"] == ("coco_R_50_C4_2x.yaml", 1)
    assert all((REPO / "detectron_configs" / cfg.detectron2_config).is_file() for cfg in presets.values())
    assert all(cfg.d2_opts == [] and cfg.seed == 0 and not cfg.resume for cfg in presets.values())


def test_d2_options_become_detectron2_strings():
    assert finetune.d2_options(["SOLVER.BASE_LR", 0.01, "SOLVER.STEPS", "(36000, 44000)"]) == \
        ["SOLVER.BASE_LR", "0.01", "SOLVER.STEPS", "(36000, 44000)"]


# ---------------------------------------------------------------- the whole job from another folder
def test_run_voc_wrapper_with_relative_paths_from_another_folder(tmp_path, data_root):
    """transfer/run_voc.sh, executed directly from a folder outside the repo: --data-root and --out-dir
    are the caller's, detectron2 KEY VALUE options travel in d2_opts, and a non-terminal stdout gets
    neither colour nor the full config dump."""
    shutil.copytree(data_root, tmp_path / "datasets" / "embedded", ignore=shutil.ignore_patterns("imagefolder"))
    caller = tmp_path / "work"
    caller.mkdir()
    proc = call([REPO / "transfer" / "run_voc.sh", "--config", "tiny_voc.yaml", "--checkpoint", "random",
                 "--out-dir", "runs/voc", "--data-root", "../datasets/embedded", f"d2_opts={json.dumps(FAST)}"], caller)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = caller / "runs" / "voc"
    summary = json.loads((out / "trials_summary.json").read_text())
    assert summary["seeds"] == [0] and set(summary["summary"]) == {"bbox"}
    assert (out / "trial0" / "eval_results.json").is_file() and len(read_d2_weights(out / finetune.WEIGHTS_NAME)["model"]) == 318
    resolved = load_config(out / finetune.CONFIG_NAME)
    assert Path(resolved.data_root) == (tmp_path / "datasets" / "embedded").resolve()
    assert Path(resolved.out_dir) == out and resolved.d2_opts == [str(v) for v in FAST]
    assert "VERDICT: PASS" in proc.stdout and ANSI not in proc.stdout + proc.stderr
    assert "Running with full config" not in proc.stdout and "SOLVER:" not in proc.stdout
    assert "SOLVER:" in (out / "config.yaml").read_text()  # the config is saved instead


# ---------------------------------------------------------------- convert_to_d2.py executed directly
def test_convert_to_d2_py_runs_directly_with_options_in_any_order(tmp_path):
    proc = call([REPO / "transfer" / "convert_to_d2.py", "--seed", "3", "random", "--no-verify", "w.pkl"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "converted random checkpoint" in proc.stdout
    assert len(read_d2_weights(tmp_path / "w.pkl")["model"]) == 318  # relative OUT: the caller's folder


def test_convert_to_d2_unreadable_input_is_one_line(tmp_path):
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    for source, expected in (("missing.pth", "checkpoint not found: missing.pth"),
                             ("garbage.pth", "cannot read checkpoint")):
        err = one_error(call([sys.executable, "-m", "transfer.convert_to_d2", source, "o.pkl"], tmp_path))
        assert expected in err and not (tmp_path / "o.pkl").exists()


def test_train_det_usage_error_is_one_line(tmp_path):
    err = one_error(call([sys.executable, "-m", "transfer.train_det", "--config-file", "x.yaml", "--trials", "0"], tmp_path))
    assert "--trials must be >= 1" in err


# ---------------------------------------------------------------- the pipeline's detection stage
def test_pipeline_detection_stage_calls_finetune_with_its_keys(tmp_path, monkeypatch):
    """pipeline.run's voc/coco stage: the job's preset, detection.{voc,coco}_config / trials / overrides
    as finetune keys, the run folder's paths; parsed back by finetune's own command line."""
    from pipeline.run import Pipeline

    det = ["MODEL.RPN.POST_NMS_TOPK_TEST", "50", "SOLVER.STEPS", "(36000, 44000)"]
    cfg = load_config(REPO / "pipeline/configs/demo.yaml",
                      [f"out_dir={tmp_path / 'run'}", f"data_root={tmp_path / 'data'}", "detection.trials=3",
                       f"detection.overrides={json.dumps(det)}", "detection.backbones=[random]"])
    pipe = Pipeline(cfg)
    (pipe.run_dir / "pretrain").mkdir(parents=True)
    (pipe.run_dir / "pretrain" / "checkpoint_0001.pth.tar").touch()
    calls = []
    monkeypatch.setattr(Pipeline, "_sh", lambda self, *cmd, env=None, stage: calls.append((stage, cmd)))
    pipe._detection("coco")
    (stage, cmd), = calls
    assert stage == "coco" and [str(c) for c in cmd[:3]] == [sys.executable, "-m", "transfer.finetune"]
    ns = finetune.COMMAND.parse([str(c) for c in cmd[3:]])
    job = load_config(ns.config, ns.overrides)
    assert ns.config.name == "coco_1x.yaml" and job.detectron2_config == cfg.detection.coco_config
    assert job.trials == 3 and job.d2_opts == det and job.checkpoint == "random" and job.resume is False
    assert Path(job.out_dir) == pipe.run_dir / "detection" / "coco" / "random"
    assert Path(job.data_root) == (tmp_path / "data").resolve()
