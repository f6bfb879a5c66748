"""Deterministic synthetic ("embedded") datasets written in the real on-disk formats.

The project ships no real data, so every stage is exercised on a small synthetic world of ten
polygonal shape kinds. The same world is written as

* an ImageFolder classification set (``imagefolder/{train,val}/<class>/*.jpg``),
* Pascal VOC 2007 (trainval + test) and VOC 2012 (trainval) detection sets (``VOCdevkit/``),
* COCO 2017-style instance annotations with polygon masks (``coco/``).

Shape determines the label, and texture correlates with it (as in natural images): each kind has a
signature pattern that it wears with probability SIGNATURE_TEXTURE_P, any pattern otherwise. Colour,
scale, rotation, position and background clutter are random and never tell the class, so a
random-init network (whose pooled features are dominated by colour) is near chance, while features
made invariant to SimSiam's augmentations (crops, colour jitter, grayscale) keep what does tell it. Objects are exact polygons, rasterised here with
the COCO pixel convention (pixel ``i`` covers ``[i, i+1)``), so the written polygons are exact masks.

Every image draws from its own RNG seeded by ``(seed, split, index)``: output is byte-identical for
the same config, and any part can be regenerated independently.

CLI: ``python -m embedded --out-dir DIR [--seed N] [--cls-image-size N] ...`` (every flag shown with its
default by ``--help``).
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.cli import Command, UserError, run
from core.files import sync_dir, write_text
from core.progress import Progress

FORMAT_VERSION = 4  # bump whenever the generated content changes: stale data dirs are then refused
# The dataset's metadata at its root, written last (so it also marks a complete directory): format
# version, config and class_names. Stages read the class names from this file, never from this module
# (transfer/datasets.py reads it by name), so the same file can describe a dataset made elsewhere.
MARKER_NAME = "embedded_data.json"

# Sorted, so ImageFolder's alphabetical label order equals the index into this tuple.
CLASS_NAMES = (
    "arrow",
    "circle",
    "crescent",
    "cross",
    "ellipse",
    "hexagon",
    "ring",
    "square",
    "star",
    "triangle",
)

# Fixed ids for the RNG streams; changing one changes that split's content.
_SPLIT_IDS = {
    "cls_train": 0,
    "cls_val": 1,
    "voc07_trainval": 2,
    "voc07_test": 3,
    "voc12_trainval": 4,
    "coco_train": 5,
    "coco_val": 6,
}

_CIRCLE_VERTICES = 32
_SUPERSAMPLE = 2  # samples per pixel side for anti-aliased object edges


@dataclass(frozen=True)
class EmbeddedDataConfig:
    seed: int = 0
    # classification ImageFolder: square side in pixels, images per class and split
    cls_image_size: int = 64
    cls_train_per_class: int = 50
    cls_val_per_class: int = 20
    # detection sets (VOC and COCO share the world): image size, then images per split
    det_width: int = 160
    det_height: int = 128
    voc07_trainval: int = 40
    voc07_test: int = 20
    voc12_trainval: int = 40
    coco_train: int = 40
    coco_val: int = 20
    jpeg_quality: int = 90

    def __post_init__(self):
        if min(self.cls_image_size, self.det_width, self.det_height) < 32:
            raise ValueError("image sizes must be >= 32 pixels so that shapes stay recognisable")
        if min(self.cls_train_per_class, self.cls_val_per_class, self.coco_train, self.coco_val) < 1:
            raise ValueError("image counts must be >= 1")
        # detectron2 reads ImageSets with np.loadtxt, which returns a 0-d array for a one-line
        # file and then fails to iterate it.
        if min(self.voc07_trainval, self.voc07_test, self.voc12_trainval) < 2:
            raise ValueError("VOC split sizes must be >= 2 (detectron2 cannot read one-line ImageSets)")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be in [1, 100]")


@dataclass(frozen=True)
class PlacedObject:
    label: int  # index into CLASS_NAMES
    polygon: np.ndarray  # (N, 2) float x, y in image pixels, COCO convention


# --------------------------------------------------------------------------- shapes


def _regular_polygon(n: int, rx: float = 1.0, ry: float = 1.0, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([rx * np.cos(angles), ry * np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    outer = _regular_polygon(5, phase=-np.pi / 2)
    inner = 0.45 * _regular_polygon(5, phase=-np.pi / 2 + np.pi / 5)
    return np.stack([outer, inner], axis=1).reshape(-1, 2)


def _ring() -> np.ndarray:
    # One "keyhole" polygon: the outer circle, then the hole traversed backwards, joined by a
    # zero-width slit. COCO merges several polygons of an object by union, so a hole must live
    # inside a single polygon; even-odd filling (here and in pycocotools) leaves it empty.
    outer = _regular_polygon(_CIRCLE_VERTICES)
    inner = 0.55 * outer
    closing = np.arange(_CIRCLE_VERTICES + 1) % _CIRCLE_VERTICES
    return np.concatenate([outer[closing], inner[closing[::-1]]])


def _crescent() -> np.ndarray:
    # Unit circle minus a circle of radius rc centred at (d, 0): the long arc of the unit circle
    # between the two intersection points, then back along the cutting circle.
    rc, d = 0.85, 0.6
    ix = (d * d + 1 - rc * rc) / (2 * d)
    iy = np.sqrt(1 - ix * ix)
    alpha = np.arctan2(iy, ix)
    beta = np.arctan2(iy, ix - d)
    outer_t = np.linspace(alpha, 2 * np.pi - alpha, 25)
    inner_t = np.linspace(2 * np.pi - beta, beta, 17)[1:-1]  # endpoints already on the outer arc
    outer = np.stack([np.cos(outer_t), np.sin(outer_t)], axis=1)
    inner = np.stack([d + rc * np.cos(inner_t), rc * np.sin(inner_t)], axis=1)
    return np.concatenate([outer, inner])


def _cross() -> np.ndarray:
    a = 0.33
    return np.array(
        [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)],
        dtype=float,
    )


def _arrow() -> np.ndarray:
    return np.array([(-1, -0.3), (0.15, -0.3), (0.15, -0.75), (1, 0), (0.15, 0.75), (0.15, 0.3), (-1, 0.3)], dtype=float)


_SHAPES = {
    "arrow": _arrow(),
    "circle": _regular_polygon(_CIRCLE_VERTICES),
    "crescent": _crescent(),
    "cross": _cross(),
    "ellipse": _regular_polygon(_CIRCLE_VERTICES, ry=0.5),
    "hexagon": _regular_polygon(6),
    "ring": _ring(),
    "square": _regular_polygon(4, phase=np.pi / 4),
    "star": _star(),
    "triangle": _regular_polygon(3, phase=-np.pi / 2),
}
assert tuple(sorted(_SHAPES)) == CLASS_NAMES


def _oriented_shape(rng: np.random.Generator, label: int, extent: float) -> np.ndarray:
    """The shape tilted by up to 30 degrees, scaled so its larger bbox side is `extent`, bbox at the origin.

    Objects keep a roughly canonical pose, as in photographs; a free rotation would add a nuisance
    that no SimSiam augmentation removes."""
    theta = rng.uniform(-np.pi / 6, np.pi / 6)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    poly = _SHAPES[CLASS_NAMES[label]] @ rotation.T
    poly = poly - poly.min(axis=0)
    return poly * (extent / poly.max())


def polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


# --------------------------------------------------------------------------- rasterising


def _even_odd_inside(poly: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """(len(ys), len(xs)) bool: which sample points lie inside `poly` by the even-odd rule."""
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    spans = (y0[:, None] > ys) != (y1[:, None] > ys)  # (edges, rows): edge crosses the row
    dy = np.where(y1 == y0, 1.0, y1 - y0)  # horizontal edges never span; avoid dividing by 0
    x_cross = x0[:, None] + (ys - y0[:, None]) * ((x1 - x0) / dy)[:, None]
    x_cross = np.where(spans, x_cross, -np.inf)
    crossings = (xs[None, None, :] < x_cross[:, :, None]).sum(axis=0)
    return crossings % 2 == 1


def polygon_coverage(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fraction of each pixel covered by `poly` (float32, height x width), supersampled."""
    coverage = np.zeros((height, width), np.float32)
    left, top = np.maximum(np.floor(poly.min(axis=0)).astype(int), 0)
    right, bottom = np.minimum(np.ceil(poly.max(axis=0)).astype(int), [width, height])
    if right <= left or bottom <= top:
        return coverage
    offsets = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
    xs = (np.arange(left, right)[:, None] + offsets).ravel()
    ys = (np.arange(top, bottom)[:, None] + offsets).ravel()
    inside = _even_odd_inside(poly, xs, ys)
    window = inside.reshape(bottom - top, _SUPERSAMPLE, right - left, _SUPERSAMPLE).mean(axis=(1, 3))
    coverage[top:bottom, left:right] = window
    return coverage


# --------------------------------------------------------------------------- appearance


def _random_colour(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*sat), rng.uniform(*val))
    return np.array(rgb, np.float32)


# Object colours come from a small palette shared by every kind. Colour then never tells the class,
# and it does not single out an image either: with free colours, SimSiam (whose colour jitter moves
# hue by at most 0.1) matches its two views by colour and learns nothing about the objects.
_PALETTE_HUES = np.linspace(0, 1, 6, endpoint=False)


def _palette_colour(rng: np.random.Generator) -> np.ndarray:
    hue = _PALETTE_HUES[rng.integers(len(_PALETTE_HUES))] + rng.uniform(-0.02, 0.02)
    rgb = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.9))
    return np.array(rgb, np.float32)


TEXTURE_KINDS = ("solid", "stripes", "checker", "dots", "gradient")
# Probability that an object wears its kind's signature texture. Without this correlation a short
# CPU-sized SimSiam run matches its two views by per-image texture and never reaches the shapes
# (measured: kNN stayed at chance after 14 epochs of ResNet-18).
SIGNATURE_TEXTURE_P = 0.9


def _texture(rng: np.random.Generator, poly: np.ndarray, height: int, width: int, label: int) -> np.ndarray:
    """An (H, W, 3) float image of a two-colour pattern sized relative to the object."""
    first = _palette_colour(rng)
    second = _palette_colour(rng) * 0.5  # a darker second colour keeps patterns visible in grayscale
    if rng.random() < SIGNATURE_TEXTURE_P:
        # kinds k and k+5 share a pattern and differ by its orientation (0 or 90 degrees, +-15)
        kind = TEXTURE_KINDS[label % len(TEXTURE_KINDS)]
        theta = (label // len(TEXTURE_KINDS)) * np.pi / 2 + rng.uniform(-np.pi / 12, np.pi / 12)
    else:
        kind = TEXTURE_KINDS[rng.integers(len(TEXTURE_KINDS))]
        theta = rng.uniform(0, np.pi)
    period = max(4.0, np.ptp(poly, axis=0).max() / 3.5)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    if kind == "solid":
        mix = np.zeros_like(u)
    elif kind == "stripes":
        mix = (np.mod(u, period) < period / 2).astype(np.float32)
    elif kind == "checker":
        mix = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif kind == "dots":
        du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2
        mix = (du * du + dv * dv < (0.3 * period) ** 2).astype(np.float32)
    else:  # gradient across the object along the random direction
        proj = poly @ np.array([np.cos(theta), np.sin(theta)])
        mix = np.clip((u - proj.min()) / max(np.ptp(proj), 1e-6), 0, 1)
    return first + mix[..., None] * (second - first)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Low-contrast smooth noise around a dull random colour plus fine grain, (H, W, 3) float."""
    base = _random_colour(rng, (0.0, 0.35), (0.3, 0.7))
    coarse = rng.normal(0.5, 0.25, size=(height // 8 + 2, width // 8 + 2, 3)).clip(0, 1)
    coarse_img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
    smooth = np.asarray(coarse_img, np.float32) / 255 - 0.5
    grain = rng.normal(0, 0.03, size=(height, width, 3))
    return (base + 0.08 * smooth + grain).astype(np.float32)


def _draw_distractors(rng: np.random.Generator, image: Image.Image) -> None:
    """A few thin strokes and small irregular blobs, deliberately unlike any object kind."""
    draw = ImageDraw.Draw(image)
    width, height = image.size
    side = min(width, height)
    for _ in range(rng.integers(1, 4)):
        colour = tuple(int(c) for c in (_random_colour(rng, (0, 0.6), (0.2, 0.9)) * 255))
        if rng.random() < 0.5:
            points = rng.uniform([0, 0], [width, height], size=(rng.integers(2, 5), 2))
            draw.line([tuple(p) for p in points], fill=colour, width=int(rng.integers(1, 3)))
        else:
            centre = rng.uniform([0, 0], [width, height])
            radii = side * rng.uniform(0.02, 0.06) * rng.uniform(0.5, 1.3, size=7)
            blob = centre + radii[:, None] * _regular_polygon(7, phase=rng.uniform(0, 2 * np.pi))
            draw.polygon([tuple(p) for p in blob], fill=colour)


def _render(rng: np.random.Generator, objects: list[PlacedObject], width: int, height: int) -> Image.Image:
    """Background and distractors first, then objects on top, so objects are never occluded."""
    canvas = Image.fromarray(_to_uint8(_background(rng, height, width)))
    _draw_distractors(rng, canvas)
    pixels = np.asarray(canvas, np.float32) / 255
    for obj in objects:
        alpha = polygon_coverage(obj.polygon, height, width)[..., None]
        pixels = pixels * (1 - alpha) + _texture(rng, obj.polygon, height, width, obj.label) * alpha
    return Image.fromarray(_to_uint8(pixels))


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return (pixels.clip(0, 1) * 255 + 0.5).astype(np.uint8)


def _finish_polygon(poly: np.ndarray) -> np.ndarray:
    # Round once, and use the rounded polygon both for drawing and for the annotations, so the
    # written coordinates are exactly the drawn ones.
    return np.round(poly, 2)


# --------------------------------------------------------------------------- scenes


def classification_scene(rng: np.random.Generator, label: int, size: int) -> tuple[Image.Image, PlacedObject]:
    """One main object of kind `label` spanning 65-95% of the image side (crops then mostly see the object)."""
    extent = size * rng.uniform(0.65, 0.95)
    poly = _oriented_shape(rng, label, extent)
    span = poly.max(axis=0)
    if span.max() > size - 2:  # tilted, a long shape can outgrow a small image: shrink it to fit (no draw
        poly = poly * ((size - 2) / span.max())  # changes, so every image that fitted stays byte-identical)
        span = poly.max(axis=0)
    poly = _finish_polygon(poly + rng.uniform(1, size - 1 - span))
    obj = PlacedObject(label, poly)
    return _render(rng, [obj], size, size), obj


def _boxes_overlap(a: np.ndarray, b: np.ndarray, gap: float) -> bool:
    return bool(np.all(a[:2] < b[2:] + gap) and np.all(b[:2] < a[2:] + gap))


def detection_scene(rng: np.random.Generator, width: int, height: int) -> tuple[Image.Image, list[PlacedObject]]:
    """1-4 objects of random kinds and sizes, fully inside the image, with disjoint bounding boxes."""
    side = min(width, height)
    objects: list[PlacedObject] = []
    boxes: list[np.ndarray] = []
    for _ in range(rng.integers(1, 5)):
        label = int(rng.integers(len(CLASS_NAMES)))
        poly = _oriented_shape(rng, label, side * rng.uniform(0.18, 0.5))
        span = poly.max(axis=0)
        for _attempt in range(30):
            placed = poly + rng.uniform(1, np.array([width, height]) - 1 - span)
            box = np.concatenate([placed.min(axis=0), placed.max(axis=0)])
            if not any(_boxes_overlap(box, other, gap=2) for other in boxes):
                objects.append(PlacedObject(label, _finish_polygon(placed)))
                boxes.append(box)
                break
    return _render(rng, objects, width, height), objects


def _rng(cfg: EmbeddedDataConfig, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, _SPLIT_IDS[split], index])


def _save_jpeg(image: Image.Image, path: Path, cfg: EmbeddedDataConfig) -> None:
    image.save(path, format="JPEG", quality=cfg.jpeg_quality)


# --------------------------------------------------------------------------- ImageFolder


def write_imagefolder(root: Path, cfg: EmbeddedDataConfig) -> None:
    for split, per_class in (("train", cfg.cls_train_per_class), ("val", cfg.cls_val_per_class)):
        jobs = [(label, i) for label in range(len(CLASS_NAMES)) for i in range(per_class)]
        for label in range(len(CLASS_NAMES)):
            (root / "imagefolder" / split / CLASS_NAMES[label]).mkdir(parents=True)
        for label, i in Progress(jobs, desc=f"imagefolder/{split}", unit="img"):
            image, _ = classification_scene(_rng(cfg, f"cls_{split}", label * per_class + i), label, cfg.cls_image_size)
            _save_jpeg(image, root / "imagefolder" / split / CLASS_NAMES[label] / f"{i:05d}.jpg", cfg)


# --------------------------------------------------------------------------- Pascal VOC


def _voc_box(poly: np.ndarray) -> tuple[int, int, int, int]:
    """VOC's 1-based inclusive pixel box of the pixels the polygon touches."""
    (x0, y0), (x1, y1) = poly.min(axis=0), poly.max(axis=0)
    return int(np.floor(x0)) + 1, int(np.floor(y0)) + 1, int(np.ceil(x1)), int(np.ceil(y1))


def _voc_xml(year: str, file_id: str, width: int, height: int, objects: list[PlacedObject]) -> ET.Element:
    def sub(parent: ET.Element, tag: str, text: object = None) -> ET.Element:
        element = ET.SubElement(parent, tag)
        if text is not None:
            element.text = str(text)
        return element

    annotation = ET.Element("annotation")
    sub(annotation, "folder", f"VOC{year}")
    sub(annotation, "filename", f"{file_id}.jpg")
    source = sub(annotation, "source")
    sub(source, "database", f"The VOC{year} Database")
    sub(source, "annotation", f"PASCAL VOC{year}")
    sub(source, "image", "embedded.generator")
    size = sub(annotation, "size")
    sub(size, "width", width)
    sub(size, "height", height)
    sub(size, "depth", 3)
    sub(annotation, "segmented", 0)
    for obj in objects:
        node = sub(annotation, "object")
        sub(node, "name", CLASS_NAMES[obj.label])
        sub(node, "pose", "Unspecified")
        sub(node, "truncated", 0)  # objects are placed fully inside the image
        sub(node, "difficult", 0)
        box = sub(node, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), _voc_box(obj.polygon)):
            sub(box, tag, value)
    ET.indent(annotation, space="\t")
    return annotation


def _write_voc_year(root: Path, cfg: EmbeddedDataConfig, year: str, splits: dict[str, int]) -> None:
    base = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (base / sub).mkdir(parents=True)
    # Ids run on across splits, like real VOC where trainval and test never share an id.
    prefix = "2012_" if year == "2012" else ""
    next_id = 1
    for split, count in splits.items():
        ids = [f"{prefix}{n:06d}" for n in range(next_id, next_id + count)]
        next_id += count
        for index, file_id in enumerate(Progress(ids, desc=f"VOC{year}/{split}", unit="img")):
            image, objects = detection_scene(_rng(cfg, f"voc{year[2:]}_{split}", index), cfg.det_width, cfg.det_height)
            _save_jpeg(image, base / "JPEGImages" / f"{file_id}.jpg", cfg)
            xml = _voc_xml(year, file_id, cfg.det_width, cfg.det_height, objects)
            ET.ElementTree(xml).write(base / "Annotations" / f"{file_id}.xml")
        write_text(base / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{i}\n" for i in ids))


def write_voc(root: Path, cfg: EmbeddedDataConfig) -> None:
    _write_voc_year(root, cfg, "2007", {"trainval": cfg.voc07_trainval, "test": cfg.voc07_test})
    _write_voc_year(root, cfg, "2012", {"trainval": cfg.voc12_trainval})


# --------------------------------------------------------------------------- COCO


def _coco_annotation(obj: PlacedObject, ann_id: int, image_id: int) -> dict:
    (x0, y0), (x1, y1) = obj.polygon.min(axis=0), obj.polygon.max(axis=0)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj.label + 1,
        "segmentation": [[float(v) for v in obj.polygon.ravel()]],
        "area": round(polygon_area(obj.polygon), 4),
        "bbox": [float(x0), float(y0), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
        "iscrowd": 0,
    }


def _write_coco_split(root: Path, cfg: EmbeddedDataConfig, split: str, count: int) -> None:
    image_dir = root / "coco" / f"{split}2017"
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    for index in Progress(range(count), desc=f"coco/{split}2017", unit="img"):
        image_id = index + 1
        image, objects = detection_scene(_rng(cfg, f"coco_{split}", index), cfg.det_width, cfg.det_height)
        file_name = f"{image_id:012d}.jpg"
        _save_jpeg(image, image_dir / file_name, cfg)
        images.append({"id": image_id, "file_name": file_name, "width": cfg.det_width, "height": cfg.det_height})
        for obj in objects:
            annotations.append(_coco_annotation(obj, len(annotations) + 1, image_id))
    dataset = {
        "info": {
            "description": "Embedded synthetic shapes (embedded.generator)",
            "version": str(FORMAT_VERSION),
            "year": 2017,
            "contributor": "embedded.generator",
        },
        "licenses": [{"id": 1, "name": "Synthetic data", "url": ""}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASS_NAMES)],
    }
    annotation_dir = root / "coco" / "annotations"
    annotation_dir.mkdir(parents=True, exist_ok=True)
    write_text(annotation_dir / f"instances_{split}2017.json", json.dumps(dataset))


def write_coco(root: Path, cfg: EmbeddedDataConfig) -> None:
    _write_coco_split(root, cfg, "train", cfg.coco_train)
    _write_coco_split(root, cfg, "val", cfg.coco_val)


# --------------------------------------------------------------------------- driver


def _marker(cfg: EmbeddedDataConfig) -> dict:
    # class_names in label order (ImageFolder's alphabetical order, COCO category id - 1)
    return {"format_version": FORMAT_VERSION, "class_names": list(CLASS_NAMES), "config": asdict(cfg)}


def _is_up_to_date(root: Path, cfg: EmbeddedDataConfig) -> bool:
    """True if `root` already holds this config's data; raises rather than touch anything else."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise ValueError(f"{root} exists and is not a directory; pass another --out-dir or remove it")
    marker = root / MARKER_NAME
    if marker.is_file():
        if json.loads(marker.read_text()) == _marker(cfg):
            return True
        raise ValueError(
            f"{root} holds embedded data generated with a different config or format version "
            f"(see {marker}); delete {root} to regenerate it, or pass another --out-dir"
        )
    if any(root.iterdir()):
        raise ValueError(
            f"{root} is not empty and has no {MARKER_NAME}, so it is not embedded data; "
            "refusing to overwrite it. Pass another --out-dir (a new or empty directory)"
        )
    return False


def generate(root: str | os.PathLike, cfg: EmbeddedDataConfig = EmbeddedDataConfig()) -> Path:
    """Write all datasets under `root` (atomically) and return it; a no-op if already there."""
    root = Path(root).absolute()
    if _is_up_to_date(root, cfg):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        write_imagefolder(staging, cfg)
        write_voc(staging, cfg)
        write_coco(staging, cfg)
        # The marker goes last: a directory carrying it is always complete. Annotations and the marker
        # go through core.files (fsynced); the per-image JPEG/XML files are the writer's documented
        # exception: they live in this private staging dir until the one rename below publishes it.
        write_text(staging / MARKER_NAME, json.dumps(_marker(cfg), indent=2) + "\n")
        os.chmod(staging, 0o755)  # mkdtemp creates it private
        try:
            os.rename(staging, root)  # replaces `root` only if it is an empty directory
            sync_dir(root.parent)  # the rename itself survives a power loss
        except OSError:
            # Someone else finished first; accept their result only if it is the same data.
            if not _is_up_to_date(root, cfg):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def count_images(root: Path) -> dict[str, int]:
    """Number of JPEG files per dataset directory, for reporting."""
    parts = {
        "imagefolder/train": "imagefolder/train/*/*.jpg",
        "imagefolder/val": "imagefolder/val/*/*.jpg",
        "VOC2007/JPEGImages": "VOCdevkit/VOC2007/JPEGImages/*.jpg",
        "VOC2012/JPEGImages": "VOCdevkit/VOC2012/JPEGImages/*.jpg",
        "coco/train2017": "coco/train2017/*.jpg",
        "coco/val2017": "coco/val2017/*.jpg",
    }
    return {name: len(list(root.glob(pattern))) for name, pattern in parts.items()}


def _parse_args(argv: list[str] | None) -> tuple[Path, EmbeddedDataConfig]:
    # No config file: the generator's settings are its flags (EmbeddedDataConfig's fields).
    cmd = Command("python -m embedded", __doc__.split("\n\n")[0], overrides=False)
    cmd.add_argument("--out-dir", type=Path, required=True, metavar="DIR",
                     help="folder to create, or to reuse when it holds the same data")
    for field in fields(EmbeddedDataConfig):
        cmd.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=field.default, metavar="N",
                         help=field.name.replace("_", " "))
    args = vars(cmd.parse(argv))
    out = args.pop("out_dir")
    try:
        return out, EmbeddedDataConfig(**args)
    except ValueError as e:  # a size or count out of range
        raise UserError(f"{e}; change that flag (python -m embedded --help lists them)") from None


def _generate_and_describe(argv: list[str] | None) -> None:
    out, cfg = _parse_args(argv)
    try:
        root = generate(out, cfg)
    except ValueError as e:  # a bad config value or a folder holding other data
        raise UserError(str(e)) from None
    print(f"embedded data (seed {cfg.seed}) at {root}")
    for name, count in count_images(root).items():
        print(f"  {name}: {count} images")
    print(f"  COCO annotations: {root / 'coco' / 'annotations'}; VOC ImageSets: {root / 'VOCdevkit'}")


def main(argv: list[str] | None = None) -> None:
    run(_generate_and_describe, argv)


if __name__ == "__main__":
    main()
