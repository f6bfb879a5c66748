"""Prove a converted file is what the detection recipe needs, instead of trusting the renaming.

(a) coverage: load the .pkl into the real detectron2 C4 model through DetectionCheckpointer (its
    suffix-matching heuristics included) and read detectron2's own key matching and IncompatibleKeys:
    every parameter and buffer of the backbone and of the res5 head must receive a converted
    tensor, the extra norm after res5 being the only new layer there, and no converted tensor may
    go unused or be skipped for a wrong shape.
(b) equivalence: the same RGB image through the torchvision ResNet-50 (torchvision's ImageNet
    normalisation) and through the detectron2 model (its own pixel mean/std and INPUT.FORMAT) in
    eval mode, float32: res4 (torchvision layer3) and res5 (layer4, before the extra norm) must
    agree to within REL_TOL of the largest activation. This catches what names cannot: BN eps,
    stride placement (STRIDE_IN_1X1), channel order, pixel normalisation, swapped tensors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.data.detection_utils import convert_PIL_to_numpy
from PIL import Image
from torchvision.transforms import functional as TF

from core.models import build_backbone
from transfer.d2_model import EXTRA_NORM

REL_TOL = 1e-4  # max |d2 - torchvision| / max |torchvision|, float32
BACKBONE_PREFIXES = ("backbone.", "roi_heads.res5.")
NEW_LAYER_PREFIX = f"roi_heads.res5.{EXTRA_NORM}."
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

logger = logging.getLogger(__name__)


@dataclass
class Coverage:
    loaded: list[str]  # model keys under backbone./roi_heads.res5. that received a tensor
    new_layer: list[str]  # keys of the extra norm (expected to be missing)
    not_found: list[str]  # other backbone/res5 keys without a tensor: a failure
    unused: list[str]  # converted tensors that matched nothing: a failure
    bad_shapes: list[tuple]  # (key, shape in file, shape in model): a failure
    heads: list[str] = field(default_factory=list)  # RPN / box / mask predictors: new by design

    @property
    def ok(self) -> bool:
        return not (self.not_found or self.unused or self.bad_shapes) and bool(self.loaded)

    def summary(self) -> str:
        if self.ok:
            return (f"coverage OK: {len(self.loaded)} backbone+res5 tensors loaded; only new layer there is "
                    f"the extra norm after res5 ({len(self.new_layer)} tensors)")
        parts = []
        if self.not_found:
            parts.append(f"{len(self.not_found)} backbone/res5 tensors not found in the file {self.not_found[:5]}")
        if self.unused:
            parts.append(f"{len(self.unused)} converted tensors unused by the model {self.unused[:5]}")
        if self.bad_shapes:
            parts.append(f"{len(self.bad_shapes)} shape mismatches {self.bad_shapes[:3]}")
        if not self.loaded:
            parts.append("nothing was loaded")
        return "coverage FAILED: " + "; ".join(parts)


class SafeCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose .pkl reader refuses anything but numpy arrays and plain types
    (transfer.convert.read_d2_weights); detectron2's own reader is a bare pickle.load. Other files go
    through fvcore's torch.load, weights-only by default in this torch."""

    def _load_file(self, filename):
        if not str(filename).endswith(".pkl"):
            return super()._load_file(filename)
        from transfer.convert import read_d2_weights

        data = read_d2_weights(filename)
        if "model" in data and "__author__" in data:  # our files and detectron2's model zoo format
            return data
        data = data.get("blobs", data)  # Caffe2 / Detectron1 files, read as detectron2 reads them
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}


def load_with_report(model: torch.nn.Module, weights: str | Path) -> Coverage:
    """Load a converted .pkl into `model` the way the trainer does and classify every key.

    The load itself is DetectionCheckpointer's (`_load_file` + `_load_model`: `load()` only logs the
    IncompatibleKeys, and we need them as data). Its missing-key list cannot see BN counters
    (torch fills an absent `num_batches_tracked` silently), so which model key receives which file
    tensor is taken from detectron2's own suffix matcher, run once more on the same dicts.
    """
    weights = str(weights)
    if not weights.endswith(".pkl"):
        raise ValueError(f"{weights}: pretrained weights must be a converted .pkl (transfer/convert_to_d2.py)")
    checkpointer = SafeCheckpointer(model, save_to_disk=False)
    checkpoint = checkpointer._load_file(weights)
    file_state = {k: torch.as_tensor(v) for k, v in checkpoint["model"].items()}
    model_state = model.state_dict()
    matcher_log = logging.getLogger(align_and_update_state_dicts.__module__)
    level = matcher_log.level
    matcher_log.setLevel(logging.ERROR)  # the real load below logs the same match table
    try:
        aligned = align_and_update_state_dicts(model_state, dict(file_state), c2_conversion=False)
    finally:
        matcher_log.setLevel(level)
    received = {k for k in aligned if k in model_state}
    incompatible = checkpointer._load_model(checkpoint)
    ours = [k for k in model_state if k.startswith(BACKBONE_PREFIXES)]
    missing = [k for k in ours if k not in received]
    return Coverage(
        loaded=sorted(received.intersection(ours)),
        new_layer=sorted(k for k in missing if k.startswith(NEW_LAYER_PREFIX)),
        not_found=sorted(k for k in missing if not k.startswith(NEW_LAYER_PREFIX)),
        # an unmatched file key is kept under its own name, so the load reports it as "unexpected"
        unused=sorted(set(aligned) - set(model_state) | set(incompatible.unexpected_keys)),
        bad_shapes=list(incompatible.incorrect_shapes),
        heads=sorted(k for k in model_state if not k.startswith(BACKBONE_PREFIXES) and k not in received),
    )


@dataclass
class Equivalence:
    res4_rel: float
    res5_rel: float
    shapes_match: bool
    tol: float = REL_TOL

    @property
    def ok(self) -> bool:
        return self.shapes_match and self.res4_rel <= self.tol and self.res5_rel <= self.tol

    def summary(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        if not self.shapes_match:
            return f"features {verdict}: res4/res5 shapes differ between torchvision and detectron2"
        return (f"features {verdict}: max|d2 - torchvision| / max|torchvision| = {self.res4_rel:.1e} (res4), "
                f"{self.res5_rel:.1e} (res5); tolerance {self.tol:.0e}, float32, eval mode")


def probe_image(seed: int = 0, height: int = 160, width: int = 192) -> Image.Image:
    """A smooth random RGB image (a blurred-looking upsampled noise field): realistic activations."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(height // 16, width // 16, 3)).astype(np.uint8)
    fine = rng.normal(0, 20, size=(height, width, 3))
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.float64)
    return Image.fromarray(np.clip(base + fine, 0, 255).astype(np.uint8))


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


@torch.no_grad()
def compare_features(model: torch.nn.Module, tv_state: dict, input_format: str, image: Image.Image | None = None,
                     mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Equivalence:
    """res4/res5 of the detectron2 model (eval) against the torchvision ResNet-50 holding `tv_state`, fed
    with the checkpoint format's normalisation (mean/std on [0, 1] inputs)."""
    image = image or probe_image()
    tv = build_backbone("resnet50")
    missing, unexpected = tv.load_state_dict(tv_state, strict=False)
    assert not unexpected and {k for k in missing if not k.endswith("num_batches_tracked")} <= {"fc.weight", "fc.bias"}
    tv.eval()
    model.eval()
    x = TF.normalize(TF.to_tensor(image), list(mean), list(std))[None]
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    tv_res4 = tv.layer3(tv.layer2(tv.layer1(x)))
    tv_res5 = tv.layer4(tv_res4)

    # detectron2 path exactly as its data mapper + GeneralizedRCNN see it: pixels read in INPUT.FORMAT,
    # HWC -> CHW float in 0-255, then the model's own (x - PIXEL_MEAN) / PIXEL_STD.
    pixels = convert_PIL_to_numpy(image, input_format)
    d2_input = torch.as_tensor(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float()
    images = model.preprocess_image([{"image": d2_input}])
    d2_res4 = model.backbone(images.tensor)["res4"]
    d2_res5 = d2_res4
    for name, block in model.roi_heads.res5.named_children():
        if name == EXTRA_NORM:  # compare the pretrained stage itself, before the new layer
            break
        d2_res5 = block(d2_res5)
    d2_res4, d2_res5 = d2_res4.cpu(), d2_res5.cpu()
    if d2_res4.shape != tv_res4.shape or d2_res5.shape != tv_res5.shape:
        return Equivalence(float("inf"), float("inf"), shapes_match=False)
    return Equivalence(_rel(d2_res4, tv_res4), _rel(d2_res5, tv_res5), shapes_match=True)


@dataclass
class Verdict:
    coverage: Coverage
    features: Equivalence | None

    @property
    def ok(self) -> bool:
        return self.coverage.ok and self.features is not None and self.features.ok

    def summary(self) -> str:
        lines = [self.coverage.summary()]
        lines.append(self.features.summary() if self.features else "features not compared (coverage failed)")
        lines.append("VERDICT: PASS" if self.ok else "VERDICT: FAIL")
        return "\n".join(lines)


def verify(weights: str | Path, tv_state: dict, cfg, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Verdict:
    """(a) then (b) on a fresh model built from `cfg`; (b) is skipped when (a) already failed. mean/std:
    the torchvision side's input normalisation, which cfg's PIXEL_MEAN/STD must equal (x 255)."""
    from transfer.d2_model import build_c4_model

    model = build_c4_model(cfg)
    coverage = load_with_report(model, weights)
    features = compare_features(model, tv_state, cfg.INPUT.FORMAT, mean=mean, std=std) if coverage.ok else None
    return Verdict(coverage, features)
