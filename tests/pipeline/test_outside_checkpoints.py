"""Outside checkpoints through the pipeline without pretraining: two methods' files of different formats
evaluated side by side in one run and one report; a bad entry is one error line before any stage runs."""

import json

import pytest
import torch

from core.config import load_config
from core.models import build_backbone
from core.runtime import file_sha256
from embedded.generator import EmbeddedDataConfig, generate
from pipeline.run import Pipeline, cli, main
from tests.helpers import REPO, method_checkpoint, one_error_line

DATA = EmbeddedDataConfig(cls_train_per_class=4, cls_val_per_class=2, voc07_trainval=2, voc07_test=2,
                          voc12_trainval=2, coco_train=2, coco_val=2)
EVAL = ["data.image_size=32", "data.workers=0"]
FORMATS = {"dino_r18": "dino", "mocov3_r18": "moco_v3"}  # name -> the format each file is written in


def overrides(run_dir, data_root, checkpoints: dict, **extra) -> list[str]:
    items = {"out_dir": run_dir, "data_root": data_root, "generate_embedded": False, "pretrain.enabled": False,
             "pretrain.overrides": json.dumps(["arch=resnet18"]),  # the random row's arch
             "eval.protocols": "[knn]", "eval.overrides": json.dumps(EVAL), "detection.jobs": "[]",
             "checkpoints": json.dumps(checkpoints), **extra}
    return [f"{k}={v}" for k, v in items.items()]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("embedded") / "data", DATA)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """name -> path of a seeded ResNet-18 (one seed each: rows that differ) saved the way each method saves it."""
    folder = tmp_path_factory.mktemp("outside")
    out = {}
    for seed, (name, fmt) in enumerate(FORMATS.items()):
        torch.manual_seed(seed)
        backbone = {k: v for k, v in build_backbone("resnet18").state_dict().items() if not k.startswith("fc.")}
        out[name] = folder / f"{name}.pth"
        torch.save(method_checkpoint(fmt, backbone)[0], out[name])
    return out


def entries(files) -> dict:
    return {name: {"path": str(path), "arch": "resnet18"} for name, path in files.items()}


def test_two_outside_checkpoints_are_evaluated_and_reported_without_pretraining(tmp_path, data_root, files):
    run = tmp_path / "run"
    main(load_config(REPO / "pipeline/configs/demo.yaml", overrides(run, data_root, entries(files))))
    assert not (run / "pretrain").exists() and not (run / "eval" / "pretrained").exists()
    md = (run / "report" / "report.md").read_text()
    classification = md.split("## Classification", 1)[1].split("## Detection", 1)[0]
    for name, fmt in FORMATS.items():
        knn = json.loads((run / "eval" / name / "knn.json").read_text())
        assert knn["protocol"]["checkpoint"]["kind"] == fmt and knn["protocol"]["checkpoint"]["arch"] == "resnet18"
        assert f"| {name} | {knn['knn'][0]['top1']:.2f} |" in classification  # its row, with its own number
        assert f"- {name}: " in classification and f"format `{fmt}`" in classification
        assert f"| {name} - random |" in classification  # compared with the random row
    assert "| pretrained |" not in md and "| random |" in classification
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(manifest["checkpoints"][str(p.resolve())] == file_sha256(p) for p in files.values())


def test_bad_outside_entries_fail_before_any_stage(tmp_path, capsys, data_root, files):
    run = tmp_path / "run"
    unknown = tmp_path / "unknown.pth"
    torch.save({"weights": {"stem.w": torch.zeros(2)}}, unknown)
    cases = {"does not exist": {"gone": {"path": str(tmp_path / "gone.pth"), "arch": "resnet18"}},
             "a row the pipeline makes itself": {"random": {"path": str(files["dino_r18"]), "arch": "resnet18"}},
             "checkpoints.odd:": {"odd": {"path": str(unknown), "arch": "resnet18"}}}
    for expected, checkpoints in cases.items():
        err = one_error_line(capsys, lambda: cli(overrides(run, data_root, checkpoints)))
        assert expected in err, err
    assert not run.exists()  # nothing was started, nothing written


def test_stage_commands_carry_the_format_options(tmp_path, data_root, files):
    cfg = load_config(REPO / "pipeline/configs/demo.yaml", overrides(tmp_path / "run", data_root, {
        "dino": {"path": str(files["dino_r18"]), "format": "dino", "checkpoint_key": "student", "prefix": "module."}}))
    pipe = Pipeline(cfg)
    det = [str(a) for a in pipe.detection_command("voc", "dino", pipe.outside["dino"])]
    ev = [str(a) for a in pipe.eval_command("knn", "dino", pipe.outside["dino"])]
    for cmd in (det, ev):
        assert cmd[cmd.index("--checkpoint") + 1] == str(files["dino_r18"])
        for flag, value in (("--format", "dino"), ("--checkpoint-key", "student"), ("--prefix", "module.")):
            assert cmd[cmd.index(flag) + 1] == value
    assert det[det.index("--out-dir") + 1] == str((tmp_path / "run" / "detection" / "voc" / "dino").resolve())
    assert ev[ev.index("--arch") + 1] == "resnet50"  # an entry's default arch
