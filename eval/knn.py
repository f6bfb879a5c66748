"""Weighted kNN on frozen pool5 features (PROTOCOL.md section 4).

    python -m eval.knn --checkpoint PATH|random --arch resnet50 --train-dir DIR --val-dir DIR --out-dir DIR

Bank: l2-normalised features of the whole training set from a clean centre-crop pass; each val image
takes its k most cosine-similar bank images, which vote exp(sim / T) for their class. Peers disagree
on (k, T), so every configured pair is reported with its k, T and layer: (200, 0.2) is the official
SimSiam monitor, (20, 0.07) the DINO / mmselfsup one. The whole grid costs one similarity pass
(core.knn.knn_grid: top-k at the largest k once, every pair from its prefix). knn.precision=bf16|fp16
runs that product in reduced precision on a GPU and reports how many float32 neighbours it kept.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m eval.knn: parse before the imports below load torch (fast --help)
    from eval.cli import run_protocol

    run_protocol("eval.knn", __doc__)
    raise SystemExit  # the protocol ran as the module eval.knn, which run_protocol imported

from core.config import Config
from core.stats import encode_correct
from core.knn import MIN_OVERLAP, knn_grid, ranked_accuracy
from core.cli import UserError, warn
from eval.cli import run_protocol
from eval.context import EvalContext

KNOWN_SETTINGS = {(200, 0.2): "SimSiam official monitor", (20, 0.07): "DINO / mmselfsup", (200, 0.1): "VISSL / lightly"}


def parse_grid(grid) -> list[tuple[int, float]]:
    pairs = []
    for item in grid:
        ok = isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], int) and item[0] > 0 \
            and isinstance(item[1], (int, float)) and item[1] > 0
        if not ok:
            raise UserError(f"knn.grid entry {item!r} must be a pair [k, T] with k a positive int and T > 0")
        pairs.append((item[0], float(item[1])))
    if not pairs:
        raise UserError("knn.grid is empty; give at least one [k, T] pair, e.g. knn.grid=[[200,0.2]]")
    return pairs


def main(cfg: Config, ctx: EvalContext | None = None) -> dict:
    pairs = parse_grid(cfg.knn.grid)
    ctx = ctx or EvalContext(cfg)
    bank, bank_labels, bank_info = ctx.center_features("train")
    queries, query_labels, query_info = ctx.center_features("val")
    device = ctx.dist.device
    precision = cfg.knn.precision
    if precision != "float32" and device.type != "cuda":  # CPUs have no fast bf16/fp16 product: it would only lose
        if ctx.dist.is_main:
            warn(f"knn.precision={precision} needs a GPU; running the kNN product in float32 on {device.type}")
        precision = "float32"
    for k, _ in pairs:
        if k > len(bank) and ctx.dist.is_main:  # core.knn clamps k to the bank: say so, the row is not what it claims
            warn(f"knn k={k} is larger than the bank ({len(bank)} training images); the vote uses all {len(bank)}")
    rankings, pass_info = knn_grid(bank.to(device), bank_labels.to(device), queries.to(device), ctx.num_classes, pairs,
                                   memory_mb=cfg.knn.memory_mb, precision=precision)
    if pass_info.get("overlap_ok") is False and ctx.dist.is_main:
        warn(f"knn.precision={precision} kept only {100 * pass_info['neighbour_overlap']:.1f}% of float32's nearest "
             f"neighbours (threshold {100 * MIN_OVERLAP:g}%); use knn.precision=float32 for reportable numbers")
    rows = []
    for k, t in pairs:
        acc = ranked_accuracy(rankings[(k, t)], query_labels)
        rows.append({"k": k, "T": t, "setting": KNOWN_SETTINGS.get((k, t), "custom"),
                     "top1": round(acc["top1"], 4), "top5": round(acc["top5"], 4),
                     # top-1 right (1) or wrong (0) per val image in val order: the paired comparison of inits
                     "correct": encode_correct(rankings[(k, t)][:, 0].cpu() == query_labels.cpu())})
        if ctx.dist.is_main:
            print(f"knn k={k} T={t:g} ({rows[-1]['setting']}): top1 {acc['top1']:.2f}  top5 {acc['top5']:.2f}")
    result = {
        "protocol": ctx.protocol(method="weighted kNN, votes exp(cos/T), l2-normalised pool5, bank = train centre crops",
                                 knn_grid=[[k, t] for k, t in pairs]),
        "knn": rows,
        "similarity_pass": pass_info,
        "features": {"train": bank_info, "val": query_info},
    }
    ctx.write_result("knn", result)
    return result


def cli_main(argv=None) -> None:
    run_protocol(__name__, __doc__, argv)
