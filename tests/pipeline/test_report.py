"""pipeline.report on a fake run directory whose files are shaped like the real stage writers' output
(pretrain/loop.py, eval/all.py + knn/linear/fast_probe, transfer/train_det.py + trials.py)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from pipeline.report import NOT_RUN, SECTIONS, fmt, load_references, write_report
from transfer.trials import aggregate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("pretrain_loss.png", "pretrain_lr.png", "pretrain_z_std.png", "pretrain_knn.png",
         "detection_loss.png", "detection_ap.png")
EMBEDDED = {"dataset": "embedded", "detection": {"voc": {"dataset": "embedded voc", "schedule": "tiny 20 iters"},
                                                  "coco": {"dataset": "embedded coco", "schedule": "tiny 20 iters"}}}


def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def write_pretrain(run: Path, epochs: int = 6, dim: int = 64) -> list[dict]:
    records = []
    for e in range(1, epochs + 1):
        r = {"epoch": e, "step": 7 * e, "lr": 0.1 * 0.5 * (1 + math.cos(math.pi * (e - 1) / epochs)),
             "loss": -0.1 * e, "z_std": 0.12 - 0.001 * e, "z_std_healthy": 1 / math.sqrt(dim),
             "images_per_s": 40.0 + e, "data_wait_frac": 0.01, "skipped_images": 0}
        if e % 3 == 0:
            r["knn_top1"] = 10.0 + 3.3333 * e
        records.append(r)
    (run / "pretrain").mkdir(parents=True)
    (run / "pretrain" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = {"arch": "resnet18", "data": {"train_dir": "data/embedded/train", "crop_size": 32},
           "model": {"dim": dim, "pred_dim": 16}, "optim": {"batch_size": 8, "base_lr": 0.05, "epochs": epochs,
                                                            "weight_decay": 1e-4, "fix_pred_lr": True}}
    (run / "pretrain" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return records


def protocol_block(kind: str, **specific) -> dict:
    """eval.context.EvalContext.protocol()'s shape."""
    return {"checkpoint": {"path": "random" if kind == "random" else "/x/checkpoint_0006.pth.tar",
                           "sha256": None, "kind": kind, "arch": "resnet18", "seed": 0},
            "layer": "pool5", "feature_dim": 512, "train_dir": "/d/train", "val_dir": "/d/val", "num_train": 60,
            "num_val": 30, "num_classes": 3, "image_size": 32, "val_transform": "Compose(...)", "seed": 0,
            "device": "cpu", "world_size": 1, **specific}


def eval_results(kind: str, base: float) -> dict:
    knn = {"protocol": protocol_block(kind, method="weighted kNN", knn_grid=[[200, 0.2], [20, 0.07]]),
           "knn": [{"k": 200, "T": 0.2, "setting": "SimSiam official monitor", "top1": base + 1.2345, "top5": 90.0},
                   {"k": 20, "T": 0.07, "setting": "DINO / mmselfsup", "top1": base + 2.5, "top5": 91.0}],
           "features": {"train": {}, "val": {}}}
    linear = {"protocol": protocol_block(kind, method="official linear probe"),
              "linear": {"last_epoch": {"epoch": 90, "top1": base + 4.4444, "top5": 95.0},
                         "best_epoch": {"epoch": 80, "top1": base + 5.5, "top5": 96.0,
                                        "note": "best epoch chosen on val (optimistic)"}},
              "sanity_check": "...", "train_images_per_s": 100.0, "features": {"val": {}}}
    fast = {"protocol": protocol_block(kind, method="fast probe"),
            "fast_probe": {"top1": base + 3.3333, "top5": 94.0, "chosen_l2": 1e-4, "holdout": []},
            "official_probe": None, "seconds": {"features": 1.0, "fit": 2.0}, "features": {"train": [], "val": {}}}
    return {"knn": knn, "linear": linear, "fast_probe": fast}


def write_eval_all(run: Path, kind: str, base: float) -> dict:
    """eval.all: summary.json holding the three results (and the three separate files)."""
    res = eval_results(kind, base)
    folder = run / "eval" / kind
    for name, r in res.items():
        dump(folder / f"{name}.json", r)
    dump(folder / "summary.json", {"checkpoint": res["knn"]["protocol"]["checkpoint"], "headline": {}, **res})
    return res


def write_detection(run: Path, job: str, backbone: str, trials: list[dict]) -> dict:
    """transfer.train_det: trials_summary.json (aggregate() of per-trial results) + detectron2's metrics.json."""
    folder = run / "detection" / job / backbone
    summary = aggregate(trials)
    dump(folder / "trials_summary.json", {"config": "tiny.yaml", "weights": "w.pkl",
                                          "seeds": list(range(len(trials))), "summary": summary})
    lines = [{"iteration": i, "total_loss": 3.0 - 0.1 * i, "loss_cls": 1.0, "loss_box_reg": 0.5, "lr": 0.02}
             for i in range(0, 20, 2)]
    lines.append({"iteration": 19, "bbox/AP": 1.0})  # detectron2 also logs eval lines without total_loss
    (folder / "trial0").mkdir(parents=True)
    (folder / "trial0" / "metrics.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return summary


def trial(ap: float, mask: bool) -> dict:
    r = {"bbox": {"AP": ap, "AP50": ap + 20.123, "AP75": ap + 3.0, "APs": 1.0}}
    if mask:
        r["segm"] = {"AP": ap - 2.0, "AP50": ap + 15.0, "AP75": ap + 1.5}
    return r


@pytest.fixture
def full_run(tmp_path):
    run = tmp_path / "RUN"
    data = {"pretrain": write_pretrain(run)}
    data["eval"] = {"pretrained": write_eval_all(run, "pretrained", 40.0), "random": write_eval_all(run, "random", 20.0)}
    data["det"] = {
        ("voc", "pretrained"): write_detection(run, "voc", "pretrained", [trial(a, False) for a in (10.11, 11.37, 12.0)]),
        ("voc", "scratch"): write_detection(run, "voc", "scratch", [trial(a, False) for a in (6.0, 6.4)]),
        ("voc", "random"): write_detection(run, "voc", "random", [trial(a, False) for a in (5.0, 5.5)]),
        ("coco", "scratch"): write_detection(run, "coco", "scratch", [trial(a, True) for a in (5.0, 5.2)]),
        ("coco", "pretrained"): write_detection(run, "coco", "pretrained", [trial(a, True) for a in (8.0, 8.8)]),
        ("coco", "random"): write_detection(run, "coco", "random", [trial(4.25, True)]),  # one trial: std None
    }
    dump(run / "manifest.json", {"git_revision": "abc1234", "config": {"epochs": 6}, "packages": {"torch": "2.x"},
                                 "checkpoints": {"pretrain/checkpoint_0006.pth.tar": "f" * 64},
                                 "datasets": {"embedded": "sha256:1234"}, "wall_times": {"pretrain": 12.5}})
    return run, data


def table_rows(md: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in md.splitlines() if line.startswith(f"| {first_cell} ")]


def test_full_report_sections_plots_and_numbers(full_run):
    run, data = full_run
    path = write_report(run, EMBEDDED)
    assert path == run / "report" / "report.md"
    md = path.read_text()
    for title in SECTIONS:
        assert f"## {title}\n" in md
    for name in PLOTS:
        png = run / "report" / name
        assert png.is_file() and png.stat().st_size > 100 and png.read_bytes()[:8] == PNG_MAGIC, name
        assert f"]({name})" in md
    assert "abc1234" in md and NOT_RUN not in md

    # Classification: one row per init, columns kNN (200, 0.2), kNN (20, 0.07), fast, official last, official best.
    assert "kNN top-1 (k=200, T=0.2)" in md and "kNN top-1 (k=20, T=0.07)" in md
    for kind in ("pretrained", "random"):
        ev = data["eval"][kind]
        [row] = [r for r in table_rows(md, kind) if len(r) == 6]
        assert row[1] == fmt(ev["knn"]["knn"][0]["top1"]) and row[2] == fmt(ev["knn"]["knn"][1]["top1"])
        assert row[3] == fmt(ev["fast_probe"]["fast_probe"]["top1"])
        assert row[4] == f"{fmt(ev['linear']['linear']['last_epoch']['top1'])} (epoch 90)"
        assert row[5] == f"{fmt(ev['linear']['linear']['best_epoch']['top1'])} (epoch 80)"

    # Detection: mean +- std per task and metric, trial count.
    for (job, kind), summary in data["det"].items():
        for task, name in (("bbox", "box"), ("segm", "mask")):
            rows = [r for r in table_rows(md, job) if r[1] == kind and r[2] == name]
            if task not in summary:
                assert not rows
                continue
            [row] = rows
            for i, m in enumerate(("AP", "AP50", "AP75")):
                s = summary[task][m]
                expected = fmt(s["mean"]) + (f" +- {fmt(s['std'])}" if s["std"] is not None else "")
                assert row[3 + i] == expected
            assert row[6] == str(summary[task]["AP"]["n"])

    # Pretraining summary numbers come from the last epoch of metrics.jsonl.
    last = data["pretrain"][-1]
    assert f"| final loss | {fmt(last['loss'], 4)} |" in md
    assert f"| healthy z std 1/sqrt(d) | {fmt(last['z_std_healthy'], 4)} |" in md


def test_paper_reference_deltas_and_not_comparable(full_run):
    run, data = full_run
    md = write_report(run, EMBEDDED).read_text()
    refs = load_references()
    assert "not comparable" in md and "run `embedded` vs paper `imagenet`" in md
    assert re.search(r"\|\s*comparable\s*\|", md) is None  # nothing embedded may be marked comparable
    # This task's change: no delta where the row is not comparable (every embedded row); the paper's number stands alone.
    for ep, value in refs["linear_top1"]["rows"]["SimSiam"].items():
        [row] = [r for r in table_rows(md, "SimSiam") if r[1] == str(ep)]
        assert row[2] == fmt(value) and row[3] == "-"
        assert row[5] == refs["linear_top1"]["source"]
    row = [r for r in table_rows(md, "SimSiam, optimal") if r[-1] == refs["detection"]["COCO box"]["source"]]
    ref = refs["detection"]["COCO box"]["rows"]["SimSiam, optimal"]
    assert fmt(ref["AP"]) in [c for r in row for c in r] and "ours - paper" not in md.split("### COCO box")[1]


def test_references_carry_source_and_protocol():
    refs = load_references()
    blocks = [refs["linear_top1"], *refs["detection"].values()]
    for block in blocks:
        assert block["source"].startswith("Chen & He 2021, Table")
        assert block["protocol"]["pretrain_dataset"] == "imagenet"
    assert refs["linear_top1"]["rows"]["SimSiam"] == {100: 68.1, 200: 70.0, 400: 70.8, 800: 71.3}
    assert refs["detection"]["VOC07+12"]["rows"]["SimSiam, optimal"] == {"AP50": 82.4, "AP": 57.0, "AP75": 63.7}
    assert set(refs["detection"]) == {"VOC07", "VOC07+12", "COCO box", "COCO mask"}


def test_missing_stages_say_not_run(tmp_path):
    run = tmp_path / "RUN"
    write_pretrain(run)
    write_eval_all(run, "pretrained", 40.0)  # no random-init eval, no detection, no manifest
    md = write_report(run, {"dataset": "embedded"}).read_text()
    for title in SECTIONS:
        assert f"## {title}\n" in md
    [row] = [r for r in table_rows(md, "random") if len(r) == 6]
    assert row[1:] == [NOT_RUN] * 5
    assert "manifest: not run" in md
    assert all(r[3:] == [NOT_RUN] * 4 for r in table_rows(md, "voc") + table_rows(md, "coco"))
    assert "detection total loss: not run" in md and "final AP: not run" in md
    assert (run / "report" / "pretrain_loss.png").is_file()
    assert not (run / "report" / "detection_ap.png").exists()


def test_empty_run_dir_and_cli(tmp_path):
    from pipeline.report import cli

    run = tmp_path / "RUN"
    run.mkdir()
    (run / "pipeline_config.yaml").write_text("")  # a run that pipeline.run started and no stage finished
    cli([str(run), "--dataset", "embedded"])
    md = (run / "report" / "report.md").read_text()
    assert "Pretraining: not run" in md and "Evaluation: not run" in md
    assert "pretraining loss: not run" in md and "Our voc box result: not run" in md


def test_matching_protocol_is_marked_comparable(full_run):
    run, _ = full_run
    md = write_report(run, {"dataset": "ImageNet", "pretrain_epochs": 100}).read_text()
    [row] = [r for r in table_rows(md, "SimSiam") if r[1] == "100"]
    assert row[4] == "comparable"
    [row] = [r for r in table_rows(md, "SimSiam") if r[1] == "200"]
    assert row[4].startswith("**not comparable**")
    # Detection still differs: no dataset / schedule given for the jobs counts as a difference.
    assert "schedule: run `unknown`" in md


# ----------------------------------------------------------------------------- comparisons users can trust

PAPER_VOC = {"DATASETS": {"TRAIN": ["voc_2007_trainval", "voc_2012_trainval"], "TEST": ["voc_2007_test"]},
             "SOLVER": {"MAX_ITER": 24000, "STEPS": [18000, 22000], "IMS_PER_BATCH": 16, "BASE_LR": 0.02}}


def write_d2_config(run: Path, job: str, backbone: str, config: dict) -> None:
    """The detectron2 config the trainer dumps to OUTPUT_DIR/config.yaml (only the keys the report reads)."""
    (run / "detection" / job / backbone / "config.yaml").write_text(yaml.safe_dump(config))


def section(md: str, title: str) -> str:
    return md.split(title, 1)[1].split("\n### ", 1)[0]


def test_detection_row_with_the_papers_dataset_and_schedule_is_comparable(tmp_path):
    run = tmp_path / "RUN"
    det = write_detection(run, "voc", "pretrained", [trial(a, False) for a in (56.0, 57.0)])
    write_d2_config(run, "voc", "pretrained", PAPER_VOC)
    md = write_report(run, {"dataset": "imagenet", "pretrain_epochs": 200}).read_text()
    voc = section(md, "### VOC07+12")
    assert "Comparability: comparable" in voc
    ref = load_references()["detection"]["VOC07+12"]["rows"]["SimSiam, optimal"]
    assert f"{fmt(ref['AP'])} ({det['bbox']['AP']['mean'] - ref['AP']:+.2f})" in voc
    # the same run with a shorter schedule is not the paper's job: flagged, and no delta column
    write_d2_config(run, "voc", "pretrained", {**PAPER_VOC, "SOLVER": {**PAPER_VOC["SOLVER"], "MAX_ITER": 20}})
    voc = section(write_report(run, {"dataset": "imagenet", "pretrain_epochs": 200}).read_text(), "### VOC07+12")
    assert "**not comparable** (schedule: run `20 iters, steps 18000/22000, batch 16`" in voc
    assert "ours - paper" not in voc and f"| {fmt(ref['AP'])} |" in voc


def test_fast_probe_is_never_compared_with_the_official_probe(tmp_path):
    run = tmp_path / "RUN"
    res = eval_results("pretrained", 60.0)
    dump(run / "eval" / "pretrained" / "fast_probe.json", res["fast_probe"])  # no linear.json
    md = write_report(run, {"dataset": "imagenet", "pretrain_epochs": 100}).read_text()
    [row] = [r for r in table_rows(md, "SimSiam") if r[1] == "100"]  # same data and epochs as the paper's row
    assert row[3] == "-" and row[4] == "**not comparable** (fast probe, not the official linear probe)"
    assert all(r[3] == "-" for r in table_rows(md, "SimSiam") + table_rows(md, "BYOL"))
    assert "never compared with the paper's official linear top-1" in md


def test_differences_with_intervals_and_ties_for_two_inits(tmp_path):
    run = tmp_path / "RUN"
    ours, base = eval_results("pretrained", 40.0), eval_results("random", 20.0)
    # 30 val images: kNN (200, 0.2) right on the same 15 for both inits -> a tie; fast probe 30 vs 0 right
    for res, fast in ((ours, "1" * 30), (base, "0" * 30)):
        res["knn"]["knn"][0]["correct"] = "1" * 15 + "0" * 15
        res["knn"]["knn"][0]["top1"] = 50.0
        res["fast_probe"]["fast_probe"]["correct"] = fast
        res["fast_probe"]["fast_probe"]["top1"] = 100.0 * fast.count("1") / 30
        for name, r in res.items():
            dump(run / "eval" / r["protocol"]["checkpoint"]["kind"] / f"{name}.json", r)
    write_detection(run, "voc", "pretrained", [trial(a, False) for a in (10.0, 10.4, 10.2)])
    write_detection(run, "voc", "scratch", [trial(a, False) for a in (5.0, 5.6, 5.3)])
    write_detection(run, "coco", "pretrained", [trial(8.0, True)])
    write_detection(run, "coco", "scratch", [trial(4.0, True)])
    md = write_report(run, {"dataset": "embedded"}).read_text()
    rows = {r[1]: r for r in table_rows(md, "pretrained - random")}
    knn, fast = rows["kNN (k=200, T=0.2)"], rows["fast probe"]
    assert knn[4] == "+0.00" and knn[5] == "[+0.00, +0.00]" and knn[6].startswith("**tie**")
    assert fast[4] == "+100.00" and fast[5] == "[+100.00, +100.00]" and fast[6] == "pretrained higher"
    assert "chance level 33.33% (3 classes)" in md and "resolvable difference 3.333 points (one of 30 val images)" in md
    det = {(r[1], r[2], r[3]): r for r in table_rows(md, "pretrained - scratch")}
    voc_ap = det[("voc", "box", "AP")]
    assert voc_ap[4] == "+4.90" and voc_ap[6] == "pretrained higher"
    lo, hi = (float(x) for x in voc_ap[5].strip("[]").split(","))
    assert 0 < lo < 4.9 < hi
    assert det[("coco", "mask", "AP")][5] == "n/a" and det[("coco", "mask", "AP")][6] == "one trial: no error bar"
    assert "`scratch` = scratch (detectron2 init)" in md and "`random` = random torchvision init" in md
