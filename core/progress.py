"""Progress of long loops, the same way in every stage.

On a terminal (stderr is a TTY) a tqdm bar redraws in place. Anywhere else (a log file, a pipe, a
SLURM job, the pipeline forwarding a stage's output) nothing is redrawn: no '\\r' ever reaches a log.
Instead one plain line every SIMSIAM_PROGRESS_S seconds (default 30; 0 turns the lines off) says how
far the loop is, its throughput and the time left:

    epoch 3: 1200/5004 step (24%), 3.41 step/s, ETA 18m35s, loss 0.6812

A finished job ends with `say_outputs(job, folder)`: one last line saying where its outputs are.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Iterable, Iterator, TextIO

ENV_INTERVAL = "SIMSIAM_PROGRESS_S"
DEFAULT_INTERVAL_S = 30.0


def is_terminal(stream: TextIO | None = None) -> bool:
    """True when `stream` (default stderr) is an interactive terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def interval_s() -> float:
    """Seconds between plain progress lines: $SIMSIAM_PROGRESS_S, else 30."""
    raw = os.environ.get(ENV_INTERVAL, "")
    try:
        return max(float(raw), 0.0) if raw.strip() else DEFAULT_INTERVAL_S
    except ValueError:
        return DEFAULT_INTERVAL_S


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Counts items of one loop; a bar on a terminal, a periodic plain line elsewhere, silent when disabled.

    Use as `for x in Progress(loader, desc="epoch 0", unit="step")` or with update(n); set_postfix()
    adds values (e.g. the loss) to what is shown. `clock` is replaceable for tests."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", enabled: bool = True, stream: TextIO | None = None,
                 interval: float | None = None, clock: Callable[[], float] = time.monotonic):
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except TypeError:  # a loader without a length: counts and rate, no ETA
                total = None
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval_s() if interval is None else interval
        self.clock = clock
        self.done = 0
        self.postfix: dict = {}
        self.start = self.last_line = clock()
        self.bar = None
        self.enabled = enabled
        if enabled and is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=self.stream)

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:  # also when the loop leaves early (a return, an error): the bar is cleared
            self.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
        elif self.interval > 0 and self.clock() - self.last_line >= self.interval:
            self.last_line = self.clock()
            print(self.line(), file=self.stream, flush=True)

    def set_postfix(self, **values) -> None:
        self.postfix.update(values)
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)

    def line(self) -> str:
        """`desc: done/total unit (pct), rate unit/s, ETA t[, postfix]`: what the periodic line says."""
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.done}/{self.total} {self.unit} ({100 * self.done / max(self.total, 1):.0f}%)"
                 if self.total else f"{self.done} {self.unit}", f"{rate:.3g} {self.unit}/s"]
        if self.total and rate > 0:
            parts.append(f"ETA {format_duration(max(self.total - self.done, 0) / rate)}")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        return f"{self.desc}: " + ", ".join(parts) if self.desc else ", ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def say_outputs(job: str, folder) -> None:
    """The last line of a finished job: where its outputs are (stdout, beside the job's other lines)."""
    print(f"{job}: outputs in {folder}", flush=True)
