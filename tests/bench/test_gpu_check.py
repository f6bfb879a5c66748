"""The GPU check (bench/gpu_check.py): its dry run goes through every part's code on the CPU and writes
the JSON and the table; without a GPU (and without --dry-run) it refuses with one error line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.gpu_check import PHOTOMETRIC_LIMITS, TRAIN_SETTINGS, cli, table
from tests.helpers import REPO, one_error_line


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the check would run")
def test_refuses_to_start_without_cuda(tmp_path, capsys):
    line = one_error_line(capsys, lambda: cli(["--out-dir", str(tmp_path / "out")]))
    assert "no CUDA GPU" in line and "--dry-run" in line
    assert not (tmp_path / "out").exists()  # refused before anything is written


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and proc.name != str(os.getpid()):
            found.append(cmd)
    return found


def test_dry_run_writes_every_part_and_leaves_nothing_running(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(["bash", str(REPO / "bench/gpu_check.sh"), "--dry-run", "--out-dir", str(out)],
                          env=dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.rstrip().endswith(f"gpu_check: outputs in {out}")
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md"]  # scratch removed
    assert not _processes_mentioning(str(out))

    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["device"] == "cpu" and report["wall_s"] <= report["budget_s"]
    assert [(r["backend"], r["amp"], r["channels_last"]) for r in report["train"]] == TRAIN_SETTINGS
    for r in report["train"]:
        assert r["status"] == "ok" and r["epochs_done"] == 2, r
        assert r["images_per_s"] > 0 and 0 <= r["data_wait_frac"] < 1 and "peak_gpu_mem_gb" in r
    photometric = report["photometric"]
    assert photometric["status"] == "ok" and photometric["ok"] is True
    assert photometric["diffs"].keys() == PHOTOMETRIC_LIMITS.keys()
    knn = report["knn"]
    assert knn["status"] == "ok" and knn["float32"]["queries_per_s"] > 0
    assert 0 < knn["bf16"]["neighbour_overlap"] <= 1 and "fp16" not in knn  # fp16: GPU only
    assert [(d["job"], d["status"]) for d in report["detection"]] == [("voc", "ok"), ("coco", "ok")]
    assert all(d["s_per_iter"] > 0 and d["images_per_iter"] == 2 for d in report["detection"])
    assert report["sync_bn"]["status"] == "skipped" and "needs two" in report["sync_bn"]["why"]

    md = (out / "gpu_check.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| part ")]
    assert len(rows) == 6 + 1 + 2 + 2 + 1  # train settings, photometric, kNN fp32 + bf16, detection, sync BN
    assert md.startswith("GPU check (DRY RUN") and "| photometric |" in md and md.count("| PASS |") == 1
    assert md in proc.stdout


def test_table_shows_cut_and_failed_parts():
    report = {"dry_run": False, "device": "GPU", "gpus": 1, "cpu_cores": 16, "torch": "x", "cuda": "y",
              "git_revision": "abc", "started": "now", "wall_s": 480, "budget_s": 480,
              "sizes": {"arch": "resnet50", "crop": 224, "batch": 64, "det_configs": {"voc": "v.yaml", "coco": "c.yaml"}},
              "train": [{"setting": "official, fp32", "status": "cut", "budget_s": 35, "images_per_s": 700.0,
                         "data_wait_frac": 0.1, "compute_images_per_s": 777.0, "peak_gpu_mem_gb": 20.0}],
              "knn": {"status": "failed", "exit": 1, "log_tail": "boom"},
              "detection": [{"job": "voc", "model": "Faster R-CNN C4", "status": "cut", "why": "no time left in --budget-s"}],
              "sync_bn": {"status": "skipped", "why": "1 GPU(s) visible"}}
    md = table(report)
    assert "700 img/s, data wait 10%" in md and "| 20.0 GB | cut (budget 35 s) |" in md  # a cut epoch still reports
    assert "| knn | bank x queries | - | - | failed |" in md
    assert "cut (no time left in --budget-s)" in md and "skipped (1 GPU(s) visible)" in md
