"""The kNN monitor of a pretraining config: pool5 kNN top-1 of a model's encoder, with a bank set
(monitor.knn_train_dir) and a query set (monitor.knn_val_dir) in the clean evaluation view.

Pretraining logs it per epoch; the empirical study measures the same number at random init as
its chance-level baseline, so both read it from here.
"""

from __future__ import annotations

from core.config import Config
from core.features import extract_features
from core.images import drop_undecodable, image_folder
from core.knn import knn_accuracy
from core.models import SimSiam


def knn_sets(cfg: Config, transform):
    """The kNN monitor's bank (knn_train_dir) and queries (knn_val_dir), or None when not configured."""
    m = cfg.monitor
    if not (m.knn_every and m.knn_train_dir and m.knn_val_dir):
        return None
    sets = [image_folder(d, transform) for d in (m.knn_train_dir, m.knn_val_dir)]
    if cfg.data.skip_bad_images:
        for ds in sets:
            drop_undecodable(ds)
    return sets


def knn_monitor(model: SimSiam, cfg: Config, dist, sets) -> float:
    """kNN top-1 of pool5 features from a clean centre-crop pass (official monitor: k=200, T=0.2)."""
    bank, queries = sets
    kw = dict(device=dist.device, batch_size=cfg.monitor.knn_batch_size, num_workers=cfg.data.workers, rank=dist.rank)
    fb, lb = extract_features(model.encoder, bank, desc="knn bank", **kw)
    fq, lq = extract_features(model.encoder, queries, desc="knn queries", **kw)
    return knn_accuracy(fb, lb, fq, lq, len(bank.classes), k=cfg.monitor.knn_k, temperature=cfg.monitor.knn_t)["top1"]
