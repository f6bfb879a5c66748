"""Register the VOC and COCO splits the detection configs name, from the standard layouts under a root.

detectron2 registers the same names at import from $DETECTRON2_DATASETS (default ./datasets); we
replace those entries so the data root is explicit, the layout is checked before any training, and
bad annotations fail with one message naming the file.

Class names come from the dataset, not from code: VOC uses detectron2's 20 VOC classes, unless the
root carries a metadata file (`embedded_data.json`, written by `python -m embedded`) whose
`class_names` list then applies. COCO takes its classes from the json's `categories` (detectron2's
loader), so the switch only matters for NUM_CLASSES.
"""

from __future__ import annotations

import json
import logging
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances, register_pascal_voc
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASS_NAMES

from core.cli import UserError
# Shared with eval's VOC07 SVM protocol; re-exported here, where the transfer code and tests read them.
from core.voc import METADATA_FILE, metadata_class_names, read_split_ids  # noqa: F401

logger = logging.getLogger(__name__)

# name -> (VOCdevkit sub-folder, ImageSets split, year). The year picks the VOC07 11-point metric.
VOC_SPLITS = {
    "voc_2007_trainval": ("VOC2007", "trainval", 2007),
    "voc_2007_test": ("VOC2007", "test", 2007),
    "voc_2012_trainval": ("VOC2012", "trainval", 2012),
}
# name -> (image folder, annotation json), both relative to the data root
COCO_SPLITS = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
}
EXPECTED_LAYOUT = (  # one line: errors are printed as one line
    "expected layout under the data root: "
    "VOCdevkit/VOC2007/{Annotations/*.xml, ImageSets/Main/{trainval,test}.txt, JPEGImages/*.jpg}; "
    "VOCdevkit/VOC2012/{Annotations/*.xml, ImageSets/Main/trainval.txt, JPEGImages/*.jpg}; "
    "coco/annotations/instances_{train,val}2017.json with coco/{train,val}2017/*.jpg "
    "(set the root with --data-root or $DETECTRON2_DATASETS; "
    "`python -m embedded --out-dir DIR` writes a small synthetic one)"
)
# What detectron2's VOC loader and evaluator read from every object.
_VOC_OBJECT_FIELDS = ("name", "pose", "truncated", "difficult", "bndbox/xmin", "bndbox/ymin", "bndbox/xmax", "bndbox/ymax")


@dataclass(frozen=True)
class ClassInfo:
    names: tuple[str, ...] | None  # None: read from the COCO json at load time
    source: str


def default_data_root() -> Path:
    return Path(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))


def class_info(root: str | Path, dataset_names) -> ClassInfo:
    """The class list the configured datasets use (see module docstring)."""
    names = list(dataset_names)
    listed = metadata_class_names(root)
    if listed is not None:
        return ClassInfo(listed, f"dataset metadata ({METADATA_FILE} in {root}): {len(listed)} classes")
    if all(n in VOC_SPLITS for n in names):
        return ClassInfo(tuple(VOC_CLASS_NAMES), "Pascal VOC: the 20 VOC classes")
    return ClassInfo(None, "COCO: classes from the annotation json's categories")


def _missing(paths: list[Path]) -> list[Path]:
    return [p for p in paths if not p.exists()]


def _required_paths(name: str, root: Path) -> list[Path]:
    """The folders and files split `name` needs under root (PROTOCOL.md section 7)."""
    if name in VOC_SPLITS:
        folder, split, _ = VOC_SPLITS[name]
        dirname = root / "VOCdevkit" / folder
        return [dirname / "Annotations", dirname / "JPEGImages", dirname / "ImageSets" / "Main" / f"{split}.txt"]
    if name in COCO_SPLITS:
        image_dir, json_file = COCO_SPLITS[name]
        return [root / json_file, root / image_dir]
    raise UserError(f"unknown dataset {name!r}; this trainer registers " + ", ".join([*VOC_SPLITS, *COCO_SPLITS]))


def check_layout(dataset_names, root: str | Path) -> None:
    """The data root and every folder and split file the named datasets need exist.

    Cheap (no annotation is read), so transfer.finetune runs it before the ~15 s weight conversion;
    registration runs it first too, then reads every annotation (validate_voc / validate_coco)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data root {root} does not exist; {EXPECTED_LAYOUT}")
    for name in dict.fromkeys(dataset_names):  # keep order, drop repeats
        if missing := _missing(_required_paths(name, root)):
            raise _layout_error(name, missing)


def _layout_error(name: str, missing: list[Path]) -> UserError:
    shown = ", ".join(str(p) for p in missing[:3])
    return UserError(f"dataset {name}: missing {shown}; {EXPECTED_LAYOUT}")


def validate_voc(dirname: Path, split: str, class_names) -> int:
    """Every listed image has its JPEG and a complete XML; returns the number of images.

    detectron2's loader would stop with `'NoneType' object has no attribute 'text'` and no file name.
    """
    ids = read_split_ids(dirname / "ImageSets" / "Main" / f"{split}.txt")
    if len(ids) < 2:  # detectron2 reads the list with np.loadtxt, which cannot iterate one line
        raise UserError(f"{dirname}/ImageSets/Main/{split}.txt lists {len(ids)} image(s); at least 2 are needed")
    known = set(class_names)
    for file_id in ids:
        xml = dirname / "Annotations" / f"{file_id}.xml"
        if not xml.is_file():
            raise UserError(f"VOC annotation missing: {xml} (listed in ImageSets/Main/{split}.txt)")
        if not (dirname / "JPEGImages" / f"{file_id}.jpg").is_file():
            raise UserError(f"VOC image missing: {dirname / 'JPEGImages' / (file_id + '.jpg')}")
        try:
            tree = ET.parse(xml)
        except ET.ParseError as e:
            raise UserError(f"VOC annotation {xml} is not valid XML: {e}") from None
        for field in ("size/width", "size/height"):
            if tree.find(field) is None or not (tree.find(field).text or "").strip():
                raise UserError(f"VOC annotation {xml} lacks <{field}>")
        width, height = (_number(xml, "image", tree.find(f).text) for f in ("size/width", "size/height"))
        if width <= 0 or height <= 0:
            raise UserError(f"VOC annotation {xml}: image size {width:g}x{height:g} is not positive")
        for i, obj in enumerate(tree.findall("object")):
            for field in _VOC_OBJECT_FIELDS:
                node = obj.find(field)
                if node is None or not (node.text or "").strip():
                    raise UserError(f"VOC annotation {xml}: object {i} lacks <{field}> "
                                    "(detectron2's loader and VOC evaluator read it)")
            _check_voc_box(xml, i, obj, width, height)
            name = obj.find("name").text.strip()
            if name not in known:
                raise UserError(f"VOC annotation {xml}: object {i} has class {name!r}, not one of the "
                                f"{len(known)} configured classes (is the embedded-data marker missing or wrong?)")
    return len(ids)


def _number(source, where: str, text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UserError(f"{source}: {where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"{source}: {where}: {text!r} is not a finite number")
    return value


def _check_voc_box(xml: Path, i: int, obj, width: float, height: float) -> None:
    """VOC boxes are 1-based inclusive pixel indices: 1 <= xmin <= xmax <= width (same for y). A box
    of zero or negative area, or one outside the image, would train on nothing or on padding."""
    x0, y0, x1, y1 = (_number(xml, f"object {i} <bndbox/{f}>", obj.find(f"bndbox/{f}").text)
                      for f in ("xmin", "ymin", "xmax", "ymax"))
    where = f"VOC annotation {xml}: object {i} box (xmin {x0:g}, ymin {y0:g}, xmax {x1:g}, ymax {y1:g})"
    # detectron2 turns the 1-based box into [xmin - 1, xmax): xmax == xmin is a one-pixel box
    if x1 < x0 or y1 < y0:
        raise UserError(f"{where} has zero or negative area (needs xmin <= xmax and ymin <= ymax)")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise UserError(f"{where} lies outside the {width:g}x{height:g} image")


def _polygon_area(xy: list[float]) -> float:
    xs, ys = xy[0::2], xy[1::2]
    return abs(sum(xs[k] * ys[k - 1] - xs[k - 1] * ys[k] for k in range(len(xs)))) / 2


def validate_coco(json_file: Path) -> tuple[int, int]:
    """Read a COCO instances json and check what detectron2's loader and the trainer rely on, with one
    message naming the file and the annotation id. Returns (images, annotations).

    detectron2 would fail with a bare KeyError or json error, silently drop polygons with fewer than 3
    points, and train on boxes outside the image or of zero area (it only filters them much later,
    and not at all for evaluation)."""
    try:
        data = json.loads(json_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"COCO annotations {json_file} are not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"COCO annotations {json_file}: the top level must be an object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise UserError(f"COCO annotations {json_file} are malformed: missing key {key!r} (a list)")
    images = {}
    for k, img in enumerate(data["images"]):
        missing = [f for f in ("id", "file_name", "width", "height") if not isinstance(img, dict) or f not in img]
        if missing:
            raise UserError(f"COCO annotations {json_file}: images[{k}] lacks {', '.join(missing)}")
        images[img["id"]] = img
    category_ids = set()
    for k, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise UserError(f"COCO annotations {json_file}: categories[{k}] needs 'id' and 'name'")
        category_ids.add(cat["id"])
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise UserError(f"COCO annotations {json_file}: annotations[{k}] is not an object")
        aid = ann.get("id", f"#{k}")
        where = f"COCO annotations {json_file}: annotation id {aid}"
        missing = [f for f in ("id", "image_id", "category_id", "bbox") if f not in ann]
        if missing:
            raise UserError(f"{where} lacks {', '.join(missing)}")
        if ann["category_id"] not in category_ids:
            raise UserError(f"{where} has category_id={ann['category_id']}, not one of the {len(category_ids)} ids in "
                            "'categories'. Fix the annotation or add the category to 'categories'")
        img = images.get(ann["image_id"])
        if img is None:
            raise UserError(f"{where} refers to image_id={ann['image_id']}, which 'images' does not list")
        box = ann["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise UserError(f"{where}: bbox must be [x, y, width, height] numbers, got {box!r}")
        x, y, w, h = box
        if not (w > 0 and h > 0):
            raise UserError(f"{where} (image {img['file_name']}): bbox {box} has zero or negative area")
        tol = 1.0  # exporters round coordinates: allow a pixel
        if x < -tol or y < -tol or x + w > img["width"] + tol or y + h > img["height"] + tol:
            raise UserError(f"{where} (image {img['file_name']}): bbox {box} lies outside the "
                            f"{img['width']}x{img['height']} image")
        seg = ann.get("segmentation")
        if isinstance(seg, list):  # polygons; a dict is RLE (crowd regions), checked by pycocotools
            if not seg:
                raise UserError(f"{where}: segmentation is an empty list (give polygons, or omit it for boxes only)")
            for j, poly in enumerate(seg):
                ok = isinstance(poly, list) and all(isinstance(v, (int, float)) for v in poly)
                if not ok or len(poly) < 6 or len(poly) % 2:
                    n = len(poly) if isinstance(poly, list) else poly
                    raise UserError(f"{where}: polygon {j} is degenerate ({n} coordinates; a polygon needs "
                                    "x,y pairs of at least 3 points)")
                if _polygon_area(poly) <= 0:
                    raise UserError(f"{where}: polygon {j} has zero area (its points are collinear or repeated)")
    return len(images), len(data["annotations"])


def _replace(name: str) -> None:
    """Drop detectron2's import-time registration of the same name (it points at ./datasets)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


def register_voc(name: str, root: Path, class_names) -> None:
    folder, split, year = VOC_SPLITS[name]
    dirname = root / "VOCdevkit" / folder
    count = validate_voc(dirname, split, class_names)
    _replace(name)
    register_pascal_voc(name, str(dirname), split, year, class_names=tuple(class_names))
    MetadataCatalog.get(name).evaluator_type = "pascal_voc"
    logger.info("registered %s: %d images from %s", name, count, dirname)


def register_coco(name: str, root: Path) -> None:
    image_dir, json_file = (root / p for p in COCO_SPLITS[name])
    validate_coco(json_file)
    _replace(name)
    register_coco_instances(name, {}, str(json_file), str(image_dir))
    load = DatasetCatalog[name]  # detectron2's loader; wrapped so a bad category id names the file

    def load_checked():
        try:
            return load()
        except KeyError as e:
            detail = e.args[0] if e.args else repr(e)
            if "category_id" in str(detail):
                raise UserError(f"COCO annotations {json_file}: {detail} Fix the annotation or add the "
                                "category to 'categories'") from None
            raise UserError(f"COCO annotations {json_file} are malformed: missing key {detail}") from None

    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, load_checked)
    logger.info("registered %s: %s, images in %s", name, json_file, image_dir)


def register_datasets(dataset_names, root: str | Path, classes: ClassInfo) -> None:
    """Register each named split from `root`; unknown names and missing files raise UserError."""
    root = Path(root)
    check_layout(dataset_names, root)
    logger.info("class names: %s", classes.source)
    for name in dict.fromkeys(dataset_names):  # keep order, drop repeats
        if name in VOC_SPLITS:
            register_voc(name, root, classes.names or VOC_CLASS_NAMES)
        else:
            register_coco(name, root)
