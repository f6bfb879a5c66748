"""Under torchrun with restarts allowed, a rank killed mid-run brings the job back from the last
checkpoint (2 gloo processes), and it ends with the weights of an uninterrupted run."""

import subprocess

from core.checkpoint import read_checkpoint
from pretrain.loop import LAST
from tests.helpers import PRETRAIN_DEFAULTS, REPO, tiny_overrides
from tests.helpers import assert_same_weights, fault_env

RUN = {"optim.epochs": 1, "train.save_every_steps": 1}  # 4 steps of 4 images per rank


def _run_sh(out, folder, *launcher, **faults):
    return subprocess.run(["bash", str(REPO / "pretrain/run.sh"), "--standalone", "--nproc_per_node", "2", *launcher,
                           "--config", str(PRETRAIN_DEFAULTS), *tiny_overrides(out, folder, **RUN)],
                          cwd=REPO, env=fault_env(**faults), capture_output=True, text=True, timeout=400, check=False)


def test_killed_rank_restarts_from_last_checkpoint(tmp_path, tiny_folder):
    straight, out, marker = tmp_path / "straight", tmp_path / "restarted", tmp_path / "killed_once"
    proc = _run_sh(straight, tiny_folder)
    assert proc.returncode == 0, proc.stderr[-3000:]

    proc = _run_sh(out, tiny_folder, "--max_restarts", "1",
                   FAULT_KILL_RANK=1, FAULT_KILL_AT_STEP=3, FAULT_MARKER=marker)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert marker.exists()  # rank 1 did die (SIGKILL at its 3rd step)
    # the restarted workers resumed from the checkpoint written after step 2, not from scratch
    assert "resumed from checkpoint_last.pth.tar (epoch 0, step 2)" in proc.stdout
    assert read_checkpoint(out / LAST)["global_step"] == 4
    assert_same_weights(straight / "checkpoint_0001.pth.tar", out / "checkpoint_0001.pth.tar")
