"""SIGTERM / SIGUSR1 (SLURM's warnings before preemption): save, exit 75 quickly, resume to the same weights."""

import os
import signal
import time

import pytest
import torch

from core.checkpoint import read_checkpoint
from core.files import is_done
from core.preemption import REQUEUE_EXIT, Preempted, PreemptionFlag
from pretrain.loop import LAST, main
from tests.helpers import tiny_config
from tests.helpers import assert_same_weights, start, train_cmd

RUN = {"optim.epochs": 4}  # 4 steps an epoch; no periodic mid-epoch saves: the signal makes the save


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    from tests.helpers import write_image_folder

    root = tmp_path_factory.mktemp("signals")
    folder = write_image_folder(root / "images")  # the same images as the tiny_folder fixture
    main(tiny_config(root / "straight", folder, **RUN))
    return root / "straight" / "checkpoint_0004.pth.tar"


def test_sigterm_saves_exits_75_and_resumes(tmp_path, tiny_folder, straight, capsys):
    out = tmp_path / "run"
    proc = start(train_cmd(out, tiny_folder, **RUN))
    deadline = time.time() + 120
    while not (out / "checkpoint_0001.pth.tar").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    took = time.time() - sent
    assert proc.returncode == REQUEUE_EXIT, err[-3000:]
    assert took < 30  # one step and one save, not the rest of the run
    assert "pretrain: preempted" in err and "got SIGTERM" in err and "Traceback" not in err
    assert not (out / "checkpoint_0004.pth.tar").exists() and not is_done(out, "pretrain")
    # what it saved (LAST mid-epoch, or the epoch checkpoint it had just written) is whole
    saved = [p for p in out.glob("checkpoint_*.pth.tar")]
    assert all(read_checkpoint(p) for p in saved)
    main(tiny_config(out, tiny_folder, **RUN))
    assert "resumed from" in capsys.readouterr().out
    assert_same_weights(straight, out / "checkpoint_0004.pth.tar")


def test_sigusr1_during_checkpoint_write_still_saves_and_exits(tmp_path, tiny_folder, straight, monkeypatch, capsys):
    """The signal is held by signals_deferred while the file is written, then delivered to the
    preemption handler: the write completes, the run stops at that step boundary, nothing crashes."""
    out = tmp_path / "run"
    real_save, calls = torch.save, {"n": 0}

    def save_with_signal(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # LAST after global step 3 (train.save_every_steps=1)
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.05)  # a handler that ran now would interrupt the write
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save_with_signal)
    before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(Preempted) as exc:
        main(tiny_config(out, tiny_folder, **RUN, **{"train.save_every_steps": 1}))
    assert exc.value.code == REQUEUE_EXIT and "got SIGUSR1" in exc.value.message
    assert "epoch 0 step 3" in exc.value.message and str(out / LAST) in exc.value.message
    assert signal.getsignal(signal.SIGUSR1) == before  # handlers restored
    assert calls["n"] == 3  # saved once at that step: the periodic save is the preemption save
    assert read_checkpoint(out / LAST)["global_step"] == 3
    assert not list(out.glob(".*.tmp"))
    monkeypatch.setattr(torch, "save", real_save)
    main(tiny_config(out, tiny_folder, **RUN, **{"train.save_every_steps": 1}))
    assert "resumed from checkpoint_last.pth.tar (epoch 0, step 3)" in capsys.readouterr().out
    assert_same_weights(straight, out / "checkpoint_0004.pth.tar")


def test_flag_only_records_and_all_signals_are_covered():
    flag = PreemptionFlag().install()
    try:
        assert not flag.should_stop()
        signal.raise_signal(signal.SIGTERM)  # would end the process without the handler
        assert flag.should_stop() and flag.signum == signal.SIGTERM
    finally:
        flag.restore()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_pipeline_passes_signal_through_torchrun_and_exits_75(tmp_path, tiny_folder, sig):
    """pipeline.run -> pretrain/run.sh -> torchrun -> 2 gloo workers: SIGTERM or SIGUSR1 to the pipeline
    reaches the workers, which agree on a step, save and exit; every level passes exit 75 up."""
    import json
    import shutil
    import subprocess
    import sys

    from tests.helpers import PRETRAIN_DEFAULTS, REPO
    from tests.helpers import fault_env, global_step

    data = tmp_path / "data"
    for split in ("train", "val"):
        shutil.copytree(tiny_folder, data / "imagefolder" / split)
    tiny = ["arch=resnet18", "device=cpu", "data.crop_size=32", "data.workers=0", "optim.batch_size=8",
            "optim.epochs=2", "model.dim=64", "model.pred_dim=16", "monitor.knn_every=0", "train.save_every_steps=1"]
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipeline.run", f"out_dir={run}", f"data_root={data}", "generate_embedded=false",
           f"pretrain.config={PRETRAIN_DEFAULTS}", f"pretrain.overrides={json.dumps(tiny)}",
           "pretrain.nproc_per_node=2", "--only", "pretrain"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=fault_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = run / "pretrain" / LAST
    deadline = time.time() + 200
    while global_step(last) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    sent = time.time()
    proc.send_signal(sig)  # to the pipeline process only
    _, err = proc.communicate(timeout=120)
    assert time.time() - sent < 60  # measured ~5 s: one step, one save, the agent's shutdown
    assert proc.returncode == REQUEUE_EXIT, err[-4000:]
    assert "pretrain: preempted at epoch" in err and "[pipeline:pretrain] preempted" in err
    assert not is_done(run, "pretrain") and not is_done(run / "pretrain", "pretrain")
    assert 2 <= read_checkpoint(last)["global_step"] < 8  # saved mid-run; resuming it is what the tests above prove


def test_linear_probe_saves_mid_epoch_on_signal_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    from eval import linear
    from tests.helpers import eval_config, torchvision_checkpoint, toy_splits

    train, val = toy_splits(tmp_path, train_per_class=4, val_per_class=2)  # 16 images: 4 steps of 4
    ckpt = torchvision_checkpoint(tmp_path / "tv.pth")
    kw = {"linear.epochs": 2, "linear.batch_size": 4}
    linear.main(eval_config(tmp_path / "straight", train, val, checkpoint=ckpt, **kw))

    real_step, calls = linear.LARS.step, {"n": 0}

    def step_then_signal(self, closure=None):
        out = real_step(self, closure)
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 1, step 2
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(linear.LARS, "step", step_then_signal)
    out = tmp_path / "preempted"
    with pytest.raises(Preempted, match="linear: preempted at epoch 1 step 2"):
        linear.main(eval_config(out, train, val, checkpoint=ckpt, **kw))
    saved = read_checkpoint(out / linear.CHECKPOINT)
    assert (saved["epoch"], saved["step_in_epoch"]) == (1, 2)
    monkeypatch.setattr(linear.LARS, "step", real_step)
    capsys.readouterr()
    result = linear.main(eval_config(out, train, val, checkpoint=ckpt, **kw))
    assert "after epoch 1 and 2 steps of the next" in capsys.readouterr().out
    a, b = (read_checkpoint(d / linear.CHECKPOINT) for d in (tmp_path / "straight", out))
    assert all(torch.equal(v, b["fc"][k]) for k, v in a["fc"].items())
    assert result["linear"]["last_epoch"]["epoch"] == 2
    assert a["history"][-1]["loss"] == pytest.approx(b["history"][-1]["loss"])


def test_detection_hook_saves_a_resumable_checkpoint_and_exits(tmp_path):
    """The hook the detectron2 trainer runs after every iteration (Trainer.build_hooks adds it)."""
    from detectron2.checkpoint import DetectionCheckpointer

    from transfer.trainer import PreemptionHook

    class FakeTrainer:  # what the hook uses of detectron2's trainer
        iter = 6
        model = torch.nn.Linear(2, 2)
        checkpointer = DetectionCheckpointer(model, save_dir=str(tmp_path))

    hook = PreemptionHook()
    hook.trainer = FakeTrainer()
    hook.before_train()
    try:
        hook.after_step()  # no signal: nothing happens
        assert not list(tmp_path.iterdir())
        os.kill(os.getpid(), signal.SIGUSR1)
        with pytest.raises(Preempted, match="after iteration 6; saved .*model_0000006.pth.*--resume") as exc:
            hook.after_step()
        assert exc.value.code == REQUEUE_EXIT
    finally:
        hook.after_train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000006.pth"  # what --resume loads
    assert torch.equal(read_checkpoint(tmp_path / "model_0000006.pth")["model"]["weight"], FakeTrainer.model.weight)


def test_pipeline_forwards_to_a_stage_without_checkpoints(tmp_path):
    """A stage that just dies of the forwarded signal (kNN, fast probe) also ends the pipeline with 75."""
    import sys
    import threading

    from core.config import load_config
    from pipeline.run import Pipeline
    from tests.helpers import REPO

    pipe = Pipeline(load_config(REPO / "pipeline/configs/demo.yaml", [f"out_dir={tmp_path}"]))
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))  # arrives while the stage runs
    timer.start()
    started = time.time()
    with pytest.raises(Preempted, match=r"\[pipeline:eval\] preempted") as exc:
        pipe._sh(sys.executable, "-c", "import time; time.sleep(60)", stage="eval")
    assert exc.value.code == REQUEUE_EXIT and time.time() - started < 30  # the child did not sleep 60 s


def test_detection_fine_tuning_stops_on_signal_and_resumes(tmp_path, monkeypatch):
    """The real detectron2 trainer (tiny VOC config): SIGTERM during iteration 1 -> model_0000001.pth,
    exit 75; --resume continues at iteration 2 and finishes with its evaluation."""
    import json

    from embedded.generator import EmbeddedDataConfig, generate
    from transfer import train_det, trainer
    from transfer.convert import convert

    root = generate(tmp_path / "data", EmbeddedDataConfig(seed=0, cls_train_per_class=1, cls_val_per_class=1,
                                                          voc07_trainval=4, voc07_test=2, voc12_trainval=2,
                                                          coco_train=2, coco_val=2))
    weights = convert("random", tmp_path / "random.pkl", seed=0)["out"]
    out = tmp_path / "voc"
    argv = ["--config-file", "tiny_pascal_voc_R_50_C4.yaml", "--data-root", str(root), "MODEL.WEIGHTS", str(weights),
            "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "3", "TEST.PRECISE_BN.NUM_ITER", "1",
            "DATALOADER.NUM_WORKERS", "0", "MODEL.RPN.POST_NMS_TOPK_TEST", "16", "TEST.DETECTIONS_PER_IMAGE", "16"]
    real_step, calls = trainer.Trainer.run_step, {"n": 0}

    def step_with_signal(self):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self)

    monkeypatch.setattr(trainer.Trainer, "run_step", step_with_signal)
    with pytest.raises(Preempted, match="detection: preempted after iteration 1"):
        train_det.main(train_det.parse_args(argv))
    trial = out / "trial0"
    assert (trial / "last_checkpoint").read_text() == "model_0000001.pth"
    saved = read_checkpoint(trial / "model_0000001.pth")
    state = saved["trainer"]  # what --resume restores: iteration, lr schedule, optimizer (momentum)
    assert saved["iteration"] == state["iteration"] == 1 and "LRScheduler" in state["hooks"]
    assert "optimizer" in state["_trainer"]
    assert not (trial / trainer.RESULTS_FILE).exists()
    resumed_iters = []

    def counted_step(self):
        resumed_iters.append(self.iter)
        return real_step(self)

    monkeypatch.setattr(trainer.Trainer, "run_step", counted_step)
    train_det.main(train_det.parse_args(["--resume", *argv]))
    assert resumed_iters == [2]  # only what was left of iterations 0..2
    assert "bbox" in json.loads((trial / trainer.RESULTS_FILE).read_text())["results"]
