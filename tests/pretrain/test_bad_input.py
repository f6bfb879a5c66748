"""Bad input gets one clear message, and nothing already written is lost."""

import json
import signal

import pytest
import torch

from core.checkpoint import read_checkpoint
from core.cli import UserError
from pretrain.objective import Objective
from pretrain.loop import TrainingStopped, main
from pretrain.train import cli
from tests.helpers import one_error_line, tiny_config, tiny_overrides


def _cli_error(capsys, overrides) -> str:
    return one_error_line(capsys, lambda: cli(overrides))


def test_missing_and_empty_data_dir(tmp_path, capsys):
    err = _cli_error(capsys, tiny_overrides(tmp_path / "out", tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in err and "does not exist" in err and "<class_name>" in err
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    err = _cli_error(capsys, tiny_overrides(tmp_path / "out", tmp_path / "empty"))
    assert "no usable images" in err and str(tmp_path / "empty") in err


def test_unknown_config_key_is_one_line(tmp_path, capsys, tiny_folder):
    err = _cli_error(capsys, tiny_overrides(tmp_path / "out", tiny_folder) + ["optim.batchsize=4"])
    assert "unknown config key 'optim.batchsize'" in err


def test_unwritable_output_dir(tmp_path, capsys, tiny_folder):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a dir")
    err = _cli_error(capsys, tiny_overrides(blocker / "out", tiny_folder))
    assert "not writable" in err and str(blocker / "out") in err


def _corrupt(folder):
    bad = folder / "class1" / "005.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    return bad


def test_corrupt_jpeg_names_the_file(tmp_path, capsys, tiny_folder):
    bad = _corrupt(tiny_folder)
    err = _cli_error(capsys, tiny_overrides(tmp_path / "out", tiny_folder, **{"data.workers": 1}))
    assert str(bad) in err and "skip_bad_images" in err


def test_corrupt_jpeg_skipped_and_counted(tmp_path, tiny_folder):
    _corrupt(tiny_folder)
    out = tmp_path / "out"
    # batch 6 divides the 36 images: every image is used once per epoch, so the bad one is met once.
    main(tiny_config(out, tiny_folder, **{"data.skip_bad_images": True, "optim.epochs": 1, "optim.batch_size": 6,
                                           "monitor.knn_every": 1, "monitor.knn_train_dir": tiny_folder,
                                           "monitor.knn_val_dir": tiny_folder, "monitor.knn_k": 5}))
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["skipped_images"] == 1 and record["knn_top1"] is not None  # the kNN monitor left it out
    assert (out / "checkpoint_0001.pth.tar").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_folder, monkeypatch):
    out = tmp_path / "out"
    real_objective = Objective.__call__
    calls = {"n": 0}

    def loss_that_diverges(*args, **kwargs):
        calls["n"] += 1
        loss, *rest = real_objective(*args, **kwargs)
        return (loss * float("nan") if calls["n"] == 6 else loss, *rest)

    monkeypatch.setattr(Objective, "__call__", loss_that_diverges)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    with pytest.raises(TrainingStopped) as exc:
        main(tiny_config(out, tiny_folder))
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the preemption handlers are given back
    msg = str(exc.value)
    assert "loss is nan at epoch 1 step 1" in msg and "checkpoint_0001.pth.tar" in msg
    assert not (out / "checkpoint_0002.pth.tar").exists()
    good = read_checkpoint(out / "checkpoint_0001.pth.tar")
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values() if v.is_floating_point())


def test_collapse_alarm(tmp_path, tiny_folder):
    # A threshold above any healthy std makes every epoch "collapsed": the alarm must fire after `patience`.
    with pytest.raises(TrainingStopped, match="collapse alarm"):
        main(tiny_config(tmp_path / "out", tiny_folder, **{"monitor.collapse_ratio": 100.0, "monitor.collapse_patience": 2}))
    assert (tmp_path / "out" / "checkpoint_0002.pth.tar").exists()
    with pytest.raises(UserError):  # TrainingStopped is a UserError: the CLI prints it as one line
        raise TrainingStopped("x")
