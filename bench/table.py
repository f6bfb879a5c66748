"""One table format for every benchmark: name, measured ratio, goal, pass/fail."""

from __future__ import annotations


def report(rows: list[dict]) -> None:
    """rows: {'name', 'ratio', 'goal', 'ok' (True/False, or None for information only)}."""
    width = max(len(r["name"]) for r in rows)
    print(f"{'benchmark':<{width}}  {'ratio':>8}  {'goal':<28}  result")
    for r in rows:
        verdict = "info" if r["ok"] is None else ("PASS" if r["ok"] else "FAIL")
        print(f"{r['name']:<{width}}  {r['ratio']:>8.3g}  {r['goal']:<28}  {verdict}")
