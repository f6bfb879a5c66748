"""The command-line contract of every entry point: `--help` answers without importing torch, flags and
overrides mix in any order, and each user mistake is one `error: ...` line, exit 2, nothing written."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from core.checkpoint import CheckpointError, check_backbone_state
from core.models import build_backbone
from tests.helpers import PRETRAIN_DEFAULTS, REPO, one_error_line, tiny_overrides

MODULES = ["pretrain.train", "eval.knn", "eval.linear", "eval.fast_probe", "eval.head_grid", "eval.voc07_svm", "eval.all", "pipeline.run",
           "pipeline.study", "pipeline.report", "pipeline.slurm", "embedded",
           # made fast by the transfer work; checked here for --help only
           "transfer.convert_to_d2", "transfer.train_det"]


def _torch_modules(importtime_stderr: str) -> list[str]:
    """Module names of `python -X importtime` lines that belong to torch (or torchvision)."""
    names = [line.rsplit("|", 1)[-1].strip() for line in importtime_stderr.splitlines() if line.startswith("import time:")]
    return [n for n in names if n.split(".")[0] in ("torch", "torchvision")]


def _help(*target: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-X", "importtime", *target, "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("module", MODULES)
def test_help_exits_0_without_torch(module):
    proc = _help("-m", module)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
    assert _torch_modules(proc.stderr) == []


def test_script_forms_answer_help():
    proc = _help("transfer/convert_to_d2.py")
    assert proc.returncode == 0 and _torch_modules(proc.stderr) == [], proc.stderr[-2000:]
    proc = subprocess.run(["bash", str(REPO / "pretrain/run.sh"), "--help"], capture_output=True, text=True,
                          env=dict(os.environ, PYTHON=sys.executable), timeout=60)
    assert proc.returncode == 0 and "torchrun options" in proc.stdout and "--out-dir" in proc.stdout


def test_every_output_folder_is_out_dir():
    for module in ("pretrain.train", "eval.knn", "pipeline.run", "pipeline.study", "embedded"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True).stdout
        assert "--out-dir" in out and "--out " not in out, module


def test_slurm_without_arguments_prints_help_and_exits_2():
    proc = subprocess.run([sys.executable, "-m", "pipeline.slurm"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "usage: python -m pipeline.slurm" in proc.stderr and "--gpus-per-node" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "pipeline.slurm", "-h"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "(default: 8)" in proc.stdout


def test_flags_and_overrides_in_any_order():
    from eval.cli import command

    ns = command("python -m eval.knn", "").parse(["linear.base_lr=0.1", "--checkpoint", "X", "seed=3", "--out-dir", "o"])
    assert ns.overrides == ["linear.base_lr=0.1", "seed=3", 'checkpoint="X"', 'out_dir="o"']


# ---------------------------------------------------------------------------- one error line, exit 2

BAD_VALUES = {"arch=resnet26": "set arch to one of resnet50, resnet18, resnet34, resnet101, resnet152, resnet18_cifar",
              "model.proj_layers=4": "set model.proj_layers to one of 2, 3",
              "device=gpu": "set device to one of auto, cpu, cuda",
              "optim.batch_size=0": "set optim.batch_size to an integer >= 1"}
if not torch.cuda.is_available():
    BAD_VALUES["device=cuda"] = "no GPU is visible"


@pytest.mark.parametrize("override", BAD_VALUES)
def test_pretrain_bad_value_names_the_key(tmp_path, capsys, tiny_folder, override):
    from pretrain.train import cli

    out = tmp_path / "out"
    err = one_error_line(capsys, lambda: cli([*tiny_overrides(out, tiny_folder), override]))
    assert err.startswith(f"error: config key '{override.split('=')[0]}'") and BAD_VALUES[override] in err
    assert not out.exists()


@pytest.mark.parametrize("override", ["arch=resnet26", "device=gpu", "linear.batch_size=0",
                                      "fast_probe.holdout_fraction=1.5"])
def test_eval_bad_value_names_the_key(tmp_path, capsys, override):
    from eval.knn import cli_main

    out = tmp_path / "out"
    err = one_error_line(capsys, lambda: cli_main(["--checkpoint", "random", override, "--out-dir", str(out)]))
    assert f"config key '{override.split('=')[0]}'" in err and not out.exists()


def test_run_sh_checks_before_torchrun(tmp_path, tiny_folder):
    """A config error under torchrun: one line and exit 2, no worker traceback."""
    for bad in ("arch=resnet26", "optim.batch_size=7"):  # 7: not divisible by the 2 processes
        proc = subprocess.run(["bash", str(REPO / "pretrain/run.sh"), "--standalone", "--nproc_per_node", "2",
                               *tiny_overrides(tmp_path / "out", tiny_folder), bad], cwd=tmp_path, capture_output=True,
                              text=True, env=dict(os.environ, PYTHON=sys.executable), timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    from pipeline.report import cli

    err = one_error_line(capsys, lambda: cli([str(tmp_path / "nowhere")]))
    assert "does not exist" in err and not (tmp_path / "nowhere").exists()
    (tmp_path / "empty").mkdir()
    err = one_error_line(capsys, lambda: cli([str(tmp_path / "empty")]))
    assert "is not a pipeline run folder" in err and not (tmp_path / "empty" / "report").exists()


@pytest.fixture
def data_root(tmp_path, tiny_folder):
    root = tmp_path / "data"
    for split in ("train", "val"):
        shutil.copytree(tiny_folder, root / "imagefolder" / split)
    return root


def _pipeline(capsys, data_root, out, *extra):
    from pipeline.run import cli

    argv = [f"data_root={data_root}", "generate_embedded=false", "--out-dir", str(out),
            "pretrain.overrides=" + json.dumps(["optim.batch_size=8", "monitor.knn_k=5"]), *extra]
    return one_error_line(capsys, lambda: cli(argv))


def test_pipeline_checks_detection_data_before_any_stage(tmp_path, capsys, data_root):
    out = tmp_path / "run"
    err = _pipeline(capsys, data_root, out)  # voc and coco enabled, neither present
    assert f"needs {data_root / 'VOCdevkit/VOC2007'}" in err and "detection.jobs=[coco]" in err
    (data_root / "VOCdevkit/VOC2007").mkdir(parents=True)
    err = _pipeline(capsys, data_root, out, "detection.voc_config=pascal_voc_R_50_C4_24k.yaml")  # VOC07+12
    assert f"needs {data_root / 'VOCdevkit/VOC2012'}" in err
    err = _pipeline(capsys, data_root, out, "detection.voc_config=pascal_voc07_R_50_C4_9k.yaml")
    assert f"needs {data_root / 'coco/annotations'}" in err
    assert not out.exists()  # nothing was started, nothing written


def test_pipeline_checks_stage_configs_and_files_before_any_stage(tmp_path, capsys, data_root):
    out = tmp_path / "run"
    assert "data_root" in _pipeline(capsys, tmp_path / "nowhere", out)
    err = _pipeline(capsys, data_root, out, "detection.jobs=[]", "eval.overrides=[linear.epochs=0]")
    assert "eval.config" in err and "config key 'linear.epochs'" in err
    err = _pipeline(capsys, data_root, out, "detection.jobs=[]", "pretrain.config=nope.yaml")
    assert "config file not found: nope.yaml" in err
    err = _pipeline(capsys, data_root, out, "detection.jobs=[]", f"supervised_checkpoint={tmp_path / 'sup.pth'}")
    assert "supervised_checkpoint" in err and "sup.pth" in err
    assert "set detection.trials to an integer >= 1" in _pipeline(capsys, data_root, out, "detection.trials=0")
    assert not out.exists()


# ---------------------------------------------------------------------------- warnings and hints

def test_checkpoint_of_another_arch_names_the_arch_that_fits():
    for built, asked in (("resnet18", "resnet50"), ("resnet18_cifar", "resnet18")):
        state = {k: v for k, v in build_backbone(built).state_dict().items() if not k.startswith("fc.")}
        with pytest.raises(CheckpointError, match=f"pass --arch {built} "):
            check_backbone_state(state, asked, "ck.pth")


def test_knn_monitor_k_larger_than_bank_warns_once(capsys, tmp_path, tiny_folder):
    from pretrain.train import check_inputs, load

    cfg = load(PRETRAIN_DEFAULTS, tiny_overrides(tmp_path / "out", tiny_folder, **{
        "monitor.knn_every": 1, "monitor.knn_train_dir": tiny_folder, "monitor.knn_val_dir": tiny_folder}))
    check_inputs(cfg)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "monitor.knn_k=200 is larger than the kNN bank (36 images" in warnings[0]


def test_eval_knn_k_larger_than_bank_warns(tmp_path, capsys):
    from eval.knn import cli_main
    from tests.helpers import toy_splits

    train, val = toy_splits(tmp_path, train_per_class=2, val_per_class=1)
    cli_main(["--checkpoint", "random", "--arch", "resnet18", "--train-dir", str(train), "--val-dir", str(val),
              "--out-dir", str(tmp_path / "out"), "device=cpu", "data.image_size=32", "data.workers=0",
              "knn.grid=[[3,0.1],[200,0.2]]"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert warnings == ["warning: knn k=200 is larger than the bank (8 training images); the vote uses all 8"]
