"""Our detectron2 configs resolve (get_cfg + _BASE_ chain) to the recipe of PROTOCOL.md section 6."""

from __future__ import annotations

import pytest
from detectron2.config import get_cfg

from core.cli import UserError
from transfer.d2_model import CONFIG_DIR, load_cfg

# Shared by every job (MoCo's Base-RCNN-C4-BN + the torchvision-weights overlay) and detectron2
# defaults the recipe relies on.
BASE = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.BACKBONE.NAME": "build_resnet_backbone",
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.OUT_FEATURES": ["res4"],
    "MODEL.ROI_HEADS.NAME": "Res5ROIHeadsExtraNorm",
    "MODEL.ROI_HEADS.IN_FEATURES": ["res4"],
    "MODEL.BACKBONE.FREEZE_AT": 0,
    "MODEL.RESNETS.NORM": "naiveSyncBN",
    "TEST.PRECISE_BN.ENABLED": True,
    "TEST.PRECISE_BN.NUM_ITER": 200,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.BASE_LR": 0.02,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
    "INPUT.FORMAT": "RGB",
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "SOLVER.WEIGHT_DECAY": 1e-4,
    "SOLVER.WEIGHT_DECAY_NORM": 0.0,
    "SOLVER.MOMENTUM": 0.9,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 512,
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.WEIGHTS": "",  # never a download URL: weights come from convert_to_d2
}
VOC_SIZES = {"INPUT.MIN_SIZE_TRAIN": list(range(480, 801, 32)), "INPUT.MIN_SIZE_TEST": 800}
COCO_SIZES = {"INPUT.MIN_SIZE_TRAIN": list(range(640, 801, 32)), "INPUT.MIN_SIZE_TEST": 800}
JOBS = {
    "pascal_voc_R_50_C4_24k.yaml": {
        **VOC_SIZES, "MODEL.MASK_ON": False, "MODEL.ROI_HEADS.NUM_CLASSES": 20,
        "DATASETS.TRAIN": ["voc_2007_trainval", "voc_2012_trainval"], "DATASETS.TEST": ["voc_2007_test"],
        "SOLVER.MAX_ITER": 24000, "SOLVER.STEPS": [18000, 22000], "SOLVER.WARMUP_ITERS": 100,
    },
    "pascal_voc07_R_50_C4_9k.yaml": {  # our choice: MoCo v1's 9k, steps at the 24k job's fractions
        **VOC_SIZES, "MODEL.MASK_ON": False, "MODEL.ROI_HEADS.NUM_CLASSES": 20,
        "DATASETS.TRAIN": ["voc_2007_trainval"], "DATASETS.TEST": ["voc_2007_test"],
        "SOLVER.MAX_ITER": 9000, "SOLVER.STEPS": [6750, 8250], "SOLVER.WARMUP_ITERS": 100,
    },
    "coco_R_50_C4_1x.yaml": {
        **COCO_SIZES, "MODEL.MASK_ON": True, "MODEL.ROI_HEADS.NUM_CLASSES": 80,
        "DATASETS.TRAIN": ["coco_2017_train"], "DATASETS.TEST": ["coco_2017_val"],
        "SOLVER.MAX_ITER": 90000, "SOLVER.STEPS": [60000, 80000], "SOLVER.WARMUP_ITERS": 1000,
    },
    "coco_R_50_C4_2x.yaml": {
        **COCO_SIZES, "MODEL.MASK_ON": True, "MODEL.ROI_HEADS.NUM_CLASSES": 80,
        "DATASETS.TRAIN": ["coco_2017_train"], "DATASETS.TEST": ["coco_2017_val"],
        "SOLVER.MAX_ITER": 180000, "SOLVER.STEPS": [120000, 160000], "SOLVER.WARMUP_ITERS": 1000,
    },
}
# What a tiny CPU variant may change relative to its job: sizes, iterations, ROI batch, proposals.
TINY = {"tiny_pascal_voc_R_50_C4.yaml": "pascal_voc_R_50_C4_24k.yaml", "tiny_coco_R_50_C4.yaml": "coco_R_50_C4_1x.yaml"}
TINY_MAY_CHANGE = {
    "INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST",
    "SOLVER.IMS_PER_BATCH", "SOLVER.MAX_ITER", "SOLVER.STEPS", "SOLVER.WARMUP_ITERS", "SOLVER.CHECKPOINT_PERIOD",
    "TEST.PRECISE_BN.NUM_ITER", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "MODEL.RPN.PRE_NMS_TOPK_TEST",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
}


def resolved(name: str):
    """Plain get_cfg + merge_from_file, as detectron2 users would do (no helper of ours in between)."""
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIG_DIR / name))
    return cfg


def field(cfg, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = value[part]
    return list(value) if isinstance(value, (tuple, list)) else value


def flatten(cfg, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


@pytest.mark.parametrize("name", sorted(JOBS))
def test_job_config_matches_the_recipe(name):
    import transfer.d2_model  # noqa: F401  (registers the ExtraNorm head the configs name)

    cfg = resolved(name)
    expected = {**BASE, **JOBS[name]}
    wrong = {k: (field(cfg, k), v) for k, v in expected.items() if field(cfg, k) != pytest.approx(v)}
    assert not wrong, wrong


@pytest.mark.parametrize("tiny", sorted(TINY))
def test_tiny_variants_change_only_sizes_iterations_rois_and_proposals(tiny):
    small, full = flatten(resolved(tiny)), flatten(resolved(TINY[tiny]))
    changed = {k for k in full if small[k] != full[k]}
    assert changed <= TINY_MAY_CHANGE, changed - TINY_MAY_CHANGE
    assert {"SOLVER.MAX_ITER", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "INPUT.MIN_SIZE_TEST"} <= changed


def test_every_change_in_a_tiny_variant_is_commented():
    """Each leaf key sits under a comment, directly or as part of a block of keys the comment heads."""
    def is_leaf(text: str) -> bool:
        return bool(text) and not text.startswith("#") and not text.endswith(":")

    for tiny in TINY:
        lines = [line.strip() for line in (CONFIG_DIR / tiny).read_text().splitlines()]
        for i, text in enumerate(lines):
            if is_leaf(text) and not text.startswith("_BASE_"):
                j = i - 1
                while j >= 0 and is_leaf(lines[j]):
                    j -= 1
                assert j >= 0 and lines[j].startswith("#"), f"{tiny}:{i + 1} {text!r} has no comment above it"


def test_load_cfg_takes_names_paths_and_overrides(tmp_path):
    cfg = load_cfg("coco_R_50_C4_2x.yaml", ["SOLVER.BASE_LR", "0.01", "SOLVER.IMS_PER_BATCH", "8"])
    assert cfg.SOLVER.BASE_LR == 0.01 and cfg.SOLVER.IMS_PER_BATCH == 8 and cfg.SOLVER.MAX_ITER == 180000
    assert load_cfg(CONFIG_DIR / "pascal_voc_R_50_C4_24k.yaml").SOLVER.MAX_ITER == 24000
    with pytest.raises(UserError, match="pascal_voc_R_50_C4_24k.yaml"):
        load_cfg("no_such.yaml")
    with pytest.raises(UserError, match="Non-existent key: SOLVER.NO_SUCH_KEY"):  # unknown keys are errors
        load_cfg("coco_R_50_C4_1x.yaml", ["SOLVER.NO_SUCH_KEY", "1"])
