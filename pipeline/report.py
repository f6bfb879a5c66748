"""One Markdown report (plus PNG plots) of a pipeline run directory.

    python -m pipeline.report RUN [--dataset embedded] [--protocol protocol.json]

RUN is the run folder reported on (pipeline.run's out_dir), given positionally: it is what the command
reads, not an output folder of its choosing (hence no --out-dir); the report always goes to RUN/report/.
A folder that holds none of a run's files is refused (exit 2), never created.

Reads only the stage result files the runner leaves in RUN/ (pretrain/metrics.jsonl, eval/<backbone>/*.json,
detection/<job>/<backbone>/trials_summary.json and trial0/metrics.json, manifest.json) and the paper's
numbers in pipeline/references.yaml; writes RUN/report/report.md and RUN/report/*.png. A stage whose files
are absent is reported as "not run" instead of failing, because partial runs are the normal case while a
pipeline is being brought up.

`protocol` describes what the run actually used, so the report can tell whether the paper's numbers are
comparable at all:
    {"dataset": "embedded",                 # pretraining data ("imagenet" to match the paper)
     "pretrain_epochs": 100,                # optional: default = optim.epochs of pretrain/config.yaml
     "detection": {"voc": {"benchmark": "VOC07+12", "dataset": "...", "schedule": "..."},
                   "coco": {"dataset": "...", "schedule": "..."}}}
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the report is written on servers without a display
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from core.cli import Command, UserError, run  # noqa: E402
from core.files import save_figure, write_text  # noqa: E402
from transfer.trials import RANDOM_LABEL, SCRATCH_LABEL  # noqa: E402
from core.stats import ONE_TRIAL, decode_correct, paired_bootstrap, resolvable_difference, welch  # noqa: E402

REFERENCES = Path(__file__).with_name("references.yaml")
# Rows of the pipeline's own, in table order; every other folder under RUN/eval/ or RUN/detection/<job>/
# (an outside checkpoint of pipeline.run's `checkpoints`) follows them by name.
ROW_ORDER = ("pretrained", "scratch", "random", "supervised")
# detection: scratch is detectron2's own init, the paper's scratch row (PROTOCOL.md section 9); random,
# a converted random torchvision network, is another baseline and shown only when it ran
DET_BACKBONES = ("pretrained", "scratch", "random")
DET_LABELS = {"pretrained": "pretrained", "scratch": SCRATCH_LABEL, "random": RANDOM_LABEL}
BOOTSTRAP_SAMPLES = 10000
JOBS = ("voc", "coco")
METRICS = ("AP", "AP50", "AP75")
TASK_NAMES = {"bbox": "box", "segm": "mask"}
NOT_RUN = "not run"
# Which Table 5 column(s) each detection job is compared with; (benchmark, task key in trials_summary).
DEFAULT_BENCHMARKS = {"voc": [("VOC07+12", "bbox")], "coco": [("COCO box", "bbox"), ("COCO mask", "segm")]}
SECTIONS = ("Run summary", "Pretraining", "Classification", "Detection", "Paper reference", "Plots")


# ----------------------------------------------------------------------------- reading


def read_json(path: Path):
    """The parsed file, or None when the stage did not write it (or left it unreadable)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    """JSON lines; a torn last line (a run killed mid-write) is skipped rather than fatal."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except (FileNotFoundError, yaml.YAMLError):
        return None


def row_names(run_dir: Path, parent: Path, always: tuple) -> list[str]:
    """The inits of one table: ours when the run pretrained (listed as not run until its results exist), the
    `always` baselines, then every backbone folder under `parent` (supervised, outside checkpoints). A run
    without pretraining (pipeline.run pretrain.enabled=false) has no pretrained row."""
    found = {p.name for p in parent.iterdir() if p.is_dir()} if parent.is_dir() else set()
    found |= set(always) | ({"pretrained"} if (run_dir / "pretrain").is_dir() else set())
    return [n for n in ROW_ORDER if n in found] + sorted(found - set(ROW_ORDER))


def load_eval(run_dir: Path, backbone: str) -> dict | None:
    """{"knn": ..., "linear": ..., "fast_probe": ...} (each a result dict or None), None if nothing ran.

    eval.all writes summary.json holding all three; the single-protocol CLIs write knn.json etc. alone,
    so the separate files are the fallback.
    """
    folder = run_dir / "eval" / backbone
    summary = read_json(folder / "summary.json") or {}
    found = {name: summary.get(name) or read_json(folder / f"{name}.json") for name in ("knn", "linear", "fast_probe")}
    return found if any(found.values()) else None


def d2_facts(config: dict | None) -> dict | None:
    """What decides whether a detection job is the paper's: datasets and schedule, from the run's own
    detectron2 config (OUTPUT_DIR/config.yaml, which the trainer writes with every override applied)."""
    if not config:
        return None
    data, solver = config.get("DATASETS") or {}, config.get("SOLVER") or {}
    return {"train": list(data.get("TRAIN") or []), "test": list(data.get("TEST") or []),
            "max_iter": solver.get("MAX_ITER"), "steps": list(solver.get("STEPS") or []) or None,
            "ims_per_batch": solver.get("IMS_PER_BATCH")}


def load_detection(run_dir: Path, job: str, backbone: str) -> dict | None:
    """{"summary": trials_summary.json's summary, "seeds": [...], "loss": [(iteration, total_loss)], "d2": the
    job's datasets and schedule (d2_facts), "init": how the backbone started} or None."""
    folder = run_dir / "detection" / job / backbone
    trials = read_json(folder / "trials_summary.json")
    if not trials:
        return None
    # detectron2's metrics.json also holds evaluation lines without total_loss: keep training lines only.
    loss = [(r["iteration"], r["total_loss"]) for r in read_jsonl(folder / "trial0" / "metrics.json")
            if "iteration" in r and "total_loss" in r]
    finetune = read_yaml(folder / "finetune_config.yaml") or {}
    return {"summary": trials.get("summary", {}), "seeds": trials.get("seeds"), "loss": loss,
            "d2": d2_facts(read_yaml(folder / "config.yaml")), "init": finetune.get("init") or trials.get("init"),
            "format": finetune.get("checkpoint_format_detected"),
            "normalization": (finetune.get("input_normalization") or {}).get("name")}


def load_references(path: Path = REFERENCES) -> dict:
    return yaml.safe_load(path.read_text())


# ----------------------------------------------------------------------------- formatting


def fmt(value, digits: int = 2) -> str:
    """The one number format of the report (the test formats file values with it to check equality)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.{digits}f}"


def interval_cell(cmp: dict) -> str:
    return "n/a" if cmp["interval"] is None else f"[{cmp['interval'][0]:+.2f}, {cmp['interval'][1]:+.2f}]"


def verdict_cell(cmp: dict, a: str, b: str) -> str:
    """The one wording of a comparison's outcome: a tie is marked as one, never as a win."""
    if cmp["interval"] is None:
        return cmp.get("note") or ONE_TRIAL
    if cmp["tie"]:
        return "**tie** (95% interval contains 0)"
    return f"{a} higher" if cmp["diff"] > 0 else f"{b} higher"


def fmt_delta(ours, ref) -> str:
    if ours is None or ref is None:
        return "n/a"
    return f"{ours - ref:+.2f}"


def mean_std_cell(stat: dict | None) -> str:
    """'mean +- std'; a single trial has no std (trials.py stores None), so only the mean is shown."""
    if not stat:
        return NOT_RUN
    std = stat.get("std")
    return fmt(stat["mean"]) + (f" +- {fmt(std)}" if std is not None else "")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def bullets(obj, indent: int = 0, max_depth: int = 3) -> list[str]:
    """A nested dict/list as Markdown bullets; deeper levels are summarised so huge configs stay readable."""
    pad = "  " * indent
    if isinstance(obj, dict):
        lines = []
        for key, value in obj.items():
            if isinstance(value, (dict, list)) and value:
                if indent + 1 >= max_depth:
                    lines.append(f"{pad}- {key}: ({len(value)} entries)")
                else:
                    lines.append(f"{pad}- {key}:")
                    lines += bullets(value, indent + 1, max_depth)
            else:
                lines.append(f"{pad}- {key}: `{value}`")
        return lines
    if isinstance(obj, list):
        return [line for item in obj for line in (bullets(item, indent, max_depth) if isinstance(item, (dict, list))
                                                  else [f"{pad}- `{item}`"])]
    return [f"{pad}- `{obj}`"]


# ----------------------------------------------------------------------------- comparability


def run_epochs(protocol: dict, pretrain_config: dict | None):
    if "pretrain_epochs" in protocol:
        return protocol["pretrain_epochs"]
    return ((pretrain_config or {}).get("optim") or {}).get("epochs")


def differences(run: dict, ref: dict) -> list[str]:
    """Human-readable list of protocol items in which the run differs from a reference; empty = comparable.

    A missing run item counts as a difference: a comparison we cannot vouch for must not look valid.
    """
    diffs = []
    for key, ref_value in ref.items():
        ours = run.get(key)
        if ours is None or str(ours).strip().lower() != str(ref_value).strip().lower():
            diffs.append(f"{key}: run `{ours if ours is not None else 'unknown'}` vs paper `{ref_value}`")
    return diffs


def d2_dataset(facts: dict | None) -> str | None:
    """'train + train -> test' of a detectron2 job (the paper's notation in references.yaml)."""
    if not facts or not facts.get("train"):
        return None
    return " + ".join(facts["train"]) + " -> " + " + ".join(facts["test"] or [])


def d2_schedule(facts: dict | None) -> str | None:
    if not facts or facts.get("max_iter") is None:
        return None
    steps = "/".join(str(s) for s in facts.get("steps") or []) or "none"
    return f"{facts['max_iter']} iters, steps {steps}, batch {facts.get('ims_per_batch')}"


def comparability_cell(diffs: list[str]) -> str:
    return "comparable" if not diffs else "**not comparable** (" + "; ".join(diffs) + ")"


# ----------------------------------------------------------------------------- sections


def section_summary(run_dir: Path, manifest: dict | None, pretrain_config: dict | None, protocol: dict) -> list[str]:
    lines = ["## Run summary", "", f"- run directory: `{run_dir}`",
             f"- protocol used by the run: `{json.dumps(protocol, sort_keys=True)}`"]
    if manifest is None:
        lines.append(f"- manifest: {NOT_RUN} (no manifest.json)")
    else:
        git = manifest.get("git_revision") or manifest.get("git") or manifest.get("revision")
        lines.append(f"- git revision: `{git if git is not None else 'n/a'}`")
        # Everything else the runner recorded, shown as it is: its keys are the runner's to choose.
        rest = {k: v for k, v in manifest.items() if k not in ("git_revision", "git", "revision")}
        lines += bullets(rest)
    if pretrain_config:
        cfg = pretrain_config
        highlights = {
            "arch": cfg.get("arch"), "train_dir": (cfg.get("data") or {}).get("train_dir"),
            "crop_size": (cfg.get("data") or {}).get("crop_size"),
            "epochs": (cfg.get("optim") or {}).get("epochs"), "batch_size": (cfg.get("optim") or {}).get("batch_size"),
            "base_lr": (cfg.get("optim") or {}).get("base_lr"),
            "weight_decay": (cfg.get("optim") or {}).get("weight_decay"),
            "fix_pred_lr": (cfg.get("optim") or {}).get("fix_pred_lr"),
            "dim": (cfg.get("model") or {}).get("dim"), "pred_dim": (cfg.get("model") or {}).get("pred_dim"),
        }
        lines += ["- pretraining config highlights (pretrain/config.yaml):"] + bullets(highlights, 1)
    return lines + [""]


def section_pretraining(records: list[dict]) -> list[str]:
    lines = ["## Pretraining", ""]
    if not records:
        return lines + [f"Pretraining: {NOT_RUN} (no pretrain/metrics.jsonl).", ""]
    last = records[-1]
    knn = [r for r in records if "knn_top1" in r]
    rows = [["epochs logged", fmt(len(records))], ["last epoch", fmt(last["epoch"])], ["steps", fmt(last["step"])],
            ["final loss", fmt(last["loss"], 4)], ["final z std", fmt(last["z_std"], 4)],
            ["healthy z std 1/sqrt(d)", fmt(last["z_std_healthy"], 4)],
            ["images/s (last epoch)", fmt(last["images_per_s"], 1)],
            ["data wait fraction (last epoch)", fmt(last["data_wait_frac"], 3)],
            ["skipped images (all epochs)", fmt(sum(r.get("skipped_images", 0) for r in records))],
            ["kNN monitor top-1 (last)", fmt(knn[-1]["knn_top1"]) + f" (epoch {knn[-1]['epoch']})" if knn else NOT_RUN]]
    return lines + table(["quantity", "value"], rows) + [""]


def knn_settings(evals: dict) -> list[tuple]:
    """The (k, T) pairs reported by any backbone, in first-seen order: each becomes one column."""
    seen = []
    for ev in evals.values():
        for row in ((ev or {}).get("knn") or {}).get("knn", []):
            if (row["k"], row["T"]) not in seen:
                seen.append((row["k"], row["T"]))
    return seen


def classification_row(backbone: str, ev: dict | None, settings: list[tuple]) -> list[str]:
    if ev is None:
        return [backbone] + [NOT_RUN] * (len(settings) + 3)
    knn_rows = {(r["k"], r["T"]): r for r in (ev.get("knn") or {}).get("knn", [])}
    cells = [fmt(knn_rows[s]["top1"]) if s in knn_rows else NOT_RUN for s in settings]
    fast = ev.get("fast_probe")
    cells.append((fmt(fast["fast_probe"]["top1"])
                  # an L-BFGS fit stopped short of its tolerance: the number is not the probe's optimum
                  + (" (NOT CONVERGED)" if fast["fast_probe"].get("converged") is False else "")) if fast else NOT_RUN)
    lin = ev.get("linear")
    if lin:
        last, best = lin["linear"]["last_epoch"], lin["linear"]["best_epoch"]
        cells += [f"{fmt(last['top1'])} (epoch {last['epoch']})", f"{fmt(best['top1'])} (epoch {best['epoch']})"]
    else:
        cells += [NOT_RUN, NOT_RUN]
    return [backbone] + cells


def classification_scores(ev: dict) -> dict:
    """{protocol name: (top1, per-image correctness or None, num_val)} of one init's results."""
    out = {}
    knn = ev.get("knn")
    for row in (knn or {}).get("knn", []):
        out[f"kNN (k={row['k']}, T={row['T']:g})"] = (row["top1"], row.get("correct"), knn["protocol"].get("num_val"))
    fast = ev.get("fast_probe")
    if fast:
        out["fast probe"] = (fast["fast_probe"]["top1"], fast["fast_probe"].get("correct"), fast["protocol"].get("num_val"))
    return out


def classification_differences(evals: dict, samples: int = BOOTSTRAP_SAMPLES) -> list[str]:
    """Each init - random per protocol with a paired bootstrap interval over the val images."""
    b = evals.get("random")
    rows, first = [], None
    for init, a in evals.items():
        if init == "random" or not a or not b:
            continue
        first = first or a
        ours, base = classification_scores(a), classification_scores(b)
        for name in [n for n in ours if n in base]:
            (top_a, cor_a, n_val), (top_b, cor_b, _) = ours[name], base[name]
            if cor_a and cor_b and len(cor_a) == len(cor_b):
                cmp = paired_bootstrap(decode_correct(cor_a), decode_correct(cor_b), samples=samples)
                cells = [f"{cmp['diff']:+.2f}", interval_cell(cmp), verdict_cell(cmp, init, "random")]
            else:  # results written before per-image correctness was recorded, or other val sets
                cells = [fmt_delta(top_a, top_b), "n/a", "no per-image predictions of the same val images: no interval"]
            rows.append([f"{init} - random", name, fmt(top_a), fmt(top_b), *cells])
    if not rows:
        return []
    p = next(r for r in first.values() if r)["protocol"]
    n_val, n_cls = p.get("num_val"), p.get("num_classes")
    facts = []
    if n_cls:
        facts.append(f"chance level {fmt(100.0 / n_cls)}% ({n_cls} classes)")
    if n_val:
        facts.append(f"resolvable difference {fmt(resolvable_difference(n_val), 3)} points (one of {n_val} val images)")
    return (["", "### Differences between inits (top-1, percentage points)", ""]
            + table(["comparison", "protocol", "init top-1", "random top-1", "difference", "95% interval",
                     "verdict"], rows)
            + ["", f"Paired bootstrap over the val images ({samples} resamples, seed 0); "
               + "; ".join(facts) + ". A tie (the interval contains 0) names no winner."])


def section_classification(evals: dict) -> list[str]:
    lines = ["## Classification", ""]
    if not any(evals.values()):
        return lines + [f"Evaluation: {NOT_RUN} (no eval/<backbone>/ results).", ""]
    settings = knn_settings(evals)
    header = (["init"] + [f"kNN top-1 (k={k}, T={t:g})" for k, t in settings]
              + ["fast probe top-1", "official probe top-1 (last)", "official probe top-1 (best, chosen on val)"])
    lines += table(header, [classification_row(b, ev, settings) for b, ev in evals.items()])
    # Every number carries its protocol: say which feature layer and data they came from, and how the
    # checkpoint was read (an outside file's detected format and the input normalisation it expects).
    for b, ev in evals.items():
        if ev:
            any_result = next(r for r in ev.values() if r)
            p = any_result.get("protocol", {})
            ck, norm = p.get("checkpoint") or {}, p.get("input_normalization") or {}
            lines.append(f"\n- {b}: layer `{p.get('layer')}`, {p.get('num_train')} train / {p.get('num_val')} val "
                         f"images, {p.get('num_classes')} classes, image size {p.get('image_size')}, "
                         f"checkpoint `{ck.get('path')}`"
                         + (f", format `{ck['kind']}`" if ck.get("kind") else "")
                         + (f", input normalisation `{norm['name']}`" if norm.get("name") else "")
                         + (f", BN statistics: {ri.get('bn_stats')}" if (ri := (p.get("checkpoint") or {}).get("random_init"))
                            else ""))
    return lines + classification_differences(evals) + [""]


def detection_differences(dets: dict) -> list[str]:
    """Each init - scratch (the paper's baseline) per job, task and metric, with the Welch interval over trials."""
    rows = []
    for (job, b), ours in dets.items():
        other = dets.get((job, "scratch"))
        if b == "scratch" or not ours or not other:
            continue
        for task in [t for t in ours["summary"] if t in other["summary"]]:
            for m in METRICS:
                cmp = welch(ours["summary"][task][m]["values"], other["summary"][task][m]["values"])
                rows.append([f"{b} - scratch", job, TASK_NAMES.get(task, task), m, f"{cmp['diff']:+.2f}",
                             interval_cell(cmp), verdict_cell(cmp, b, "scratch")])
    if not rows:
        return []
    return (["", "### Differences between inits (AP points)", ""]
            + table(["comparison", "job", "task", "metric", "difference", "95% interval", "verdict"], rows)
            + ["", "Welch interval over trials (t quantile at the Welch-Satterthwaite df); a tie (the interval "
               "contains 0) names no winner; one trial on a side gives no error bar. VOC07+12 trials scatter by "
               "about 0.2 AP (PROTOCOL.md section 9)."])


def section_detection(dets: dict) -> list[str]:
    lines = ["## Detection", ""]
    rows = []
    for (job, b), det in dets.items():  # row_names: random (an extra baseline) only when it ran
        if det is None:
            rows.append([job, b, "-"] + [NOT_RUN] * 4)
            continue
        # an outside checkpoint's row says how it was read
        label = b if b in DET_LABELS or not det.get("format") else \
            f"{b} (format `{det['format']}`, input normalisation `{det.get('normalization')}`)"
        for task, stats in det["summary"].items():
            n = next(iter(stats.values()))["n"]
            rows.append([job, label, TASK_NAMES.get(task, task)] + [mean_std_cell(stats.get(m)) for m in METRICS]
                        + [str(n)])
    lines += table(["job", "init", "task", "AP", "AP50", "AP75", "trials"], rows)
    lines += ["", "AP values are mean +- sample std over trials (detectron2's percent scale). Inits: "
              + "; ".join(f"`{b}` = {DET_LABELS[b]}" for b in DET_BACKBONES) + "."]
    return lines + detection_differences(dets) + [""]


def linear_reference(evals: dict, refs: dict, protocol: dict, epochs) -> list[str]:
    block = refs["linear_top1"]
    ev = evals.get("pretrained") or {}
    # The paper's number is the official probe; the fast probe is only a proxy, so say which one was used.
    # The paper's number is the official probe; the fast probe is a proxy and is NEVER compared with it.
    proxy_only = False
    if ev.get("linear"):
        ours, which = ev["linear"]["linear"]["last_epoch"]["top1"], "official probe, last epoch"
    elif ev.get("fast_probe"):
        ours, which, proxy_only = None, "only the fast probe ran: " + fmt(ev["fast_probe"]["fast_probe"]["top1"]) + \
            ", a proxy never compared with the paper's official linear top-1", True
    else:
        ours, which = None, NOT_RUN
    # The data difference is shared by every row, so it is stated once; rows name only their epoch difference.
    data_diffs = differences({"pretrain_dataset": protocol.get("dataset")},
                             {"pretrain_dataset": block["protocol"]["pretrain_dataset"]})
    lines = [f"### Linear top-1 ({block['source']})", "",
             f"Ours (pretrained): {fmt(ours) if ours is not None else '-'} ({which}), "
             f"{epochs if epochs is not None else 'unknown'} pretraining epochs.", "",
             f"Data: {comparability_cell(data_diffs)}", ""]
    rows = []
    for method, by_epoch in block["rows"].items():
        for ep, value in by_epoch.items():
            epoch_diffs = differences({"pretrain_epochs": epochs}, {"pretrain_epochs": ep})
            if proxy_only:
                cell = "**not comparable** (fast probe, not the official linear probe)"
            elif not data_diffs:
                cell = comparability_cell(epoch_diffs)
            else:
                cell = "**not comparable**" + (" (epochs differ)" if epoch_diffs else "")
            delta = fmt_delta(ours, value) if cell == "comparable" else "-"  # a delta only where it means something
            rows.append([method, str(ep), fmt(value), delta, cell, block["source"]])
    return lines + table(["method", "epochs", "paper top-1", "ours - paper", "comparability", "source"], rows) + [""]


def detection_reference(dets: dict, refs: dict, protocol: dict, epochs) -> list[str]:
    lines = []
    det_protocol = protocol.get("detection") or {}
    for job in JOBS:
        det = dets.get((job, "pretrained"))
        job_protocol = det_protocol.get(job) or {}
        benchmarks = DEFAULT_BENCHMARKS[job]
        if job == "voc" and job_protocol.get("benchmark"):
            benchmarks = [(job_protocol["benchmark"], "bbox")]
        for bench, task in benchmarks:
            block = refs["detection"][bench]
            lines += [f"### {bench} ({block['source']}), our job `{job}`", ""]
            if det is None or task not in det["summary"]:
                lines += [f"Our {job} {TASK_NAMES[task]} result: {NOT_RUN}.", ""]
                continue
            ours = {m: det["summary"][task][m]["mean"] for m in METRICS}
            # dataset and schedule are facts of the run's own detectron2 config, rendered as the paper's job is
            facts = det.get("d2")
            ref_d2 = block["d2"]
            run = {"pretrain_dataset": protocol.get("dataset"), "pretrain_epochs": epochs, "task": TASK_NAMES[task],
                   "dataset": d2_dataset(facts), "schedule": d2_schedule(facts)}
            ref = {"pretrain_dataset": block["protocol"]["pretrain_dataset"],
                   "pretrain_epochs": block["protocol"]["pretrain_epochs"], "task": block["protocol"]["task"],
                   "dataset": d2_dataset(ref_d2),
                   "schedule": d2_schedule(ref_d2) or block["protocol"]["schedule"]}
            diffs = differences(run, ref)
            if ref_d2.get("max_iter") is None and not any(d.startswith("schedule") for d in diffs):
                diffs.append(f"schedule: the paper's ({block['protocol']['schedule']}) is not published")
            flag = comparability_cell(diffs)
            lines.append("Ours (pretrained, mean over trials): "
                         + ", ".join(f"{m} {fmt(ours[m])}" for m in ("AP50", "AP", "AP75")) + ".")
            lines += ["", f"Comparability: {flag}", ""]
            # a delta only where the row is comparable: otherwise the paper's number stands alone
            delta = (lambda m, v: f" ({fmt_delta(ours[m], v[m])})") if not diffs else (lambda m, v: "")
            rows = [[method] + [f"{fmt(v[m])}{delta(m, v)}" for m in ("AP50", "AP", "AP75")]
                    + [block["source"]] for method, v in block["rows"].items()]
            header = ["AP50 (ours - paper)", "AP (ours - paper)", "AP75 (ours - paper)"] if not diffs else \
                ["AP50", "AP", "AP75"]
            lines += table(["paper row", *header, "source"], rows) + [""]
    return lines


def section_reference(evals: dict, dets: dict, refs: dict, protocol: dict, epochs) -> list[str]:
    lines = ["## Paper reference", "",
             "Deltas are ours - paper, shown only on a comparable row. A row is **not comparable** whenever the "
             "run's data or schedule differs from the paper's (always the case for the embedded data set); detection "
             "datasets and schedules are read from each job's own detectron2 config (config.yaml), and a fast-probe "
             "number is never compared with the paper's official linear top-1.", ""]
    return lines + linear_reference(evals, refs, protocol, epochs) + detection_reference(dets, refs, protocol, epochs)


# ----------------------------------------------------------------------------- plots


def save_plot(fig, path: Path) -> Path:
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
    plt.close(fig)  # many figures per report: free each one
    return path


def line_plot(out: Path, name: str, xs, series: dict, xlabel: str, ylabel: str, hline=None) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for label, ys in series.items():
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=label)  # markers only while points are few
    if hline is not None:
        ax.axhline(hline[0], color="gray", linestyle="--", label=hline[1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return save_plot(fig, out / name)


def pretrain_plots(out: Path, records: list[dict]) -> dict[str, Path | None]:
    if not records:
        return {k: None for k in ("pretraining loss", "learning rate", "z std", "kNN monitor")}
    epochs = [r["epoch"] for r in records]
    knn = [r for r in records if "knn_top1" in r]
    return {
        "pretraining loss": line_plot(out, "pretrain_loss.png", epochs, {"loss": [r["loss"] for r in records]},
                                      "epoch", "loss (min -1)"),
        "learning rate": line_plot(out, "pretrain_lr.png", epochs, {"lr": [r["lr"] for r in records]},
                                   "epoch", "encoder lr"),
        # The collapse signature is z std falling far below 1/sqrt(d), so draw that line.
        "z std": line_plot(out, "pretrain_z_std.png", epochs, {"std of l2-normalised z": [r["z_std"] for r in records]},
                           "epoch", "z std", hline=(records[-1]["z_std_healthy"], "1/sqrt(d)")),
        "kNN monitor": line_plot(out, "pretrain_knn.png", [r["epoch"] for r in knn],
                                 {"kNN top-1": [r["knn_top1"] for r in knn]}, "epoch", "top-1 (%)") if knn else None,
    }


def detection_plots(out: Path, dets: dict) -> dict[str, Path | None]:
    curves = {f"{job}/{b}": det["loss"] for (job, b), det in dets.items() if det and det["loss"]}
    loss_png = None
    if curves:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for label, pts in curves.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label)
        ax.set_xlabel("iteration")
        ax.set_ylabel("total loss (trial 0)")
        ax.legend(fontsize=7)
        loss_png = save_plot(fig, out / "detection_loss.png")
    bars = [(f"{job}/{b}/{TASK_NAMES.get(t, t)}", s["AP"]["mean"], s["AP"]["std"] or 0.0)
            for (job, b), det in dets.items() if det for t, s in det["summary"].items()]
    ap_png = None
    if bars:
        fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(bars)), 3.2))
        ax.bar(range(len(bars)), [b[1] for b in bars], yerr=[b[2] for b in bars], capsize=3)
        ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("final AP (mean +- std)")
        ap_png = save_plot(fig, out / "detection_ap.png")
    return {"detection total loss": loss_png, "final AP": ap_png}


def section_plots(plots: dict[str, Path | None]) -> list[str]:
    lines = ["## Plots", ""]
    for title, path in plots.items():
        lines += [f"### {title}", "", f"![{title}]({path.name})" if path else f"{title}: {NOT_RUN}.", ""]
    return lines


# ----------------------------------------------------------------------------- entry points


def write_report(run_dir: Path, protocol: dict, references: Path = REFERENCES) -> Path:
    """Write run_dir/report/report.md and its PNG plots; return the report's path."""
    run_dir = Path(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    refs = load_references(references)
    manifest = read_json(run_dir / "manifest.json")
    pretrain_config = read_yaml(run_dir / "pretrain" / "config.yaml")
    records = [r for r in read_jsonl(run_dir / "pretrain" / "metrics.jsonl") if "epoch" in r]
    evals = {b: load_eval(run_dir, b) for b in row_names(run_dir, run_dir / "eval", ("random",))}
    dets = {(job, b): load_detection(run_dir, job, b)
            for job in JOBS for b in row_names(run_dir, run_dir / "detection" / job, ("scratch",))}
    epochs = run_epochs(protocol, pretrain_config)
    plots = {**pretrain_plots(out, records), **detection_plots(out, dets)}
    lines = ["# SimSiam pipeline report", ""]
    lines += section_summary(run_dir, manifest, pretrain_config, protocol)
    lines += section_pretraining(records)
    lines += section_classification(evals)
    lines += section_detection(dets)
    lines += section_reference(evals, dets, refs, protocol, epochs)
    lines += section_plots(plots)
    return write_text(out / "report.md", "\n".join(lines) + "\n")


# What makes a folder a run: pipeline.run writes the first at its start; the others are stage outputs
# (a run assembled by hand from stage commands has only those).
RUN_FILES = ("pipeline_config.yaml", "manifest.json", "pretrain", "eval", "detection")


def command():
    cmd = Command("python -m pipeline.report", __doc__, overrides=False)
    cmd.add_argument("run_dir", type=Path, metavar="RUN", help="the run folder (pipeline.run's out_dir)")
    cmd.add_argument("--protocol", type=Path, metavar="FILE",
                     help="JSON file with the run's protocol (default: the manifest's)")
    cmd.add_argument("--dataset", help="pretraining data set of the run, e.g. embedded or imagenet "
                     "(default: the protocol's)")
    return cmd


def check_run_dir(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; give the out_dir of a python -m pipeline.run")
    if not any((run_dir / name).exists() for name in RUN_FILES):
        raise UserError(f"{run_dir} is not a pipeline run folder (it has none of {', '.join(RUN_FILES)}); "
                        "give the out_dir of a python -m pipeline.run")


def _report(args) -> Path:
    check_run_dir(args.run_dir)
    if args.protocol:
        try:
            protocol = json.loads(args.protocol.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read --protocol {args.protocol}: {e}; give a JSON file") from None
    else:
        protocol = dict((read_json(args.run_dir / "manifest.json") or {}).get("protocol") or {})
    if args.dataset:
        protocol["dataset"] = args.dataset
    path = write_report(args.run_dir, protocol)
    print(path)
    return path


def cli(argv=None) -> None:
    run(_report, command().parse(argv))


if __name__ == "__main__":
    cli()
