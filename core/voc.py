"""Pascal VOC layout facts that more than one stage reads: the 20 class names, the split files, the data
root's metadata file, and each image's per-class presence (transfer's detection data and eval's VOC07
SVM protocol). Plain files and ElementTree only: no detectron2, no torch."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from core.errors import UserError

# The 20 Pascal VOC classes in the standard order (detectron2's pascal_voc.CLASS_NAMES, VOC devkit's).
VOC_CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
# The data root's metadata file (the embedded generator writes it): its `class_names` override VOC's.
# Read by name: the file is the contract between the generator and the stages, not the generator's code.
METADATA_FILE = "embedded_data.json"
# Per-class presence of an image (image_labels): the VOC devkit's classification ground-truth values.
POSITIVE, DIFFICULT_ONLY, ABSENT = 1, 0, -1


def read_split_ids(split_file: Path) -> list[str]:
    return [line.strip() for line in Path(split_file).read_text().splitlines() if line.strip()]


def metadata_class_names(root: str | Path) -> tuple[str, ...] | None:
    """The `class_names` of the data root's metadata file, in label order; None without the file."""
    path = Path(root) / METADATA_FILE
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text()).get("class_names")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        names = None
    if not (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)
            and len(set(names)) == len(names)):
        raise UserError(f"{path} has no valid class_names (a list of distinct class names in label order); "
                        "data written by an older `python -m embedded` lacks it: delete the data root and "
                        "regenerate it, or add the list")
    return tuple(names)


def image_labels(xml: Path, class_names) -> list[int]:
    """POSITIVE / DIFFICULT_ONLY / ABSENT per class for one annotation file, as the VOC devkit's
    classification ground truth: an image is positive for a class if it holds a non-difficult object of
    it, difficult-only if all its objects of that class are marked difficult."""
    index = {name: i for i, name in enumerate(class_names)}
    labels = [ABSENT] * len(index)
    try:
        objects = ET.parse(xml).findall("object")
    except (ET.ParseError, OSError) as e:
        raise UserError(f"VOC annotation {xml} cannot be read ({e}); restore the file") from None
    for i, obj in enumerate(objects):
        name = (obj.findtext("name") or "").strip()
        if name not in index:
            raise UserError(f"VOC annotation {xml}: object {i} has class {name!r}, not one of the {len(index)} "
                            "classes (VOC's 20, or the data root's embedded_data.json class_names)")
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        c = index[name]
        labels[c] = max(labels[c], DIFFICULT_ONLY if difficult else POSITIVE)
    return labels
