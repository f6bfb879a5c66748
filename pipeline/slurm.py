"""Run any entry point of the project as a SLURM job through submitit, requeued on preemption.

    python -m pipeline.slurm --partition learnfair --nodes 1 --gpus-per-node 8 --hours 72 \\
        -- pretrain.train --config pretrain/configs/imagenet_100ep.yaml data.train_dir=/data/imagenet/train
    python -m pipeline.slurm --partition learnfair --hours 24 -- pipeline.run --config pipeline/configs/paper_200ep.yaml

Everything after `--` is `MODULE ARGS...`, run in the job as `python -m MODULE ARGS...`. One task
per GPU: each task gets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from SLURM, which
is all `core.distributed.init_distributed` reads, so DDP needs no torchrun. On preemption or time-out
SLURM signals the job (USR2, 120 s ahead); the stage's loop finishes its step, saves and exits 75
(core/preemption.py), then submitit requeues the same command, and because every stage resumes from
the most advanced checkpoint in its output dir, re-running the command is the resume.
`--local DIR` runs the job on this machine with submitit's local executor (for tests). Without
arguments the help is printed (exit 2: no job was given).
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys

import submitit

from core.cli import Command, fail


class ResumableCommand(submitit.helpers.Checkpointable):
    """`python -m MODULE ARGS` run in the job's own process. Checkpointable's default checkpoint()
    resubmits the same command, which resumes from the stage's checkpoints."""

    def __init__(self, module: str, args: list[str]):
        self.module, self.args = module, list(args)

    def __call__(self) -> None:
        if submitit.JobEnvironment().num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export()  # RANK, WORLD_SIZE, MASTER_* for DDP
        sys.argv = [self.module, *self.args]
        # submitit's preemption signal (USR2 unless $SUBMITIT_PREEMPT_SIGNAL) must not interrupt a
        # training step: our loops take it over (core.preemption), save at the next step boundary and
        # exit REQUEUE_EXIT; then submitit's own handler requeues the job. SIGTERM takes the same path.
        sig = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG.upper().removeprefix("SIG"))
        requeue = signal.getsignal(sig)
        os.environ["SIMSIAM_PREEMPT_SIGNALS"] = sig.name
        try:
            # In-process, not a subprocess: a child process would outlive the requeue. An entry point's
            # exit 2 on bad input fails the job.
            runpy.run_module(self.module, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            from core.preemption import REQUEUE_EXIT  # torch: imported in the job, not by the launcher's --help

            if e.code == REQUEUE_EXIT and callable(requeue):
                requeue(sig, None)  # submitit: log, resubmit this command, exit (rank 0; other ranks return)
            raise


def executor(args: argparse.Namespace) -> submitit.Executor:
    if args.local:
        ex = submitit.LocalExecutor(folder=args.local)
        ex.update_parameters(timeout_min=int(args.hours * 60))
        return ex
    ex = submitit.AutoExecutor(folder=args.log_dir, slurm_max_num_timeout=args.max_requeues)
    ex.update_parameters(
        name=args.name, nodes=args.nodes, gpus_per_node=args.gpus_per_node, tasks_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task, timeout_min=int(args.hours * 60), slurm_partition=args.partition,
        slurm_signal_delay_s=120,  # time between the warning signal and the kill: enough to write a checkpoint
    )
    return ex


def command() -> Command:
    cmd = Command("python -m pipeline.slurm", __doc__, overrides=False)
    cmd.add_argument("--partition", default="", help="SLURM partition")
    cmd.add_argument("--nodes", type=int, default=1, help="nodes of the job")
    cmd.add_argument("--gpus-per-node", type=int, default=8, help="GPUs, and tasks (processes), per node")
    cmd.add_argument("--cpus-per-task", type=int, default=10, help="CPUs per task")
    cmd.add_argument("--hours", type=float, default=72.0, help="time limit of one allocation; requeued after it")
    cmd.add_argument("--max-requeues", type=int, default=20, help="time-outs after which the job gives up")
    cmd.add_argument("--name", default="simsiam", help="job name")
    cmd.add_argument("--log-dir", default="runs/slurm_logs", help="submitit's logs and job files")
    cmd.add_argument("--local", metavar="DIR",
                     help="run here with submitit's local executor, logs in DIR (default: submit to SLURM)")
    return cmd


def parse_args(argv=None) -> tuple[argparse.Namespace, str, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = command()
    if not argv:  # nothing to submit: show what the command takes
        cmd.print_help(sys.stderr)
        sys.exit(2)
    split = argv.index("--") if "--" in argv else len(argv)
    args = cmd.parse(argv[:split])  # -h/--help prints the help and exits 0 here
    if split >= len(argv) - 1:
        fail("no job given: put `-- MODULE [ARGS...]` after the options, e.g. -- pipeline.run --config demo.yaml; "
             "see python -m pipeline.slurm --help")
    module, *rest = argv[split + 1:]
    return args, module, rest


def main(argv=None) -> submitit.Job:
    args, module, rest = parse_args(argv)
    job = executor(args).submit(ResumableCommand(module, rest))
    print(f"submitted job {job.job_id}: python -m {module} {' '.join(rest)}")
    return job


if __name__ == "__main__":
    main()
