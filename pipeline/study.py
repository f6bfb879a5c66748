"""The paper's empirical study on your data: run chosen ablation variants, plot Figure 2, tabulate.

    python -m pipeline.study [--studies stop_gradient,predictor/no_predictor | all] [--out-dir OUT]
                             [--config study_embedded_cpu.yaml] [--nproc-per-node N] [dotted.key=value ...]

OUT is the base config's out_dir (study_embedded_cpu.yaml: runs/study, under the current folder).
Each variant of pipeline/studies.yaml is one ordinary pretraining run (the `pretrain.train` entry
point, its checkpoints and metrics) in OUT/<study>/<variant>/: the base --config, then the
overrides given here, then the variant's own. A finished variant is skipped on a re-run and an
interrupted one resumes from its checkpoints. The collapse alarm is off (monitor.collapse_patience=0):
the study is there to show collapse, not to stop it; only the newest epoch checkpoint of each run is
kept (train.keep_checkpoints=1). Variants whose resolved configs are equal (the recipe appears in
most studies) are trained once. Then:

  OUT/study.md      one table per study: the paper's ImageNet number beside our final kNN top-1, loss,
                    std of l2-normalised z in units of 1/sqrt(d), and whether the run collapsed
  OUT/<study>.png   loss, z std (with the 1/sqrt(d) line) and kNN top-1 per epoch, one curve per variant
  OUT/figure2.png   the stop-gradient study: the paper's Figure 2

A random-init backbone's kNN top-1 (same monitor settings) is the floor every variant is read against.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import yaml

from core.config import ConfigError, load_config
from core.files import is_done, write_bytes, write_json, write_text
from core.cli import OUT_DIR, Command, UserError, run
from core.progress import say_outputs
from pipeline.report import fmt, plt, read_jsonl, save_plot, table
from pipeline.run import REPO, pretrain_command

STUDIES = Path(__file__).with_name("studies.yaml")
PRESETS = REPO / "pretrain/configs"
DEFAULT_CONFIG = PRESETS / "study_embedded_cpu.yaml"
# A run counts as collapsed when its final z std is below this fraction of 1/sqrt(d). Healthy runs
# stay near 1 (the paper's Figure 2: ~1/sqrt(d)); collapsing ones fall towards 0.
COLLAPSE_RATIO = 0.6


def load_studies(path: Path = STUDIES) -> dict:
    return yaml.safe_load(path.read_text())


def choose(studies: dict, names: str) -> dict[str, list[str]]:
    """'all', or comma-separated study names, each optionally narrowed to variants: 'predictor/no_predictor'."""
    chosen: dict[str, list[str]] = {}
    for item in (list(studies) if names == "all" else [n.strip() for n in names.split(",") if n.strip()]):
        name, _, variant = item.partition("/")
        if name not in studies:
            raise UserError(f"unknown study {name!r}; choose from {', '.join(studies)} or all")
        known = list(studies[name]["variants"])
        if variant and variant not in known:
            raise UserError(f"study {name} has no variant {variant!r}; its variants: {', '.join(known)}")
        chosen.setdefault(name, [])
        chosen[name] += [v for v in ([variant] if variant else known) if v not in chosen[name]]
    if not chosen:
        raise UserError(f"no study given; choose from {', '.join(studies)} or all")
    return chosen


def variant_overrides(base: list[str], variant: dict, out_dir: Path) -> list[str]:
    # Only the newest epoch checkpoint is kept (a study trains dozens of runs; the curves are in
    # metrics.jsonl), unless the given overrides say otherwise.
    return ["train.keep_checkpoints=1", *base, "monitor.collapse_patience=0", *variant["overrides"],
            f"out_dir={out_dir}"]


def pretrain_finished(run_dir: Path) -> bool:
    """The pretraining run in run_dir finished (its done.json; `done` from before done.json)."""
    return is_done(run_dir, "pretrain") or (run_dir / "done").exists()


def run_variant(cmd_prefix: list, config: Path, overrides: list[str], out_dir: Path) -> str:
    """Run (or resume) one variant; returns its status: done, or why it did not finish."""
    if pretrain_finished(out_dir):
        return "done"
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(c) for c in [*cmd_prefix, "--config", config, *overrides]]
    print(f"[study] $ {' '.join(cmd)}", flush=True)
    # the caller's working directory, as pipeline.run's stages (the paths here are absolute)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PYTHON": sys.executable}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    tail = b""
    while chunk := os.read(proc.stderr.fileno(), 1 << 14):  # passed through live: the progress bars
        sys.stderr.write(chunk.decode(errors="replace"))
        tail = (tail + chunk)[-(1 << 16):]  # the run's one-line error is its last output
    if proc.wait() == 0:
        return "done"
    errors = [line for line in tail.decode(errors="replace").splitlines() if line.startswith("error: ")]
    return f"stopped: {errors[-1][7:]}" if errors else f"failed (exit {proc.returncode})"


def random_init_knn(config: Path, overrides: list[str], out: Path) -> float | None:
    """kNN top-1 of the base config's backbone at random init, with the monitor's data and (k, T)."""
    cached = out / "random_init_knn.json"
    if cached.exists():
        return json.loads(cached.read_text())["knn_top1"]
    import torch

    from core.distributed import DistInfo
    from core.images import eval_transform
    from core.knn_monitor import knn_monitor, knn_sets
    from core.models import build_model

    cfg = load_config(config, overrides)
    sets = knn_sets(cfg, eval_transform(cfg.data.crop_size))
    if sets is None:
        return None
    torch.manual_seed(cfg.seed)
    top1 = knn_monitor(build_model(cfg), cfg, DistInfo(0, 1, 0, torch.device("cpu")), sets)
    write_json(cached, {"knn_top1": top1, "arch": cfg.arch, "k": cfg.monitor.knn_k, "T": cfg.monitor.knn_t}, indent=None)
    return top1


def run_key(cfg: dict) -> str:
    """What makes two variants the same training run: their resolved configs, output dir aside."""
    return json.dumps({k: v for k, v in cfg.items() if k != "out_dir"}, sort_keys=True, default=str)


def finished_runs(out: Path) -> dict[str, Path]:
    """The runs a previous study command finished in `out`, by run_key of the config they saved."""
    found = {}
    for saved in sorted(out.glob("*/*/config.yaml")):
        if pretrain_finished(saved.parent):
            found.setdefault(run_key(yaml.safe_load(saved.read_text())), saved.parent)
    return found


def summarise(run_dir: Path, dim: int) -> dict:
    """Final numbers of one variant's run from its metrics.jsonl (None where it wrote none)."""
    records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "epoch" in r]
    knn = [r["knn_top1"] for r in records if "knn_top1" in r]
    last = records[-1] if records else {}
    ratio = last["z_std"] * math.sqrt(dim) if records else None
    return {"epochs": len(records), "loss": last.get("loss"), "z_std": last.get("z_std"), "z_std_ratio": ratio,
            "knn_top1": knn[-1] if knn else None, "collapsed": None if ratio is None else ratio < COLLAPSE_RATIO,
            "records": records}


def study_figure(out: Path, name: str, title: str, results: dict, baseline: float | None) -> Path:
    """Three panels like the paper's Figure 2: training loss, z std, kNN top-1 per epoch.

    z std is drawn in units of its healthy value 1/sqrt(d) (the line at 1), so variants of different
    d share one scale; a loss on another scale than the cosine's [-1, 1] (the cross-entropy similarity,
    about log d) gets its own right-hand axis instead of flattening the others; short series get markers
    and the epoch axis integer ticks."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    other_scale = None  # the twin axis of the losses outside [-1, 1]
    for index, (label, res) in enumerate(results.items()):
        recs = res["records"]
        if not recs:
            continue
        style = dict(label=label, color=f"C{index % 10}", marker="o" if len(recs) <= 20 else None, markersize=3)
        epochs = [r["epoch"] for r in recs]
        losses = [r["loss"] for r in recs]
        if max(abs(v) for v in losses) > 1.0 + 1e-6:  # not a cosine loss
            other_scale = other_scale or axes[0].twinx()
            other_scale.plot(epochs, losses, linestyle="--", **style)
        else:
            axes[0].plot(epochs, losses, **style)
        axes[1].plot(epochs, [r["z_std"] * math.sqrt(res["dim"]) for r in recs], **style)
        knn = [r for r in recs if "knn_top1" in r]
        axes[2].plot([r["epoch"] for r in knn], [r["knn_top1"] for r in knn], **{**style, "marker": "o"})
    if other_scale is not None:
        other_scale.set_ylabel("loss, dashed: cross-entropy (nats)")
    axes[1].axhline(1.0, color="gray", linestyle="--", linewidth=0.8)
    axes[1].axhline(COLLAPSE_RATIO, color="gray", linestyle=":", linewidth=0.8)
    axes[1].text(0.02, 0.02, f"dashed: healthy (1/sqrt(d)); dotted: collapse line {COLLAPSE_RATIO}",
                 transform=axes[1].transAxes, fontsize=7, color="gray")
    if baseline is not None:
        axes[2].axhline(baseline, color="gray", linestyle="--", linewidth=0.8)
        axes[2].text(0.02, 0.02, "dashed: random init", transform=axes[2].transAxes, fontsize=7, color="gray")
    ylabels = ("loss, solid: negative cosine (min -1)", "std of l2-normalised z x sqrt(d)", "kNN top-1 (%)")
    for ax, ylabel in zip(axes, ylabels):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles, labels = ax.get_legend_handles_labels()
        if ax is axes[0] and other_scale is not None:  # one legend for the losses of both axes
            more = other_scale.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        ax.legend(handles, labels, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_plot(fig, out / f"{name}.png")


def write_study_md(out: Path, studies: dict, chosen: dict, results: dict, baseline, setup: str) -> Path:
    lines = ["# SimSiam empirical study", "", setup, "",
             f"Random-init backbone, kNN top-1 with the same monitor: {fmt(baseline)} (the floor to read "
             "every variant against). The paper's column is 100-epoch ImageNet linear top-1 (PROTOCOL.md "
             f"section 2): a reference for the direction of each effect, not a comparable number. "
             f"Collapsed: final z std below {COLLAPSE_RATIO} x 1/sqrt(d).", ""]
    for name, keys in chosen.items():
        lines += [f"## {studies[name]['title']}", "", f"![{name}]({name}.png)", ""]
        rows = []
        for key in keys:
            variant = studies[name]["variants"][key]
            r = results[name][variant["label"]]
            rows.append([variant["label"], " ".join(f"`{o}`" for o in variant["overrides"]) or "(recipe)",
                         fmt(variant["paper"], 1), fmt(r["knn_top1"], 1), fmt(r["loss"], 3),
                         fmt(r["z_std_ratio"], 2), {True: "yes", False: "no", None: "n/a"}[r["collapsed"]],
                         r["status"]])
        lines += table(["variant", "switches", "paper top-1", "kNN top-1", "final loss", "z std x sqrt(d)",
                        "collapsed", "run"], rows) + [""]
    return write_text(out / "study.md", "\n".join(lines) + "\n")


def main(names: str, out: Path, config: Path, overrides: list[str], nproc_per_node: int = 1) -> Path:
    studies = load_studies()
    chosen = choose(studies, names)
    from pretrain.train import load as load_pretrain  # the rules pretrain.train applies to every variant

    try:
        base_cfg = load_pretrain(config, overrides)
    except ConfigError as e:
        raise UserError(f"study base config: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    baseline = random_init_knn(config, overrides, out)
    cmd_prefix = pretrain_command(nproc_per_node)
    trained = finished_runs(out)
    results = {}
    for name, keys in chosen.items():
        results[name] = {}
        for key in keys:
            variant = studies[name]["variants"][key]
            run_dir = out / name / key
            ov = variant_overrides(overrides, variant, run_dir)
            cfg = load_config(config, ov)
            same = run_key(cfg.to_dict())
            if same in trained and trained[same] != run_dir:
                # The recipe is a variant of nearly every study: train each distinct config once.
                run_dir, status = trained[same], f"same run as {trained[same].relative_to(out)}"
            else:
                status = run_variant(cmd_prefix, config, ov, run_dir)
                trained.setdefault(same, run_dir)
            results[name][variant["label"]] = {**summarise(run_dir, cfg.model.dim), "status": status,
                                               "dim": cfg.model.dim}
        study_figure(out, name, studies[name]["title"], results[name], baseline)
    if "stop_gradient" in chosen:
        write_bytes(out / "figure2.png", (out / "stop_gradient.png").read_bytes())
    setup = (f"Base config `{Path(config).relative_to(REPO) if Path(config).is_relative_to(REPO) else config}` "
             f"with {' '.join(f'`{o}`' for o in overrides) or 'no overrides'}: {base_cfg.arch}, "
             f"{base_cfg.data.crop_size} px, batch {base_cfg.optim.batch_size}, {base_cfg.optim.epochs} epochs, "
             f"kNN k={base_cfg.monitor.knn_k} T={base_cfg.monitor.knn_t}.")
    path = write_study_md(out, studies, chosen, results, baseline, setup)
    write_json(out / "study.json",
               {name: {label: {k: v for k, v in r.items() if k != "records"} for label, r in res.items()}
                for name, res in results.items()} | {"random_init_knn_top1": baseline})
    print(f"[study] {path}")
    say_outputs("study", out)
    return path


def command() -> Command:
    cmd = Command("python -m pipeline.study", __doc__, default_config=DEFAULT_CONFIG, presets=PRESETS,
                  flags=(OUT_DIR,))
    cmd.add_argument("--studies", default="stop_gradient,predictor",
                     help="comma-separated names from pipeline/studies.yaml, or all")
    cmd.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                     help="processes per variant (DDP through pretrain/run.sh)")
    return cmd


def cli(argv=None) -> None:
    a = command().parse(argv)

    def study() -> Path:
        # out_dir names the study folder here; each variant's own out_dir is set below it
        out = Path(load_config(a.config, a.overrides).out_dir).resolve()
        overrides = [o for o in a.overrides if not o.startswith("out_dir=")]
        return main(a.studies, out, Path(a.config).resolve(), overrides, a.nproc_per_node)

    run(study)


if __name__ == "__main__":
    cli()
