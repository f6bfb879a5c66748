"""The detection stage takes a dataset's class names from the dataset's metadata file, not from code."""

from __future__ import annotations

import json

import pytest

from core.cli import UserError
from embedded.generator import CLASS_NAMES, MARKER_NAME, EmbeddedDataConfig, generate
from transfer.datasets import METADATA_FILE, class_info

VOC = ["voc_2007_trainval", "voc_2007_test"]
COCO = ["coco_2017_train", "coco_2017_val"]


def test_generated_metadata_names_the_classes_the_detection_stage_uses(tmp_path):
    tiny = EmbeddedDataConfig(cls_train_per_class=1, cls_val_per_class=1, voc07_trainval=2,
                              voc07_test=2, voc12_trainval=2, coco_train=1, coco_val=1)
    root = generate(tmp_path / "data", tiny)
    assert MARKER_NAME == METADATA_FILE  # the file name is the contract between the two
    assert json.loads((root / METADATA_FILE).read_text())["class_names"] == list(CLASS_NAMES)
    info = class_info(root, VOC)
    assert info.names == CLASS_NAMES and METADATA_FILE in info.source


def test_metadata_of_any_dataset_is_honoured_in_label_order(tmp_path):
    (tmp_path / METADATA_FILE).write_text(json.dumps({"class_names": ["zebra", "apple"]}))
    assert class_info(tmp_path, VOC).names == ("zebra", "apple")
    assert class_info(tmp_path, COCO).names == ("zebra", "apple")


def test_without_metadata_voc_keeps_its_20_classes_and_coco_reads_its_json(tmp_path):
    voc = class_info(tmp_path, VOC)
    assert len(voc.names) == 20 and voc.names[0] == "aeroplane"
    assert class_info(tmp_path, COCO).names is None


@pytest.mark.parametrize("content", ['{"format_version": 3, "config": {}}', '{"class_names": []}',
                                     '{"class_names": ["a", "a"]}', "[1, 2]", "not json"])
def test_metadata_without_usable_class_names_is_one_clear_error(tmp_path, content):
    (tmp_path / METADATA_FILE).write_text(content)
    with pytest.raises(UserError, match=f"{METADATA_FILE}.*class_names.*regenerate"):
        class_info(tmp_path, VOC)
