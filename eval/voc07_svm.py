"""Linear SVMs on frozen features of VOC07 (Goyal et al. 2019; PIRL, SwAV, VISSL, mmselfsup), full and low-shot.

    python -m eval.voc07_svm --checkpoint PATH|random --arch resnet50 --data-root DIR --out-dir DIR [key=value ...]

DIR holds VOCdevkit/VOC2007 (ImageSets/Main/{trainval,test}.txt, Annotations, JPEGImages); class names
are VOC's 20, or the `class_names` of DIR/embedded_data.json. Features: pool5 of the frozen backbone on
the eval centre crop (Resize(data.image_size*256/224) + CenterCrop(data.image_size), the checkpoint
format's normalisation; Goyal et al. resize the full image instead), l2-normalised.
Per class, one-vs-rest: an image is positive if it holds a non-difficult object of the class, negative
if it holds none; an image whose only objects of the class are difficult is left out of that class's
training, cross-validation and test AP. scikit-learn's LinearSVC (squared hinge, l2, dual, positives
weighted voc07_svm.positive_weight), C chosen per class by voc07_svm.folds-fold stratified cross-validation
on trainval over voc07_svm.costs (mean average precision of the folds; the smallest cost on a tie), then
refit on all of trainval. AP is scikit-learn's average_precision_score (the non-interpolated area, not
the VOC07 11-point one) on VOC07 test, x100; mAP is the mean over classes.
Low-shot (voc07_svm.low_shot): per class, n sampled positives and every negative of trainval, C chosen by
min(folds, n)-fold cross-validation on that sample (n = 1: the class's full-trainval C); mean and std
(ddof 0) of mAP over voc07_svm.low_shot_samples seeded samples per n.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m eval.voc07_svm: parse before the imports below load torch (fast --help)
    from eval.cli import VOC_FLAGS, run_protocol

    run_protocol("eval.voc07_svm", __doc__, flags=VOC_FLAGS)
    raise SystemExit  # the protocol ran as the module eval.voc07_svm, which run_protocol imported

import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.svm import LinearSVC
from torch.utils.data import Dataset

from core.cli import UserError, warn
from core.config import Config, dump_config
from core.distributed import init_distributed
from core.features import extract_features
from core.files import mark_done, write_json
from core.images import load_rgb
from core.models import ARCHS, feature_dim
from core.progress import say_outputs
from core.runtime import check_writable_dir, git_revision, seed_everything
from core.voc import ABSENT, DIFFICULT_ONLY, METADATA_FILE, POSITIVE, VOC_CLASS_NAMES, image_labels, \
    metadata_class_names, read_split_ids
from eval.cli import VOC_FLAGS, run_protocol
from eval.context import frozen_backbone
from eval.feature_cache import LAYER

LAYOUT = "expected DIR/VOCdevkit/VOC2007/{Annotations/*.xml, ImageSets/Main/{trainval,test}.txt, JPEGImages/*.jpg}"


class VOCImages(Dataset):
    """One VOC07 split: (image, index) in split order; `labels` (images x classes) holds POSITIVE /
    DIFFICULT_ONLY / ABSENT. Its transform is set by frozen_backbone (the checkpoint's normalisation)."""

    def __init__(self, voc_dir: Path, split: str, class_names, transform=None):
        self.ids = read_split_ids(voc_dir / "ImageSets" / "Main" / f"{split}.txt")
        if not self.ids:
            raise UserError(f"{voc_dir}/ImageSets/Main/{split}.txt lists no image; {LAYOUT}")
        self.paths = [voc_dir / "JPEGImages" / f"{i}.jpg" for i in self.ids]
        if missing := [p for p in self.paths if not p.is_file()]:
            raise UserError(f"VOC image missing: {missing[0]} (listed in ImageSets/Main/{split}.txt"
                            f"{f', and {len(missing) - 1} more' if len(missing) > 1 else ''})")
        self.labels = np.array([image_labels(voc_dir / "Annotations" / f"{i}.xml", class_names) for i in self.ids],
                               dtype=np.int64).reshape(len(self.ids), len(class_names))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        return self.transform(load_rgb(str(self.paths[index]))), index


def svm(cost: float, svm_cfg) -> LinearSVC:
    """The reference classifier (VISSL's SVMTrainer settings); random_state fixes liblinear's coordinate order."""
    return LinearSVC(C=cost, class_weight={1: svm_cfg.positive_weight, -1: 1.0}, loss="squared_hinge",
                     penalty="l2", dual=True, tol=1e-4, max_iter=svm_cfg.max_iter, random_state=0)


def binary_task(labels: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows kept, +1/-1 targets) of class c: difficult-only images are left out, not made negatives."""
    keep = np.flatnonzero(labels[:, c] != DIFFICULT_ONLY)
    return keep, np.where(labels[keep, c] == POSITIVE, 1, -1)


def choose_cost(x: np.ndarray, y: np.ndarray, svm_cfg, folds: int) -> tuple[float, dict]:
    """The cost of the best mean cross-validated AP over `folds` unshuffled stratified folds (what
    cross_val_score(cv=folds) uses for a classifier), the smallest on a tie; and every cost's score."""
    split = StratifiedKFold(n_splits=folds)
    scores = {c: float(cross_val_score(svm(c, svm_cfg), x, y, cv=split, scoring="average_precision").mean())
              for c in svm_cfg.costs}
    return max(svm_cfg.costs, key=lambda c: (scores[c], -c)), scores


def class_ap(clf: LinearSVC, x: np.ndarray, labels: np.ndarray, c: int) -> float:
    """AP x100 of class c on the test rows (difficult-only rows left out); NaN when it has no positive."""
    keep, y = binary_task(labels, c)
    if not (y == 1).any():
        return float("nan")
    return 100.0 * float(average_precision_score(y == 1, clf.decision_function(x[keep])))


def low_shot_rows(labels: np.ndarray, c: int, n: int, seed: int, sample: int) -> np.ndarray | None:
    """Training rows of class c in low-shot sample `sample`: n positives drawn without replacement (a
    generator seeded by (seed, n, sample, c), so one seed gives one sample) and every negative, in row
    order; None if the class has fewer than n positives."""
    positives = np.flatnonzero(labels[:, c] == POSITIVE)
    if len(positives) < n:
        return None
    rng = np.random.default_rng([seed, n, sample, c])
    return np.sort(np.concatenate([rng.choice(positives, n, replace=False), np.flatnonzero(labels[:, c] == ABSENT)]))


def fit_class(x, y, svm_cfg, folds: int, fallback_cost: float | None = None) -> tuple[LinearSVC, dict]:
    """C by cross-validation (or `fallback_cost` when the positives are too few to fold), then the refit."""
    folds = min(folds, int((y == 1).sum()), int((y == -1).sum()))
    if folds >= 2:
        cost, scores = choose_cost(x, y, svm_cfg, folds)
        record = {"cost": cost, "folds": folds, "cv_ap": {str(c): round(100 * s, 4) for c, s in scores.items()}}
    elif fallback_cost is not None:
        cost, record = fallback_cost, {"cost": fallback_cost, "folds": 0, "cv_ap": None}
    else:
        raise UserError(f"a class has {int((y == 1).sum())} positive and {int((y == -1).sum())} negative trainval "
                        "images; cross-validation needs at least 2 of each: add images or check the annotations")
    return svm(cost, svm_cfg).fit(x, y), record


def check_config(cfg: Config) -> Path:
    """The VOC07 folder, and the list-valued keys that core.config's rules cannot range-check."""
    s = cfg.voc07_svm
    if not (isinstance(s.costs, list) and s.costs and all(isinstance(c, (int, float)) and c > 0 for c in s.costs)):
        raise UserError(f"voc07_svm.costs is {s.costs!r}; give a non-empty list of positive costs, e.g. [0.1,1.0,10.0]")
    sizes = s.low_shot_sizes
    if not (isinstance(sizes, list) and sizes and all(isinstance(n, int) and n >= 1 for n in sizes)):
        raise UserError(f"voc07_svm.low_shot_sizes is {sizes!r}; give a non-empty list of positive ints, e.g. [1,2,4]")
    if not cfg.checkpoint:
        raise UserError("no checkpoint given: pass --checkpoint PATH (SimSiam, MoCo or torchvision) or --checkpoint random")
    if cfg.arch not in ARCHS:
        raise UserError(f"unknown arch {cfg.arch!r}; choose one of {', '.join(ARCHS)}")
    if not cfg.data.voc_root:
        raise UserError(f"no VOC data root given: pass --data-root DIR; {LAYOUT}")
    voc = Path(cfg.data.voc_root) / "VOCdevkit" / "VOC2007"
    needed = [voc / "Annotations", voc / "JPEGImages", *(voc / "ImageSets" / "Main" / f"{s}.txt" for s in ("trainval", "test"))]
    if missing := [p for p in needed if not p.exists()]:
        raise UserError(f"VOC07 data missing: {', '.join(map(str, missing[:2]))}; {LAYOUT} "
                        "(`python -m embedded --out-dir DIR` writes a small synthetic one)")
    return voc


def pool5(net, dataset, cfg: Config, device, desc: str) -> np.ndarray:
    """l2-normalised pool5 features of a split, float64 for liblinear (which copies to float64 anyway)."""
    feats, _ = extract_features(net, dataset, device, batch_size=cfg.features.batch_size,
                                num_workers=cfg.data.workers, desc=desc)
    return torch.nn.functional.normalize(feats, dim=1).double().numpy()


def main(cfg: Config) -> dict:
    voc = check_config(cfg)
    s = cfg.voc07_svm
    root = Path(cfg.data.voc_root)
    listed = metadata_class_names(root)
    class_names = listed or VOC_CLASS_NAMES
    trainval, test = VOCImages(voc, "trainval", class_names), VOCImages(voc, "test", class_names)
    try:
        dist = init_distributed(cfg.device)
    except RuntimeError as e:  # e.g. device=cuda on a machine without a GPU
        raise UserError(str(e)) from None
    out_dir = check_writable_dir(cfg.out_dir)
    seed_everything(cfg.seed)
    frozen = frozen_backbone(cfg, trainval, dist.device, also=(test,))
    dump_config(cfg, out_dir / "voc07_svm_config.yaml")  # its own name: knn etc. may share out_dir
    print(f"voc07_svm: {frozen.identity['kind']} checkpoint {frozen.identity['path']} ({cfg.arch}), "
          f"{len(trainval)} trainval / {len(test)} test images, {len(class_names)} classes, device {dist.device}")
    x_train = pool5(frozen.net, trainval, cfg, dist.device, "trainval centre crop")
    x_test = pool5(frozen.net, test, cfg, dist.device, "test centre crop")

    unconverged = 0
    with warnings.catch_warnings(record=True) as caught:  # liblinear's max_iter warnings: counted, said once
        warnings.simplefilter("always", ConvergenceWarning)
        per_class = []
        for c, name in enumerate(class_names):
            keep, y = binary_task(trainval.labels, c)
            clf, record = fit_class(x_train[keep], y, s, s.folds)
            ap = class_ap(clf, x_test, test.labels, c)
            per_class.append({"class": name, **record, "train_positives": int((y == 1).sum()),
                              "train_negatives": int((y == -1).sum()), "ap": round(ap, 4)})
            print(f"voc07_svm {name}: C={record['cost']:g} AP {ap:.2f}")
        low_shot = run_low_shot(x_train, trainval.labels, x_test, test.labels, cfg, per_class) if s.low_shot else None
        unconverged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    if unconverged:
        warn(f"{unconverged} LinearSVC fit(s) stopped at voc07_svm.max_iter={s.max_iter} before converging; "
             "raise voc07_svm.max_iter for reportable numbers")
    aps = [r["ap"] for r in per_class if not np.isnan(r["ap"])]
    if len(aps) < len(per_class):
        warn(f"{len(per_class) - len(aps)} class(es) have no positive test image; mAP is over the other {len(aps)}")
    m_ap = round(float(np.mean(aps)), 4)
    print(f"voc07_svm: mAP {m_ap:.2f} over {len(aps)} classes")
    result = {
        "protocol": {
            "checkpoint": frozen.identity, "layer": LAYER, "feature_dim": feature_dim(frozen.net),
            "features": "pool5 of the frozen backbone on the eval centre crop, l2-normalised",
            "voc_root": str(root.resolve()), "num_trainval": len(trainval), "num_test": len(test),
            "class_names": list(class_names),
            "class_names_from": f"{METADATA_FILE} in the data root" if listed else "Pascal VOC's 20 classes",
            "labels": "positive: a non-difficult object of the class; negative: no object of it; images whose only "
                      "objects of the class are difficult are left out of that class (training, CV and test AP)",
            "image_size": cfg.data.image_size, "transform": repr(frozen.transform),
            "input_normalization": frozen.detection.normalization.to_dict(),
            "classifier": "sklearn LinearSVC(loss=squared_hinge, penalty=l2, dual=True, tol=1e-4, random_state=0)",
            "costs": list(s.costs), "folds": s.folds, "cv": "StratifiedKFold(folds), unshuffled; score: mean fold AP; "
            "ties: smallest cost", "positive_weight": s.positive_weight, "max_iter": s.max_iter,
            "ap": "sklearn average_precision_score x100 (non-interpolated), VOC07 test", "unconverged_fits": unconverged,
            "seed": cfg.seed, "device": str(dist.device), "git_revision": git_revision(),
        },
        "per_class": per_class,
        "mAP": m_ap,
        "low_shot": low_shot,
    }
    write_json(out_dir / "voc07_svm.json", result)
    mark_done(out_dir, "voc07_svm", result="voc07_svm.json")
    say_outputs("eval voc07_svm", out_dir)
    return result


def run_low_shot(x_train, train_labels, x_test, test_labels, cfg: Config, per_class: list[dict]) -> dict:
    """mAP of every (n, sample): SVMs on n positives per class and every negative; mean and std per n."""
    s = cfg.voc07_svm
    rows = []
    for n in s.low_shot_sizes:
        short = [per_class[c]["class"] for c in range(len(per_class)) if (train_labels[:, c] == POSITIVE).sum() < n]
        if short:  # a sample of n would not hold n positives of every class: the row would not be what it says
            warn(f"voc07_svm low-shot n={n} skipped: {len(short)} class(es) have fewer trainval positives "
                 f"({', '.join(short[:3])})")
            rows.append({"n": n, "skipped": f"classes with fewer than {n} positives: {short}"})
            continue
        maps, costs = [], []
        for sample in range(s.low_shot_samples):
            aps, chosen = [], []
            for c in range(len(per_class)):
                rows_c = low_shot_rows(train_labels, c, n, cfg.seed, sample)
                y = np.where(train_labels[rows_c, c] == POSITIVE, 1, -1)
                clf, record = fit_class(x_train[rows_c], y, s, s.folds, fallback_cost=per_class[c]["cost"])
                aps.append(class_ap(clf, x_test, test_labels, c))
                chosen.append(record["cost"])
            maps.append(float(np.nanmean(aps)))
            costs.append(chosen)
        rows.append({"n": n, "mAP_mean": round(float(np.mean(maps)), 4), "mAP_std": round(float(np.std(maps)), 4),
                     "mAP_samples": [round(m, 4) for m in maps], "costs": costs})
        print(f"voc07_svm low-shot n={n}: mAP {np.mean(maps):.2f} +- {np.std(maps):.2f} over {len(maps)} samples")
    return {"sizes": list(s.low_shot_sizes), "samples": s.low_shot_samples,
            "sampling": "per class: n positives drawn without replacement with numpy default_rng([seed, n, sample, "
                        "class]) plus every negative; C by min(folds, n)-fold CV on the sample (n = 1: the class's "
                        "full-trainval C); std with ddof 0", "rows": rows}


def cli_main(argv=None) -> None:
    run_protocol(__name__, __doc__, argv, flags=VOC_FLAGS)
