"""The detection trainer end to end on the embedded VOC/COCO layouts, and its input errors.

Runs the real detectron2 trainer, precise BN and evaluators for a couple of iterations with the tiny
CPU configs; the tests below further cut test-time proposals and detections so that inference on the
4 validation images stays cheap (the res5 head runs once per RoI).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from embedded.generator import CLASS_NAMES, EmbeddedDataConfig, generate
from core.cli import UserError
from transfer.convert import convert
from transfer.datasets import EXPECTED_LAYOUT
from transfer.train_det import main, parse_args
from transfer.trainer import RESULTS_FILE, SUMMARY_FILE
from tests.helpers import REPO


# Few images: 2 iterations of batch 2 need 4 training images; evaluation runs on the 4 test images.
DATA = EmbeddedDataConfig(seed=0, cls_train_per_class=1, cls_val_per_class=1, voc07_trainval=6,
                          voc07_test=4, voc12_trainval=2, coco_train=6, coco_val=4)
FAST = [
    "SOLVER.MAX_ITER", "2",  # a smoke run of the real loop
    "TEST.PRECISE_BN.NUM_ITER", "1",
    "DATALOADER.NUM_WORKERS", "0",  # no worker processes on a 2-core machine
    "MODEL.RPN.POST_NMS_TOPK_TEST", "16",  # RoIs per test image through res5 (tiny config: 100)
    "TEST.DETECTIONS_PER_IMAGE", "16",  # boxes per test image through the C4 mask head (default 100)
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The suite shares 2 cores with other jobs; 2 OpenMP threads then collapse (a ResNet-50 forward
    measured 8.3 s vs 0.44 s with 1 thread), so these heavy tests run single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("embedded") / "data", DATA)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("weights") / "random.pkl"
    convert("random", out, seed=0)
    return out


def run(config: str, root: Path, weights: Path, out: Path, *extra: str) -> dict:
    args = parse_args(["--config-file", config, "--data-root", str(root), *extra,
                       "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(out), *FAST])
    return main(args)


def _finite(summary: dict, task: str) -> None:
    for metric in ("AP", "AP50", "AP75"):
        value = summary[task][metric]["mean"]
        assert math.isfinite(value) and 0.0 <= value <= 100.0, (task, metric, value)


def _check_full_load(trial_dir: Path) -> dict:
    record = json.loads((trial_dir / RESULTS_FILE).read_text())
    check = record["weights_check"]
    assert check["loaded"] == 318 and check["not_found"] == [] and check["unused"] == []
    assert all(k.startswith("roi_heads.res5.norm.") for k in check["new_layer"]) and len(check["new_layer"]) == 5
    return record


def test_faster_rcnn_c4_on_embedded_voc(tmp_path, data_root, weights):
    summary = run("tiny_pascal_voc_R_50_C4.yaml", data_root, weights, tmp_path / "voc")
    assert set(summary) == {"bbox"}
    _finite(summary, "bbox")
    record = _check_full_load(tmp_path / "voc" / "trial0")
    assert record["seed"] == 0
    saved = json.loads((tmp_path / "voc" / SUMMARY_FILE).read_text())
    assert saved["summary"]["bbox"]["AP"]["values"] == [record["results"]["bbox"]["AP"]]
    cfg_text = (tmp_path / "voc" / "trial0" / "config.yaml").read_text()
    assert "NUM_CLASSES: 10" in cfg_text and "Res5ROIHeadsExtraNorm" in cfg_text  # embedded classes
    assert "class names: dataset metadata (embedded_data.json" in (tmp_path / "voc" / "log.txt").read_text()
    # --eval-only on the trained model (precise-BN statistics included) reproduces the trial's numbers
    evaluated = run("tiny_pascal_voc_R_50_C4.yaml", data_root, tmp_path / "voc" / "trial0" / "model_final.pth",
                    tmp_path / "voc_eval", "--eval-only")
    assert evaluated["bbox"] == pytest.approx(record["results"]["bbox"])
    assert json.loads((tmp_path / "voc_eval" / RESULTS_FILE).read_text())["results"] == record["results"]


def test_mask_rcnn_c4_on_embedded_coco(tmp_path, data_root, weights):
    summary = run("tiny_coco_R_50_C4.yaml", data_root, weights, tmp_path / "coco")
    assert set(summary) == {"bbox", "segm"}
    _finite(summary, "bbox")
    _finite(summary, "segm")
    _check_full_load(tmp_path / "coco" / "trial0")
    # --resume skips a finished trial and reproduces its numbers without training again
    again = run("tiny_coco_R_50_C4.yaml", data_root, weights, tmp_path / "coco", "--resume")
    assert again == summary


def _error(argv: list[str]) -> str:
    """The UserError main() raises; core.cli.run prints it as one line (checked through the CLI below)."""
    with pytest.raises(UserError) as exc:
        main(parse_args(argv))
    message = str(exc.value)
    assert "\n" not in message
    return message


def _argv(config: str, root: Path, weights: Path, out: Path) -> list[str]:
    return ["--config-file", config, "--data-root", str(root), "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(out), *FAST]


def test_missing_dataset_dirs_show_the_expected_layout_through_the_cli(tmp_path, weights):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "transfer.train_det",
                           *_argv("tiny_pascal_voc_R_50_C4.yaml", tmp_path / "empty", weights, tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("error: dataset voc_2007_trainval: missing") and "VOCdevkit/VOC2007/Annotations" in err
    assert EXPECTED_LAYOUT in err


def test_missing_coco_dirs_show_the_expected_layout(tmp_path, weights):
    (tmp_path / "empty").mkdir()
    err = _error(_argv("tiny_coco_R_50_C4.yaml", tmp_path / "empty", weights, tmp_path / "o"))
    assert "coco/annotations/instances_train2017.json" in err and EXPECTED_LAYOUT in err


def test_voc_xml_missing_a_field_names_the_file(tmp_path, data_root, weights):
    root = tmp_path / "data"
    shutil.copytree(data_root / "VOCdevkit", root / "VOCdevkit")
    shutil.copy(data_root / "embedded_data.json", root)
    xml = root / "VOCdevkit" / "VOC2007" / "Annotations" / "000003.xml"
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "", 1))
    err = _error(_argv("tiny_pascal_voc_R_50_C4.yaml", root, weights, tmp_path / "o"))
    assert str(xml) in err and "difficult" in err


def test_voc_class_names_follow_the_embedded_marker(tmp_path, data_root, weights):
    """Without the marker the real VOC classes apply, and the shapes' names are rejected by file."""
    root = tmp_path / "data"
    shutil.copytree(data_root / "VOCdevkit", root / "VOCdevkit")
    err = _error(_argv("tiny_pascal_voc_R_50_C4.yaml", root, weights, tmp_path / "o"))
    assert "VOC2007/Annotations/" in err and any(repr(name) in err for name in CLASS_NAMES) and "20 configured" in err


def test_coco_unknown_category_id_is_a_clear_error(tmp_path, data_root, weights):
    root = tmp_path / "data"
    shutil.copytree(data_root / "coco", root / "coco")
    shutil.copy(data_root / "embedded_data.json", root)
    ann = root / "coco" / "annotations" / "instances_train2017.json"
    dataset = json.loads(ann.read_text())
    dataset["annotations"][0]["category_id"] = 99
    ann.write_text(json.dumps(dataset))
    err = _error(_argv("tiny_coco_R_50_C4.yaml", root, weights, tmp_path / "o"))
    assert str(ann) in err and "category_id=99" in err


def test_training_without_weights_is_refused(tmp_path, data_root):
    err = _error(["--config-file", "tiny_pascal_voc_R_50_C4.yaml", "--data-root", str(data_root),
                               "OUTPUT_DIR", str(tmp_path / "o"), *FAST])
    assert "MODEL.WEIGHTS is empty" in err and "convert_to_d2" in err


def test_scratch_trains_from_detectron2_init_and_says_so(tmp_path, data_root, weights):
    """checkpoint=scratch (the paper's scratch row): nothing converted, MODEL.WEIGHTS empty, the coverage
    check bypassed for this case only; the backbone at step 0 is detectron2's own init."""
    from detectron2.utils.env import seed_all_rng
    from transfer.trainer import Trainer, setup, trial_config

    args = parse_args(["--config-file", "tiny_pascal_voc_R_50_C4.yaml", "--data-root", str(data_root), "--scratch",
                       "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path / "scratch"), *FAST])
    cfg = trial_config(setup(args), 0, 0)
    seed_all_rng(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    assert trainer.coverage is None  # nothing loaded, nothing checked
    seed_all_rng(0)
    fresh = Trainer.build_model(cfg)  # detectron2's init under the same seed
    start = trainer.model.state_dict()
    backbone = [k for k in fresh.state_dict() if k.startswith("backbone.")]
    assert backbone and all(torch.equal(start[k], fresh.state_dict()[k]) for k in backbone)
    # not a converted file: the converted random torchvision network is another init
    from transfer.trainer import load_pretrained

    load_pretrained(fresh, str(weights))
    assert not torch.equal(start["backbone.stem.conv1.weight"], fresh.state_dict()["backbone.stem.conv1.weight"])

    summary = main(args)  # the job itself, a few iterations
    saved = json.loads((tmp_path / "scratch" / SUMMARY_FILE).read_text())
    assert saved["init"] == "scratch (detectron2 init)" and saved["weights"] == ""
    record = json.loads((tmp_path / "scratch" / "trial0" / RESULTS_FILE).read_text())
    assert record["init"] == "scratch (detectron2 init)" and "weights_check" not in record
    assert set(summary) == {"bbox"} and not list((tmp_path / "scratch").glob("*.pkl"))
    assert "--scratch trains from detectron2's init" in _error(
        ["--config-file", "tiny_pascal_voc_R_50_C4.yaml", "--data-root", str(data_root), "--scratch",
         "MODEL.WEIGHTS", "w.pkl", "OUTPUT_DIR", str(tmp_path / "x")])


def test_finetune_scratch_converts_nothing_and_labels_both_baselines(tmp_path, data_root):
    import yaml

    from core.config import load_config
    from transfer import finetune

    def prepared(checkpoint: str, out: str):
        cfg = load_config(finetune.CONFIG_DIR / "tiny_voc.yaml",
                          [f"checkpoint={checkpoint}", f"out_dir={tmp_path / out}", f"data_root={data_root}"], finetune.RULES)
        return finetune.prepare(cfg), yaml.safe_load((tmp_path / out / finetune.CONFIG_NAME).read_text())

    command, saved = prepared("scratch", "scratch")
    i = command.index("MODEL.WEIGHTS")
    assert "--scratch" in command and command[i + 1] == "" and saved["init"] == "scratch (detectron2 init)"
    assert not (tmp_path / "scratch" / finetune.WEIGHTS_NAME).exists()
    command, saved = prepared("random", "random")
    assert "--scratch" not in command and saved["init"] == "random torchvision init"
    assert (tmp_path / "random" / finetune.WEIGHTS_NAME).is_file()


def test_finetune_passes_the_formats_pixel_normalisation_to_the_trainer(tmp_path, data_root):
    """A SimCLR v1 file (inputs in [0, 1], no mean/std) reaches detectron2 as PIXEL_MEAN 0 / PIXEL_STD 255,
    recorded in finetune_config.yaml; a torchvision file keeps ImageNet's mean/std."""
    import yaml

    from core.config import load_config
    from core.models import build_backbone
    from transfer import finetune

    torch.manual_seed(0)
    source = tmp_path / "r50.pth"
    torch.save({"state_dict": build_backbone("resnet50").state_dict()}, source)

    def prepared(out: str, *extra):
        cfg = load_config(finetune.CONFIG_DIR / "tiny_voc.yaml", [f"checkpoint={source}", f"out_dir={tmp_path / out}",
                                                                   f"data_root={data_root}", *extra], finetune.RULES)
        command = finetune.prepare(cfg)
        pixels = {command[i]: yaml.safe_load(command[i + 1]) for i, arg in enumerate(command)
                  if arg in ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD")}
        return pixels, yaml.safe_load((tmp_path / out / finetune.CONFIG_NAME).read_text())

    pixels, saved = prepared("simclr", "checkpoint_format=simclr_v1")
    assert pixels == {"MODEL.PIXEL_MEAN": [0.0, 0.0, 0.0], "MODEL.PIXEL_STD": [255.0, 255.0, 255.0]}
    assert saved["checkpoint_format_detected"] == "simclr_v1" and saved["input_normalization"]["d2_opts"]
    pixels, saved = prepared("imagenet")
    assert pixels["MODEL.PIXEL_MEAN"] == pytest.approx([123.675, 116.28, 103.53])
    assert pixels["MODEL.PIXEL_STD"] == pytest.approx([58.395, 57.12, 57.375])
