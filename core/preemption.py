"""Save-and-exit on preemption: SIGTERM and SIGUSR1 set a flag, the loops stop at the next step boundary.

SLURM (and Kubernetes, and torchrun's agent when it is told to stop) sends SIGTERM, or the signal
chosen with `--signal=USR1@120`, some time before it kills a job. A handler that raised inside a
training step could interrupt torch.save or a collective; this one only records the signal. Each
loop calls `should_stop()` after its step (and after its save logic), writes its resumable
checkpoint and raises `Preempted`, which exits with REQUEUE_EXIT.

REQUEUE_EXIT is 75 (EX_TEMPFAIL in sysexits.h: "try again later"): distinct from success (0), a bad
input (2, core.cli.run) and a crash (1, or 128+N for a signal death), so a launcher can requeue
on exactly this code (pretrain/run.sh and pipeline/run.py pass it on; pipeline/slurm.py turns it into
submitit's requeue).

Under DDP every rank must stop at the same step, or the collective save would hang: the flag is
all-reduced (max) at each check, so a signal delivered to any one rank stops all of them together.

Signals held by core.files.signals_deferred during a checkpoint write are re-raised after the
write and land in this handler: the run then saves once more at the step boundary and exits cleanly.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import torch
import torch.distributed as dist

from core.distributed import world_size

REQUEUE_EXIT = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def preemption_signals() -> list[int]:
    """SIGTERM, SIGUSR1 and those named in $SIMSIAM_PREEMPT_SIGNALS (comma-separated, e.g. "USR2": what
    submitit's SLURM jobs receive; pipeline/slurm.py sets it)."""
    extra = [getattr(signal, f"SIG{n.strip().upper().removeprefix('SIG')}")
             for n in os.environ.get("SIMSIAM_PREEMPT_SIGNALS", "").split(",") if n.strip()]
    return list(dict.fromkeys([*SIGNALS, *extra]))


class Preempted(SystemExit):
    """The run saved its state after a preemption signal; exit status REQUEUE_EXIT, re-run to resume."""

    def __init__(self, message: str):
        super().__init__(REQUEUE_EXIT)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PreemptionFlag:
    """Records the preemption signals (preemption_signals()); `should_stop` is the collective check."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        self.signum = signum  # only record: the loop saves at its next step boundary

    def install(self) -> PreemptionFlag:
        if threading.current_thread() is threading.main_thread():  # only the main thread may install handlers
            for s in preemption_signals():
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def restore(self) -> None:
        """Put back the handlers found at install (tests and in-process callers run several stages)."""
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def should_stop(self, device: torch.device | str = "cpu") -> bool:
        """True on every rank as soon as any rank got a signal (all ranks must call it at the same step)."""
        local = self.signum is not None
        if world_size() == 1:
            return local
        t = torch.tensor([1 if local else 0], dtype=torch.int32, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def exit(self, message: str) -> None:
        """Print why and where the state is, restore the handlers, raise Preempted (exit REQUEUE_EXIT)."""
        name = signal.Signals(self.signum).name if self.signum else "another rank's signal"
        text = f"{message} (got {name}; exit {REQUEUE_EXIT} = requeue; re-run the same command to resume)"
        print(text, file=sys.stderr, flush=True)
        note = os.environ.get("SIMSIAM_PREEMPTED_FILE")  # set by pretrain/run.sh: torchrun hides our exit code
        if note:
            with open(note, "a") as f:
                f.write(text + "\n")
        self.restore()
        raise Preempted(text)


def wait_forwarding(proc) -> int:
    """Wait for a child process, passing SIGTERM/SIGUSR1 on to it (the pipeline runner's stages): the
    child saves and exits REQUEUE_EXIT, and the caller passes that code on. Ctrl-C needs no forwarding:
    the terminal sends SIGINT to the whole foreground process group."""
    if threading.current_thread() is not threading.main_thread():
        return proc.wait()
    previous = {s: signal.signal(s, lambda signum, frame: proc.send_signal(signum)) for s in preemption_signals()}
    try:
        return proc.wait()  # retried after each handler (PEP 475)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
