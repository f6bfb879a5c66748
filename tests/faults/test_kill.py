"""kill -9 in the middle of writing a checkpoint loses only the work since the previous checkpoint."""

from core.checkpoint import read_checkpoint
from pretrain.loop import LAST, main
from tests.helpers import tiny_config
from tests.helpers import assert_same_weights, start, train_cmd

RUN = {"optim.epochs": 2, "train.save_every_steps": 1}  # 36 images, batch 8: 4 steps an epoch


def test_kill9_mid_checkpoint_write_keeps_previous_and_resumes_to_same_weights(tmp_path, tiny_folder, capsys):
    straight, out = tmp_path / "straight", tmp_path / "killed"
    main(tiny_config(straight, tiny_folder, **RUN))

    # saves: LAST after steps 1-4, checkpoint_0001, LAST after steps 5, 6, ...: the 7th is LAST at step 6
    proc = start(train_cmd(out, tiny_folder, **RUN), FAULT_KILL_IN_SAVE=7)
    proc.communicate(timeout=300)
    assert proc.returncode == -9
    stale = list(out.glob(".checkpoint_last.pth.tar.*.tmp"))
    assert len(stale) == 1 and stale[0].read_bytes().startswith(b"PK")  # the half-written file
    last = read_checkpoint(out / LAST)  # the previous LAST is whole and loadable
    assert (last["epoch"], last["step_in_epoch"], last["global_step"]) == (1, 1, 5)
    assert read_checkpoint(out / "checkpoint_0001.pth.tar")["epoch"] == 1
    assert not (out / "checkpoint_0002.pth.tar").exists()

    capsys.readouterr()
    main(tiny_config(out, tiny_folder, **RUN))  # the next start cleans up and resumes
    printed = capsys.readouterr().out
    assert f"removed {stale[0].name}" in printed and "resumed from checkpoint_last.pth.tar (epoch 1, step 1)" in printed
    assert not list(out.glob(".*.tmp"))
    assert_same_weights(straight / "checkpoint_0002.pth.tar", out / "checkpoint_0002.pth.tar")


def test_linear_probe_start_removes_stale_temp_files(tmp_path):
    from eval import linear
    from tests.helpers import eval_config, toy_splits

    train, val = toy_splits(tmp_path, train_per_class=2, val_per_class=1)
    out = tmp_path / "probe"
    out.mkdir()
    stale = out / f".{linear.CHECKPOINT}.abc123.tmp"  # what write_atomic leaves when killed mid-write
    stale.write_bytes(b"PK half")
    linear.main(eval_config(out, train, val, **{"linear.epochs": 1}))
    assert not stale.exists() and read_checkpoint(out / linear.CHECKPOINT)["epoch"] == 1
