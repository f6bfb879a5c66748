"""The SLURM launcher, proven with submitit's local executor: a preempted job is requeued and
resumes to exactly the weights of an uninterrupted run."""

import os
import signal
import time
from pathlib import Path

import torch

from core.checkpoint import read_checkpoint
from pipeline import slurm
from pretrain.loop import LAST, main
from tests.helpers import PRETRAIN_DEFAULTS, tiny_config, tiny_overrides

RUN = {"optim.epochs": 6, "train.save_every_steps": 1}


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc): the job's task under submitit's local controller."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_preempted_job_is_requeued_and_resumes(tmp_path, tiny_folder):
    straight = tmp_path / "straight"
    main(tiny_config(straight, tiny_folder, **RUN))

    out = tmp_path / "job"
    job = slurm.main(["--local", str(tmp_path / "logs"), "--hours", "0.5", "--",
                      "pretrain.train", "--config", str(PRETRAIN_DEFAULTS), *tiny_overrides(out, tiny_folder, **RUN)])
    deadline = time.time() + 240
    while time.time() < deadline and not job.done():
        if (out / LAST).exists() and read_checkpoint(out / LAST)["global_step"] >= 3:
            break
        time.sleep(0.2)
    assert not job.done(), "the job finished before it could be preempted"
    # SLURM's preemption warning: USR2 to the job's task (the local controller itself only forwards TERM)
    (task,) = child_pids(job._process.pid)
    os.kill(task, signal.SIGUSR2)
    job.result()  # raises if the job failed; returns once the requeued run has finished
    log = "\n".join(p.read_text() for p in (tmp_path / "logs").glob("*_log.*"))
    assert "this job is preempted" in log and "Requeued job" in log and "resumed from checkpoint_" in log
    # USR2 went through core.preemption: the step finished, checkpoint_last was saved, then submitit requeued
    # (at a step, or at the epoch end when the signal lands after the epoch's last step)
    assert "pretrain: preempted " in log and "got SIGUSR2" in log
    a = read_checkpoint(straight / "checkpoint_0006.pth.tar")["state_dict"]
    b = read_checkpoint(out / "checkpoint_0006.pth.tar")["state_dict"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())
