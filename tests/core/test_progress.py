"""core/progress.py: a bar only on a terminal; elsewhere a plain periodic line with rate and ETA, never '\\r'."""

from __future__ import annotations

import io

import pytest

from core import progress
from core.progress import Progress, say_outputs


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_prints_plain_periodic_lines_with_rate_and_eta():
    out, clock = io.StringIO(), FakeClock()
    bar = Progress(total=100, desc="epoch 0", unit="step", stream=out, interval=30, clock=clock)
    for _ in range(10):  # 10 steps in 20 s: not yet a line
        clock.now += 2
        bar.update()
    assert out.getvalue() == ""
    for _ in range(10):  # 20 steps in 40 s: one line, at the step that crosses 30 s
        clock.now += 2
        bar.update()
    bar.set_postfix(loss="0.5000")
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines == ["epoch 0: 15/100 step (15%), 0.5 step/s, ETA 2m50s"]
    clock.now += 30
    bar.update(5)
    assert out.getvalue().splitlines()[-1] == "epoch 0: 25/100 step (25%), 0.357 step/s, ETA 3m30s, loss 0.5000"
    assert "\r" not in out.getvalue()


def test_iterating_counts_items_and_a_loader_without_length_has_no_eta():
    out, clock = io.StringIO(), FakeClock()

    def items():
        for i in range(4):
            clock.now += 10
            yield i

    assert list(Progress(items(), desc="data", unit="img", stream=out, interval=15, clock=clock)) == [0, 1, 2, 3]
    assert out.getvalue().splitlines() == ["data: 2 img, 0.1 img/s", "data: 4 img, 0.1 img/s"]


def test_disabled_or_zero_interval_prints_nothing():
    out, clock = io.StringIO(), FakeClock()
    for bar in (Progress(total=3, stream=out, enabled=False, interval=1, clock=clock),
                Progress(total=3, stream=out, interval=0, clock=clock)):
        clock.now += 100
        bar.update(3)
        bar.close()
    assert out.getvalue() == ""


def test_a_terminal_gets_a_redrawn_bar():
    term = Terminal()
    bar = Progress(range(3), desc="epoch 0", unit="step", stream=term)
    assert bar.bar is not None
    assert list(bar) == [0, 1, 2]
    assert "\r" in term.getvalue() and bar.bar is None  # closed at the end of the loop


def test_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(progress.ENV_INTERVAL, "5")
    assert progress.interval_s() == 5.0
    monkeypatch.setenv(progress.ENV_INTERVAL, "soon")
    assert progress.interval_s() == progress.DEFAULT_INTERVAL_S
    monkeypatch.delenv(progress.ENV_INTERVAL)
    assert progress.interval_s() == 30.0


@pytest.mark.parametrize("seconds, text", [(5, "5s"), (65, "1m05s"), (3725, "1h02m")])
def test_durations(seconds, text):
    assert progress.format_duration(seconds) == text


def test_outputs_line(capsys):
    say_outputs("pretrain", "/runs/a")
    assert capsys.readouterr().out == "pretrain: outputs in /runs/a\n"
