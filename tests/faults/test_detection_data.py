"""Bad VOC / COCO annotations: one clear error naming the file (and the object or annotation id),
raised when the datasets are registered, before any model is built."""

import json
import shutil

import pytest

from embedded.generator import EmbeddedDataConfig, generate
from core.cli import UserError
from transfer import datasets

DATA = EmbeddedDataConfig(seed=0, cls_train_per_class=1, cls_val_per_class=1, voc07_trainval=3, voc07_test=2,
                          voc12_trainval=2, coco_train=3, coco_val=2)
VOC = ["voc_2007_trainval"]
COCO = ["coco_2017_train"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("det") / "data", DATA)


@pytest.fixture
def root(tmp_path, pristine):
    out = tmp_path / "data"
    shutil.copytree(pristine, out, ignore=shutil.ignore_patterns("imagefolder"))
    return out


def register(root, names):
    datasets.register_datasets(names, root, datasets.class_info(root, names))


def error(root, names) -> str:
    with pytest.raises(UserError) as exc:
        register(root, names)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_pristine_data_registers(root):
    """The checks pass clean data through: every listed image becomes a record with its boxes."""
    from detectron2.data import DatasetCatalog

    register(root, VOC + COCO)
    voc = DatasetCatalog.get(VOC[0])
    assert [r["image_id"] for r in voc] == _ids(root)
    assert all(r["annotations"] and all(a["bbox"][2] > a["bbox"][0] for a in r["annotations"]) for r in voc)
    coco = DatasetCatalog.get(COCO[0])
    assert len(coco) == DATA.coco_train
    assert all(a["segmentation"] and a["bbox"][2] > 0 for r in coco for a in r["annotations"])


def _ids(root):
    return datasets.read_split_ids(root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "trainval.txt")


# ---------------------------------------------------------------- VOC XML
def _xml(root, file_id="000001"):
    return root / "VOCdevkit" / "VOC2007" / "Annotations" / f"{file_id}.xml"


def _first_id(root):
    return _ids(root)[0]


def _edit_first_box(root, **values):
    xml = _xml(root, _first_id(root))
    text = xml.read_text()
    for tag, value in values.items():
        start = text.index(f"<{tag}>") + len(tag) + 2
        text = text[:start] + str(value) + text[text.index(f"</{tag}>", start):]
    xml.write_text(text)
    return xml


def test_voc_malformed_xml(root):
    xml = _xml(root, _first_id(root))
    xml.write_text(xml.read_text()[:-40])  # cut off mid-tag
    msg = error(root, VOC)
    assert str(xml) in msg and "not valid XML" in msg


@pytest.mark.parametrize("field", ["bndbox/xmax", "difficult", "name"])
def test_voc_missing_field(root, field):
    xml = _xml(root, _first_id(root))
    tag = field.split("/")[-1]
    text = xml.read_text()
    start = text.index(f"<{tag}>")
    xml.write_text(text[:start] + text[text.index(f"</{tag}>", start) + len(tag) + 3:])
    msg = error(root, VOC)
    assert str(xml) in msg and "object 0" in msg and f"<{field}>" in msg


def test_voc_box_outside_the_image(root):
    xml = _edit_first_box(root, xmax=100000)
    msg = error(root, VOC)
    assert str(xml) in msg and "object 0" in msg and "outside the" in msg


def test_voc_box_of_zero_area(root):
    xml = _xml(root, _first_id(root))
    text = xml.read_text()
    xmin = text[text.index("<xmin>") + 6:text.index("</xmin>")]
    _edit_first_box(root, xmax=int(xmin) - 1)
    msg = error(root, VOC)
    assert str(xml) in msg and "object 0" in msg and "zero or negative area" in msg


def test_voc_box_not_a_number(root):
    xml = _edit_first_box(root, ymin="12px")
    msg = error(root, VOC)
    assert str(xml) in msg and "'12px' is not a number" in msg


# ---------------------------------------------------------------- COCO json
def _coco(root):
    return root / "coco" / "annotations" / "instances_train2017.json"


def _edit_coco(root, edit):
    path = _coco(root)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path, data


def test_coco_not_json(root):
    _coco(root).write_text('{"images": [')
    msg = error(root, COCO)
    assert str(_coco(root)) in msg and "not valid JSON" in msg


def test_coco_missing_key(root):
    path, _ = _edit_coco(root, lambda d: d.pop("categories"))
    msg = error(root, COCO)
    assert str(path) in msg and "missing key 'categories'" in msg


def test_coco_annotation_missing_field(root):
    path, data = _edit_coco(root, lambda d: d["annotations"][1].pop("bbox"))
    msg = error(root, COCO)
    assert str(path) in msg and f"annotation id {data['annotations'][1]['id']} lacks bbox" in msg


def test_coco_unknown_category_id(root):
    path, data = _edit_coco(root, lambda d: d["annotations"][0].update(category_id=99))
    msg = error(root, COCO)
    assert str(path) in msg and f"annotation id {data['annotations'][0]['id']}" in msg and "category_id=99" in msg


def test_coco_unknown_image_id(root):
    _edit_coco(root, lambda d: d["annotations"][0].update(image_id=123456))
    assert "image_id=123456" in error(root, COCO)


@pytest.mark.parametrize("box, problem", [([5, 5, 0, 10], "zero or negative area"),
                                          ([5, 5, 10, -1], "zero or negative area"),
                                          ([-20, 5, 10, 10], "outside the"),
                                          ([5, 5, 10000, 10], "outside the")])
def test_coco_bad_box(root, box, problem):
    path, data = _edit_coco(root, lambda d: d["annotations"][2].update(bbox=box))
    msg = error(root, COCO)
    assert str(path) in msg and f"annotation id {data['annotations'][2]['id']}" in msg and problem in msg


@pytest.mark.parametrize("poly, problem", [([10, 10, 20, 20], "degenerate (4 coordinates"),
                                           ([10, 10, 20, 20, 30], "degenerate (5 coordinates"),
                                           ([10, 10, 20, 20, 30, 30], "zero area"),
                                           ([10, 10, 10, 10, 10, 10, 10, 10], "zero area")])
def test_coco_degenerate_polygon(root, poly, problem):
    path, data = _edit_coco(root, lambda d: d["annotations"][0].update(segmentation=[poly]))
    msg = error(root, COCO)
    assert str(path) in msg and f"annotation id {data['annotations'][0]['id']}: polygon 0" in msg and problem in msg
