"""eval.voc07_svm on the embedded VOC07: known answers of the SVM protocol's parts, and the entry point."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.model_selection import cross_val_score
from sklearn.svm import LinearSVC

from core.config import Config
from core.voc import ABSENT, DIFFICULT_ONLY, POSITIVE, VOC_CLASS_NAMES, image_labels
from embedded.generator import CLASS_NAMES, EmbeddedDataConfig, generate
from eval import voc07_svm
from eval.voc07_svm import VOCImages, binary_task, choose_cost, class_ap, fit_class, low_shot_rows
from tests.helpers import REPO, one_error_line

DATA = EmbeddedDataConfig(seed=0, cls_train_per_class=1, cls_val_per_class=1, voc07_trainval=40, voc07_test=20,
                          voc12_trainval=2, coco_train=1, coco_val=1)
SVM = Config({"costs": [0.01, 0.1, 1.0, 10.0, 100.0], "folds": 3, "positive_weight": 2.0, "max_iter": 2000})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("voc") / "data", DATA)


@pytest.fixture(scope="module")
def labels(root):
    voc = root / "VOCdevkit" / "VOC2007"
    return VOCImages(voc, "trainval", CLASS_NAMES).labels, VOCImages(voc, "test", CLASS_NAMES).labels


def test_core_class_names_are_detectron2s():
    pascal_voc = pytest.importorskip("detectron2.data.datasets.pascal_voc")
    assert VOC_CLASS_NAMES == tuple(pascal_voc.CLASS_NAMES)


def test_difficult_only_images_are_left_out_of_the_class(tmp_path):
    xml = tmp_path / "a.xml"
    obj = "<object><name>{}</name><difficult>{}</difficult></object>"
    xml.write_text("<annotation>" + obj.format("star", 1) + obj.format("ring", 1) + obj.format("ring", 0) + "</annotation>")
    row = image_labels(xml, CLASS_NAMES)
    assert row[CLASS_NAMES.index("star")] == DIFFICULT_ONLY and row[CLASS_NAMES.index("ring")] == POSITIVE
    assert row[CLASS_NAMES.index("arrow")] == ABSENT
    labels = np.array([row, [ABSENT] * len(CLASS_NAMES)])
    keep, y = binary_task(labels, CLASS_NAMES.index("star"))
    assert keep.tolist() == [1] and y.tolist() == [-1]


def test_a_trivially_separable_class_has_ap_100(labels):
    train, test = labels
    rng = np.random.default_rng(0)
    c = 3

    def feats(lab):  # noise, plus one coordinate that is 1 exactly on the class's positives
        x = rng.normal(size=(len(lab), 16))
        x[:, 0] = 5.0 * (lab[:, c] == POSITIVE)
        return x

    x_train, x_test = feats(train), feats(test)
    keep, y = binary_task(train, c)
    clf, record = fit_class(x_train[keep], y, SVM, SVM.folds)
    assert class_ap(clf, x_test, test, c) == 100.0
    assert record["folds"] == 3 and set(record["cv_ap"]) == {str(v) for v in SVM.costs}


def test_chosen_cost_is_the_best_of_a_direct_cross_val_score(labels):
    train, _ = labels
    rng = np.random.default_rng(1)
    for c in (0, 5):
        keep, y = binary_task(train, c)
        x = rng.normal(size=(len(y), 32)) + 0.7 * (y == 1)[:, None] * rng.normal(size=32)  # a weak, noisy signal
        direct = [cross_val_score(LinearSVC(C=cost, class_weight={1: 2.0, -1: 1.0}, max_iter=2000, random_state=0),
                                  x, y, cv=3, scoring="average_precision").mean() for cost in SVM.costs]
        chosen, scores = choose_cost(x, y, SVM, 3)
        assert chosen == SVM.costs[int(np.argmax(direct))]
        assert np.allclose([scores[cost] for cost in SVM.costs], direct)


def test_low_shot_samples(labels):
    train, _ = labels
    for n in (1, 2, 4):
        for c in range(len(CLASS_NAMES)):
            rows = low_shot_rows(train, c, n, seed=0, sample=0)
            assert (train[rows, c] == POSITIVE).sum() == n  # exactly n positives
            assert set(np.flatnonzero(train[:, c] == ABSENT)) <= set(rows)  # every negative
            assert np.array_equal(rows, low_shot_rows(train, c, n, seed=0, sample=0))  # one seed, one sample
        draws = {tuple(np.concatenate([low_shot_rows(train, c, n, seed, sample) for c in range(len(CLASS_NAMES))]))
                 for seed, sample in ((0, 0), (0, 1), (0, 2), (1, 0))}
        assert len(draws) == 4  # samples and seeds differ
    assert low_shot_rows(train, 0, 10_000, seed=0, sample=0) is None


def test_entry_point_end_to_end(root, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "eval.voc07_svm", "--checkpoint", "random", "--arch", "resnet18", "--data-root",
         str(root), "--out-dir", str(out), "--device", "cpu", "data.image_size=64", "data.workers=0",
         "voc07_svm.low_shot_sizes=[1,2,1000]", "voc07_svm.low_shot_samples=2"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "low-shot n=1000 skipped" in proc.stderr
    result = json.loads((out / "voc07_svm.json").read_text())
    assert [r["class"] for r in result["per_class"]] == list(CLASS_NAMES)
    assert all(r["cost"] in result["protocol"]["costs"] for r in result["per_class"])
    assert 0 < result["mAP"] <= 100 and result["protocol"]["class_names_from"].startswith("embedded_data.json")
    rows = result["low_shot"]["rows"]
    assert [r["n"] for r in rows] == [1, 2, 1000] and "skipped" in rows[2]
    assert len(rows[0]["mAP_samples"]) == 2 and rows[0]["mAP_std"] >= 0
    assert "voc07_svm" in (out / "done.json").read_text()


def test_missing_voc2007_is_one_error_line(tmp_path, capsys):
    line = one_error_line(capsys, lambda: voc07_svm.cli_main(
        ["--checkpoint", "random", "--arch", "resnet18", "--data-root", str(tmp_path), "--out-dir", str(tmp_path / "o")]))
    assert "VOC07 data missing" in line and "VOCdevkit/VOC2007" in line
    assert not (tmp_path / "o").exists()  # nothing written
