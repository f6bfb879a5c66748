"""The detectron2 side of the recipe: the ExtraNorm ROI head, our config files, model building.

Importing this module registers `Res5ROIHeadsExtraNorm`, which every config in detectron_configs/
names. detectron2.model_zoo is never imported (it needs pkg_resources); configs come from our folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.layers import get_norm
from detectron2.modeling import ROI_HEADS_REGISTRY, build_model
from detectron2.modeling.roi_heads import Res5ROIHeads

from core.cli import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "detectron_configs"
EXTRA_NORM = "norm"  # the module name of the added layer inside roi_heads.res5

logger = logging.getLogger(__name__)


class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """Res5ROIHeads with one more norm layer (the backbone's norm type) after the res5 stage.

    Why: features from unsupervised pretraining are distributed unlike supervised ones, so MoCo's
    recipe (reused for SimSiam's Table 5) fine-tunes with trained, synchronised BN and normalises
    the features entering the new predictors. It is the only layer of the res5 head that no
    pretrained tensor initialises.
    """

    @classmethod
    def _build_res5_block(cls, cfg):
        seq, out_channels = super()._build_res5_block(cfg)
        seq.add_module(EXTRA_NORM, get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return seq, out_channels


if "Res5ROIHeadsExtraNorm" not in ROI_HEADS_REGISTRY:
    ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)


def resolve_config_path(config: str | Path) -> Path:
    """A path as given, else a file name inside detectron_configs/ (e.g. 'pascal_voc_R_50_C4_24k.yaml')."""
    path = Path(config)
    if path.is_file():
        return path
    if (CONFIG_DIR / path).is_file():
        return CONFIG_DIR / path
    raise UserError(
        f"detectron2 config not found: {config}. Give a path or one of: "
        + ", ".join(sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
    )


def load_cfg(config: str | Path, opts: list[str] | None = None) -> CfgNode:
    """detectron2 defaults <- our yaml (with its _BASE_ chain) <- KEY VALUE overrides; not frozen."""
    cfg = get_cfg()
    path = resolve_config_path(config)
    try:
        cfg.merge_from_file(str(path))
        if opts:
            cfg.merge_from_list(list(opts))
    except (AssertionError, KeyError, ValueError) as e:  # yacs' way of saying "unknown key" / bad value
        raise UserError(f"detectron2 config {path} with overrides {list(opts or [])}: {e}") from None
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        # Single-process CPU is a first-class path (tests, laptops): pick the CPU, say so.
        logger.warning("MODEL.DEVICE=%s but no GPU is visible: using cpu", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def pixel_options(normalization, input_format: str) -> list[str]:
    """MODEL.PIXEL_MEAN / PIXEL_STD overrides for a checkpoint format's input normalisation.

    detectron2 subtracts PIXEL_MEAN and divides by PIXEL_STD on 0-255 pixels in INPUT.FORMAT channel
    order, so ToTensor's [0, 1] mean/std are scaled by 255 (ImageNet: 123.675 / 58.395, ...; SimCLR's
    [0, 1] inputs: mean 0, std 255) and reversed for BGR configs."""
    mean = [round(255 * m, 6) for m in normalization.mean]
    std = [round(255 * s, 6) for s in normalization.std]
    if input_format.upper() == "BGR":
        mean, std = mean[::-1], std[::-1]
    return ["MODEL.PIXEL_MEAN", str(mean), "MODEL.PIXEL_STD", str(std)]


def build_c4_model(cfg: CfgNode) -> torch.nn.Module:
    if cfg.MODEL.ROI_HEADS.NAME != "Res5ROIHeadsExtraNorm":
        logger.warning("ROI head is %s, not the recipe's Res5ROIHeadsExtraNorm", cfg.MODEL.ROI_HEADS.NAME)
    return build_model(cfg)
