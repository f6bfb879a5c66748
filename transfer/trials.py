"""Aggregate detection results over trials (seeds): mean and sample standard deviation.

The paper reports VOC as the mean of 5 trials (std ~0.2 AP); the sample std (n - 1 in the
denominator) is the unbiased-variance convention for so few runs. With one trial the std is
undefined and reported as None.
"""

from __future__ import annotations

import math
from pathlib import Path

from core import files
from core.stats import mean_std  # noqa: F401  (also this module's API: tests and callers import it here)

METRICS = ("AP", "AP50", "AP75")
# What results call each baseline: different networks (PROTOCOL.md section 9). scratch is the paper's row.
SCRATCH_LABEL, RANDOM_LABEL = "scratch (detectron2 init)", "random torchvision init"
TASK_NAMES = {"bbox": "box", "segm": "mask"}


def aggregate(trials: list[dict]) -> dict:
    """[{task: {metric: value}}] -> {task: {metric: {"mean", "std", "n", "values"}}} for AP/AP50/AP75."""
    if not trials:
        raise ValueError("no trials to aggregate")
    summary: dict = {}
    for task in trials[0]:
        if not isinstance(trials[0][task], dict) or not any(m in trials[0][task] for m in METRICS):
            continue
        summary[task] = {}
        for metric in METRICS:
            values = [float(t[task][metric]) for t in trials]
            mean, std = mean_std(values)
            summary[task][metric] = {"mean": mean, "std": std, "n": len(values), "values": values}
    return summary


def format_table(summary: dict) -> str:
    """One row per task: 'mean +- std' of AP, AP50, AP75 (in percent, as detectron2 reports)."""
    header = f"{'task':<6}" + "".join(f"{m:>16}" for m in METRICS) + f"{'trials':>8}"
    rows = [header]
    for task, metrics in summary.items():
        cells = []
        for m in METRICS:
            s = metrics[m]
            cells.append(f"{s['mean']:.2f}" + (f" +- {s['std']:.2f}" if s["std"] is not None else ""))
        n = next(iter(metrics.values()))["n"]
        rows.append(f"{TASK_NAMES.get(task, task):<6}" + "".join(f"{c:>16}" for c in cells) + f"{n:>8}")
    return "\n".join(rows)


def _finite_or_none(obj):
    """Strict JSON: NaN/inf (e.g. AP of a class absent from a tiny val set) become null."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(obj, path: str | Path) -> Path:
    """Strict JSON (NaN/inf as null) through the project's writer; creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return files.write_json(path, _finite_or_none(obj), allow_nan=False)
