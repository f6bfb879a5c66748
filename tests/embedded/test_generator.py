import hashlib
import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from embedded.generator import (
    CLASS_NAMES,
    EmbeddedDataConfig,
    classification_scene,
    detection_scene,
    generate,
    main,
    polygon_area,
    polygon_coverage,
)

SMALL = EmbeddedDataConfig(
    seed=3,
    cls_image_size=40,
    cls_train_per_class=3,
    cls_val_per_class=2,
    det_width=96,
    det_height=72,
    voc07_trainval=4,
    voc07_test=3,
    voc12_trainval=2,
    coco_train=12,
    coco_val=3,
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("embedded") / "data", SMALL)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _polygon(annotation: dict) -> np.ndarray:
    return np.array(annotation["segmentation"][0], dtype=float).reshape(-1, 2)


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path, data_root):
    again = _hashes(generate(tmp_path / "again", SMALL))
    assert again == _hashes(data_root)

    other = _hashes(generate(tmp_path / "other", replace(SMALL, seed=4)))
    assert other.keys() == again.keys()
    images = [name for name in again if name.endswith(".jpg")]
    assert images and all(other[name] != again[name] for name in images)


def test_class_names_are_sorted_and_distinct():
    assert list(CLASS_NAMES) == sorted(set(CLASS_NAMES)) and len(CLASS_NAMES) >= 10


# --------------------------------------------------------------------------- ImageFolder


@pytest.mark.parametrize("split, per_class", [("train", SMALL.cls_train_per_class), ("val", SMALL.cls_val_per_class)])
def test_imagefolder_loads(data_root, split, per_class):
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(data_root / "imagefolder" / split))
    assert dataset.classes == list(CLASS_NAMES)
    assert len(dataset) == per_class * len(CLASS_NAMES)
    assert np.bincount(dataset.targets).tolist() == [per_class] * len(CLASS_NAMES)
    for index in range(0, len(dataset), 7):
        image, _ = dataset[index]
        assert image.mode == "RGB" and image.size == (SMALL.cls_image_size,) * 2


def test_classification_object_size_and_label():
    size = 64
    for index in range(40):
        label = index % len(CLASS_NAMES)
        image, obj = classification_scene(np.random.default_rng(index), label, size)
        assert image.size == (size, size) and obj.label == label
        extent = np.ptp(obj.polygon, axis=0).max() / size
        assert 0.65 - 1e-3 <= extent <= 0.95 + 1e-3
        assert obj.polygon.min() >= 0 and obj.polygon.max() <= size


def test_small_images_fit_their_tilted_object():
    """At 32 px a tilted long shape can outgrow the image (seed 0 of the CLI used to fail with numpy's
    'high - low < 0'); it is shrunk to fit, and stays a large object."""
    size = 32
    for index in range(200):
        _, obj = classification_scene(np.random.default_rng(index), index % len(CLASS_NAMES), size)
        assert obj.polygon.min() >= 0 and obj.polygon.max() <= size
        assert np.ptp(obj.polygon, axis=0).max() / size >= 0.6


# --------------------------------------------------------------------------- Pascal VOC


@pytest.mark.parametrize(
    "year, split, count",
    [("2007", "trainval", SMALL.voc07_trainval), ("2007", "test", SMALL.voc07_test), ("2012", "trainval", SMALL.voc12_trainval)],
)
def test_voc_loads_with_detectron2(data_root, year, split, count):
    from detectron2.data.datasets.pascal_voc import load_voc_instances

    dirname = data_root / "VOCdevkit" / f"VOC{year}"
    records = load_voc_instances(str(dirname), split, CLASS_NAMES)
    assert len(records) == count
    for record in records:
        assert record["image_id"].startswith("2012_" if year == "2012" else "0")
        assert Image.open(record["file_name"]).size == (record["width"], record["height"]) == (SMALL.det_width, SMALL.det_height)
        assert 1 <= len(record["annotations"]) <= 4
        for instance in record["annotations"]:
            x0, y0, x1, y1 = instance["bbox"]
            assert 0 <= x0 < x1 <= record["width"] and 0 <= y0 < y1 <= record["height"]


def test_voc_test_and_trainval_ids_are_disjoint(data_root):
    main_dir = data_root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    trainval = set((main_dir / "trainval.txt").read_text().split())
    test = set((main_dir / "test.txt").read_text().split())
    assert len(trainval) == SMALL.voc07_trainval and len(test) == SMALL.voc07_test
    assert not trainval & test


def test_voc_xml_is_complete(data_root):
    files = sorted((data_root / "VOCdevkit").glob("VOC*/Annotations/*.xml"))
    assert len(files) == SMALL.voc07_trainval + SMALL.voc07_test + SMALL.voc12_trainval
    for path in files:
        root = ET.parse(path).getroot()
        assert root.tag == "annotation"
        assert root.findtext("filename") == path.stem + ".jpg"
        assert root.findtext("folder") == path.parent.parent.name
        assert root.find("source/database") is not None
        assert root.findtext("size/depth") == "3" and root.findtext("segmented") == "0"
        width, height = int(root.findtext("size/width")), int(root.findtext("size/height"))
        objects = root.findall("object")
        assert objects
        for obj in objects:
            assert obj.findtext("name") in CLASS_NAMES
            assert obj.findtext("pose") == "Unspecified"
            assert obj.findtext("truncated") == "0" and obj.findtext("difficult") == "0"
            xmin, ymin, xmax, ymax = (int(obj.findtext(f"bndbox/{tag}")) for tag in ("xmin", "ymin", "xmax", "ymax"))
            assert 1 <= xmin < xmax <= width and 1 <= ymin < ymax <= height


# --------------------------------------------------------------------------- COCO


@pytest.mark.parametrize("split, count", [("train", SMALL.coco_train), ("val", SMALL.coco_val)])
def test_coco_annotations_are_consistent(data_root, split, count):
    from pycocotools.coco import COCO

    coco = COCO(str(data_root / "coco" / "annotations" / f"instances_{split}2017.json"))
    assert sorted(coco.getCatIds()) == list(range(1, len(CLASS_NAMES) + 1))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASS_NAMES)
    assert len(coco.getImgIds()) == count
    assert {"info", "licenses"} <= coco.dataset.keys()
    for image in coco.loadImgs(coco.getImgIds()):
        assert Image.open(data_root / "coco" / f"{split}2017" / image["file_name"]).size == (image["width"], image["height"])
    annotations = coco.loadAnns(coco.getAnnIds())
    assert annotations
    for ann in annotations:
        poly = _polygon(ann)
        assert len(poly) >= 3 and ann["iscrowd"] == 0
        assert ann["category_id"] in coco.cats
        (x0, y0), (x1, y1) = poly.min(axis=0), poly.max(axis=0)
        np.testing.assert_allclose(ann["bbox"], [x0, y0, x1 - x0, y1 - y0], atol=1e-6)
        assert ann["area"] > 0
        assert ann["area"] == pytest.approx(polygon_area(poly), rel=1e-4)
        assert 0 <= x0 and x1 <= image["width"] and 0 <= y0 and y1 <= image["height"]


def test_coco_loads_with_detectron2(data_root):
    from detectron2.data.datasets import load_coco_json

    records = load_coco_json(
        str(data_root / "coco" / "annotations" / "instances_val2017.json"),
        str(data_root / "coco" / "val2017"),
        "embedded_data_test_val",
    )
    assert len(records) == SMALL.coco_val
    for record in records:
        assert Path(record["file_name"]).is_file()
        assert record["annotations"] and all(len(a["segmentation"][0]) >= 6 for a in record["annotations"])


# --------------------------------------------------------------------------- masks match pixels


def test_polygon_masks_match_rendered_pixels(data_root):
    """The colour inside each COCO polygon differs from the ring just outside it, and any shift of
    the mask weakens that contrast: polygons and drawn objects are aligned to within a pixel."""
    from pycocotools.coco import COCO

    coco = COCO(str(data_root / "coco" / "annotations" / "instances_train2017.json"))

    def contrast(pixels: np.ndarray, mask: np.ndarray) -> float:
        ring = binary_dilation(mask, iterations=3) & ~binary_dilation(mask, iterations=1)
        return float(np.abs(pixels[mask].mean(axis=0) - pixels[ring].mean(axis=0)).sum())

    shifts = [(1, 0), (-1, 0), (0, 1), (0, -1)]
    aligned, best_shifted = [], []
    for ann in coco.loadAnns(coco.getAnnIds()):
        image = coco.imgs[ann["image_id"]]
        pixels = np.asarray(Image.open(data_root / "coco" / "train2017" / image["file_name"]), np.float32)
        mask = coco.annToMask(ann).astype(bool)
        aligned.append(contrast(pixels, mask))
        best_shifted.append(max(contrast(pixels, np.roll(mask, shift, axis=(0, 1))) for shift in shifts))
    aligned, best_shifted = np.array(aligned), np.array(best_shifted)
    assert len(aligned) >= 10
    assert np.median(aligned) > 60
    assert np.mean(aligned > best_shifted) >= 0.8


def test_detection_objects_are_disjoint_and_inside():
    width, height = 96, 72
    for index in range(30):
        _, objects = detection_scene(np.random.default_rng(index), width, height)
        assert 1 <= len(objects) <= 4
        masks = [polygon_coverage(obj.polygon, height, width) > 0 for obj in objects]
        assert np.max(np.sum(masks, axis=0)) == 1  # no pixel shared by two objects
        for obj, mask in zip(objects, masks):
            assert obj.polygon.min() > 0 and np.all(obj.polygon.max(axis=0) < [width, height])
            # the coverage raster agrees with the polygon area, so the drawn shape is the polygon
            assert polygon_coverage(obj.polygon, height, width).sum() == pytest.approx(polygon_area(obj.polygon), rel=0.05)


# --------------------------------------------------------------------------- idempotence and safety


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in [root, *root.rglob("*")]}


def test_rerun_is_a_no_op(data_root):
    before = _mtimes(data_root)
    assert generate(data_root, SMALL) == data_root
    assert _mtimes(data_root) == before
    marker = json.loads((data_root / "embedded_data.json").read_text())
    assert marker["config"]["seed"] == SMALL.seed and "format_version" in marker


def test_different_config_on_existing_dir_raises(data_root):
    before = _mtimes(data_root)
    with pytest.raises(ValueError, match=str(data_root)):
        generate(data_root, replace(SMALL, seed=SMALL.seed + 1))
    assert _mtimes(data_root) == before


def test_foreign_non_empty_dir_is_not_overwritten(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(ValueError, match=str(tmp_path)):
        generate(tmp_path, SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_generates_into_existing_empty_dir_and_leaves_no_temp_dirs(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    config = replace(SMALL, cls_train_per_class=1, cls_val_per_class=1, coco_train=1, coco_val=1)
    generate(target, config)
    assert (target / "embedded_data.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_cli_writes_and_reports(tmp_path, capsys):
    out = tmp_path / "cli"
    main(["--out-dir", str(out), "--seed", "5", "--cls-image-size", "32", "--cls-train-per-class", "1",
          "--cls-val-per-class", "1", "--voc07-trainval", "2", "--voc07-test", "2", "--voc12-trainval", "2",
          "--coco-train", "1", "--coco-val", "1"])
    marker = json.loads((out / "embedded_data.json").read_text())
    assert marker["config"]["seed"] == 5 and marker["config"]["cls_image_size"] == 32
    assert len(list((out / "imagefolder" / "train").glob("*/*.jpg"))) == len(CLASS_NAMES)
    assert str(out) in capsys.readouterr().out
