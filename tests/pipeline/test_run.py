"""A reduced chain (smaller than the demo) through the real entry points: data -> pretrain -> eval ->
VOC -> COCO -> report; skipping of finished stages; resume after a kill; manifest hashes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.checkpoint import read_checkpoint
from core.config import load_config
from core.files import DONE, is_done
from embedded.generator import EmbeddedDataConfig, generate
from core.runtime import file_sha256
from pipeline.run import STAGES, dataset_fingerprint, main
from tests.helpers import REPO

DATA = EmbeddedDataConfig(cls_train_per_class=4, cls_val_per_class=2, voc07_trainval=4, voc07_test=2,
                          voc12_trainval=2, coco_train=4, coco_val=2)
PRETRAIN = ["arch=resnet50", "data.crop_size=32", "data.workers=0", "optim.batch_size=8", "optim.epochs=2",
            "model.dim=128", "model.pred_dim=32", "monitor.knn_k=5", "train.save_every_steps=1"]
EVAL = ["data.image_size=32", "data.workers=0"]
DET = ["SOLVER.MAX_ITER", "2", "TEST.PRECISE_BN.NUM_ITER", "1", "DATALOADER.NUM_WORKERS", "0",
       "MODEL.RPN.POST_NMS_TOPK_TEST", "16", "TEST.DETECTIONS_PER_IMAGE", "16"]


def overrides(run_dir: Path, data_root: Path, **extra) -> list[str]:
    items = {"out_dir": run_dir, "data_root": data_root, "generate_embedded": False,
             "pretrain.overrides": json.dumps(PRETRAIN), "eval.overrides": json.dumps(EVAL),
             "detection.overrides": json.dumps(DET), "detection.backbones": '["pretrained"]'}
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


def config(run_dir, data_root, **extra):
    return load_config(REPO / "pipeline/configs/demo.yaml", overrides(run_dir, data_root, **extra))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("embedded") / "data", DATA)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_root):
    run_dir = tmp_path_factory.mktemp("chain") / "run"
    main(config(run_dir, data_root))
    return run_dir


def test_chain_runs_end_to_end_and_reports(finished_run):
    run = finished_run
    assert all(is_done(run, s) for s in STAGES) and is_done(run / "pretrain", "pretrain")
    assert (run / "pretrain" / "checkpoint_0002.pth.tar").exists()
    for job, tables in (("voc", ["bbox"]), ("coco", ["bbox", "segm"])):
        summary = json.loads((run / "detection" / job / "pretrained" / "trials_summary.json").read_text())
        assert summary  # real detectron2 training + evaluation ran
    report = (run / "report" / "report.md").read_text()
    assert "not comparable" in report.lower()
    pngs = list((run / "report").glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    knn = json.loads((run / "eval" / "pretrained" / "knn.json").read_text())
    top1 = knn["knn"][0]["top1"]
    assert f"{top1:.1f}" in report or f"{top1:.2f}" in report  # the report's numbers are the stage files'


def test_manifest_hashes_match_the_files(finished_run, data_root):
    manifest = json.loads((finished_run / "manifest.json").read_text())
    assert manifest["checkpoints"]
    for rel, digest in manifest["checkpoints"].items():
        assert file_sha256(finished_run / rel) == digest
    assert manifest["datasets"][0]["sha256"] == dataset_fingerprint(Path(data_root))["sha256"]
    assert manifest["packages"]["torch"] and manifest["git_revision"]


def test_rerun_skips_finished_stages(finished_run, data_root, capsys):
    stamps = {p: p.stat().st_mtime_ns for p in (finished_run / DONE, finished_run / "pretrain" / DONE)}
    ckpt = finished_run / "pretrain" / "checkpoint_0002.pth.tar"
    before = ckpt.stat().st_mtime_ns
    main(config(finished_run, data_root))
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps and ckpt.stat().st_mtime_ns == before
    assert capsys.readouterr().out.count("done earlier, skipped") == len(STAGES)


def test_killed_pretraining_resumes_to_the_same_weights(tmp_path, data_root):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    main(config(straight, data_root), only="pretrain")
    args = [sys.executable, "-m", "pipeline.run", *overrides(killed, data_root), "--only", "pretrain"]
    proc = subprocess.Popen(args, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "pretrain" / "checkpoint_last.pth.tar"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and read_checkpoint(last)["global_step"] >= 3:  # killed mid-run, 3+ steps in
            break
        time.sleep(0.2)
    assert proc.poll() is None, "pretraining ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not is_done(killed, "pretrain") and not is_done(killed / "pretrain", "pretrain")
    main(config(killed, data_root), only="pretrain")
    a = read_checkpoint(straight / "pretrain" / "checkpoint_0002.pth.tar")["state_dict"]
    b = read_checkpoint(killed / "pretrain" / "checkpoint_0002.pth.tar")["state_dict"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())
