"""The GPU check: what a short loan of one CUDA GPU must measure, in one unattended command.

    bench/gpu_check.sh [--out-dir DIR] [--budget-s 480] [--parts train,photometric,knn,detection,sync_bn]
    bench/gpu_check.sh --dry-run       # the same code paths on the CPU at toy sizes (what the test runs)

Writes DIR/gpu_check.json (every number, each part's status) and DIR/gpu_check.md (one table):

* train: SimSiam ResNet-50 training images/s (two-view samples) at 224 px, batch 64 per GPU (the
  paper's 512 over 8 GPUs), in fp32, bf16 and bf16 + channels_last, each with the official and the
  fast data path, fed from ImageNet-sized JPEGs made on the spot (bench/photos.py); the data-wait
  fraction and the peak GPU memory of each. It is the real loop (pretrain.loop.main) for two epochs;
  the numbers are the second epoch's, whose time includes the DataLoader's start-up;
* photometric: the fast path's batched photometric ops on the GPU against the official PIL views of
  the same images and seeds, per-channel mean/std (the tolerances of tests/pretrain/test_fast_data.py),
  and their cost per batch;
* knn: the project's kNN (core/knn.py) on an ImageNet-sized bank (1,281,167 x 2048 when the GPU has
  the memory, else 131,072 x 2048) in float32, and in reduced precision: time and whether the same
  k neighbours come out;
* detection: one Faster R-CNN C4 (VOC recipe) and one Mask R-CNN C4 (COCO recipe) training iteration
  through the project's detectron2 trainer at the recipe's image sizes, batch 2 per GPU: seconds
  per iteration, peak memory;
* sync_bn: with two GPUs, the first step of a 2-process NCCL run (pretrain/run.sh) against one process
  over the same batch (core.distributed.SyncBatchNorm); skipped with a message on one GPU.

Each part runs in its own process under a time budget (the whole check: --budget-s, 8 minutes by
default); a part that reaches its budget is killed and recorded as "cut", and the check goes on.
Nothing is left running: every child process group is waited for or killed before the check exits.
Without a CUDA GPU (and without --dry-run) it refuses with one `error:` line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core.cli import Command, UserError, run
from core.files import write_json

REPO = Path(__file__).resolve().parent.parent
PARTS = ("train", "photometric", "knn", "detection", "sync_bn")
# (backend, amp, channels_last): the settings the issue asks for, fp32 as the official code
TRAIN_SETTINGS = [(b, amp, cl) for b in ("official", "fast") for amp, cl in (("none", False), ("bf16", False),
                                                                               ("bf16", True))]
# The fast path's views against the official ones, in normalised units: the thresholds of
# tests/pretrain/test_fast_data.py::test_outputs_match_the_official_pipeline_per_channel (reasons there).
PHOTOMETRIC_LIMITS = {"channel_mean": 0.03, "channel_std": 0.02, "per_view_mean_abs": 0.08}
# Seconds per part on the GPU (the total is capped by --budget-s as well). Parts start a process that
# imports torch and initialises CUDA (~10 s) before any work.
BUDGETS = {"train": 35, "photometric": 25, "knn": 50, "detection": 45, "sync_bn": 60}  # train, detection: each setting
IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000


def sizes(dry_run: bool) -> dict:
    """Everything that differs between the real check and the dry run; the code paths do not."""
    if dry_run:
        return {"arch": "resnet18", "crop": 32, "batch": 4, "model": ["model.dim=64", "model.pred_dim=16"],
                "workers": 0, "photos_per_class": 1, "photo_copies": 1,  # 8 JPEGs: 2 steps of 4
                "bank": 1000, "queries": 64, "dim": 64, "classes": 10, "k": 20,
                "det_configs": {"voc": "tiny_pascal_voc_R_50_C4.yaml", "coco": "tiny_coco_R_50_C4.yaml"},
                "det_image": [160, 128], "det_iters": 1, "det_warmup": 0, "ddp_crop": 32, "ddp_batch": 8}
    return {"arch": "resnet50", "crop": 224, "batch": 64, "model": [],
            "workers": max(1, min(16, os.cpu_count() or 1) - 2),  # one core for the training process
            "photos_per_class": 16, "photo_copies": 15,  # 8 x 16 = 128 JPEGs, x 15 = 1920 files = 30 steps of 64
            "bank": IMAGENET_TRAIN, "queries": 10_000, "dim": 2048, "classes": 1000, "k": 200,
            "det_configs": {"voc": "pascal_voc_R_50_C4_24k.yaml", "coco": "coco_R_50_C4_1x.yaml"},
            "det_image": [500, 375], "det_iters": 8, "det_warmup": 3, "ddp_crop": 224, "ddp_batch": 32}


# ---------------------------------------------------------------------------------------------- children
def _device(spec) -> str:
    return "cpu" if spec["dry_run"] else "cuda"


def _peak_gb(torch) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def child_train(spec: dict) -> list:
    """Every training setting in turn in this process (one torch import and CUDA start-up for all), each
    stopped at its budget through the loop's own preemption path (SIGUSR1: save, stop at the step)."""
    import threading

    import torch

    from core.preemption import Preempted
    from pretrain.loop import main
    from pretrain.train import load

    # A timer that fires after a setting returned must not kill the process: what main() restores is this
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    results = []
    for item in spec["items"]:
        budget = min(item["budget_s"], spec["deadline"] - time.time())
        if budget < 3:
            results.append({"status": "cut", "budget_s": round(max(budget, 0), 1), "why": "no time left"})
            continue
        cfg = load(REPO / "pretrain/configs/defaults.yaml", item["overrides"])
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        timer = threading.Timer(budget, os.kill, (os.getpid(), signal.SIGUSR1))
        t0 = time.perf_counter()
        timer.start()
        try:
            main(cfg)
            status = "ok"
        except Preempted:
            status = "cut"
        finally:
            timer.cancel()
        metrics = Path(cfg.out_dir) / "metrics.jsonl"
        records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
        r = {"status": status, "budget_s": round(budget, 1), "wall_s": round(time.perf_counter() - t0, 1),
             "peak_gpu_mem_gb": _peak_gb(torch), "epochs_done": len(records)}
        if records:  # the warm epoch when there are two (a cut run keeps its first)
            last = records[-1]
            r.update(images_per_s=last["images_per_s"], data_wait_frac=last["data_wait_frac"],
                     compute_images_per_s=last["images_per_s"] / max(1e-9, 1 - last["data_wait_frac"]),
                     first_epoch_images_per_s=records[0]["images_per_s"], steps_per_epoch=records[0]["step"])
        results.append(r)
        shutil.rmtree(cfg.out_dir, ignore_errors=True)  # 306 MB checkpoints: one setting's at a time on disk
        _save_partial(spec, results)
    return results


def _save_partial(spec: dict, results) -> None:
    """The results so far, so that a part killed at its budget still reports what it finished."""
    from core.files import write_json

    write_json(spec["result"], results, allow_nan=True)


def child_photometric(spec: dict) -> dict:
    import torch

    from core.images import image_folder
    from pretrain.batch_augment import BatchAugment
    from pretrain.data import TwoViewDataset, simsiam_augmentation
    from pretrain.fast_data import FastTwoViewDataset, collate_views

    device, size = torch.device(_device(spec)), spec["crop"]
    photos = image_folder(spec["photos"])
    official = TwoViewDataset(photos, simsiam_augmentation(size), seed=1)
    fast = FastTwoViewDataset(photos, size, seed=1, photometric="device")
    augment = BatchAugment()
    a, b, n = [], [], len(photos)
    for epoch in range(2):  # as the test: the same images and seeds through both paths
        official.set_epoch(epoch)
        fast.set_epoch(epoch)
        x1, x2, _, _ = collate_views([fast[i] for i in range(n)])
        b += [augment(x.to(device)).cpu() for x in (x1, x2)]
        a += [torch.stack([official[i][0][k] for i in range(n)]) for k in (0, 1)]
    a, b = torch.cat(a), torch.cat(b)
    diffs = {"channel_mean": (a.mean((0, 2, 3)) - b.mean((0, 2, 3))).abs().max().item(),
             "channel_std": (a.std((0, 2, 3)) - b.std((0, 2, 3))).abs().max().item(),
             "per_view_mean_abs": (a - b).abs().mean((1, 2, 3)).max().item()}
    # the cost on the device of one training batch's two views (batch images, both views)
    x1, x2, _, _ = collate_views([fast[i % n] for i in range(spec["batch"])])
    x1, x2 = x1.to(device), x2.to(device)
    times = []
    for _ in range(6):
        _sync(torch)
        t = time.perf_counter()
        augment(x1), augment(x2)
        _sync(torch)
        times.append(time.perf_counter() - t)
    return {"images": n, "views": len(a), "diffs": diffs, "limits": PHOTOMETRIC_LIMITS,
            "ok": all(diffs[k] < PHOTOMETRIC_LIMITS[k] for k in diffs),
            "batch_ms_both_views": 1000 * min(times[1:]), "batch": spec["batch"], "crop": size}


def _sync(torch) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def child_knn(spec: dict) -> dict:
    """core/knn.py's kNN (knn_grid: the path of eval.knn) in float32 and in its reduced precisions."""
    import torch
    import torch.nn.functional as F

    from core.knn import PRECISIONS, knn_grid, neighbour_overlap

    device = torch.device(_device(spec))
    dim, classes, k, nq = spec["dim"], spec["classes"], spec["k"], spec["queries"]
    bank_n = spec["bank"]
    # the bank, its temporaries while drawn, knn_grid's normalised and half copies, similarity chunks
    if device.type == "cuda" and torch.cuda.mem_get_info()[0] < 24 * bank_n * dim:
        bank_n = 131_072  # still ImageNet-like (100k+), on a smaller GPU
    g = torch.Generator(device).manual_seed(0)
    # Class-structured features (cosine ~0.5 within a class, ~0 across), not pure noise: with
    # isotropic noise every similarity is ~N(0, 1/d) and neighbour ranks are near-ties at any precision.
    centers = torch.randn(classes, dim, generator=g, device=device)

    def draw(n):
        labels = torch.randint(classes, (n,), generator=g, device=device)
        feats = centers[labels]
        feats += torch.randn(n, dim, generator=g, device=device)
        return F.normalize(feats, dim=1), labels

    bank, bank_labels = draw(bank_n)
    queries, query_labels = draw(nq)
    memory_mb = 4096 if device.type == "cuda" else 64

    def run(precision):
        _sync(torch)
        t = time.perf_counter()
        ranking, info = knn_grid(bank, bank_labels, queries, classes, [(k, 0.2)], memory_mb, precision)
        _sync(torch)
        return ranking[(k, 0.2)][:, 0], info, time.perf_counter() - t

    knn_grid(bank, bank_labels, queries[:8], classes, [(k, 0.2)], memory_mb)  # warm-up (kernels, allocator)
    pred32, _, t32 = run("float32")
    result = {"bank": bank_n, "dim": dim, "queries": nq, "k": k, "classes": classes, "temperature": 0.2,
              "float32": {"s": t32, "queries_per_s": nq / t32, "top1": 100 * (pred32 == query_labels).float().mean().item()}}
    chunk = 256 if device.type == "cuda" else 16  # neighbour_overlap holds a queries x bank mask
    for name in PRECISIONS:
        if name == "float32" or (device.type == "cpu" and name == "fp16"):
            continue  # CPU half matmuls are slow and not what a GPU run uses; bf16 covers the code path
        pred, info, t = run(name)
        # over every query, not only knn_grid's sample of OVERLAP_SAMPLE
        overlap = sum(neighbour_overlap(bank, queries[i:i + chunk], k, PRECISIONS[name]) * len(queries[i:i + chunk])
                      for i in range(0, nq, chunk)) / nq
        result[name] = {"s": t, "queries_per_s": nq / t, "speedup": t32 / t, "neighbour_overlap": overlap,
                        "same_prediction_frac": (pred == pred32).float().mean().item(),
                        "top1": 100 * (pred == query_labels).float().mean().item(), "knn_grid_info": info}
    # full ImageNet: 50,000 val queries against the 1,281,167-image bank, at the float32 rate measured
    result["imagenet_val_float32_s_projected"] = IMAGENET_VAL / result["float32"]["queries_per_s"] * IMAGENET_TRAIN / bank_n
    result["peak_gpu_mem_gb"] = _peak_gb(torch)
    return result


def child_detection(spec: dict) -> list:
    import torch
    from detectron2.utils.events import EventStorage

    from transfer.train_det import parse_args
    from transfer.trainer import Trainer, setup

    results = []
    for item in spec["items"]:
        t0 = time.perf_counter()
        stop_at = time.time() + min(item["budget_s"], spec["deadline"] - time.time())
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        # --resume only so that setup() does not ask for converted weights: the model stays at random
        # init, which does not change the time of an iteration; a small lr keeps its losses finite.
        args = parse_args(["--config-file", item["config"], "--data-root", spec["data_root"], "--resume",
                           "OUTPUT_DIR", item["work"], "MODEL.DEVICE", _device(spec), "SOLVER.IMS_PER_BATCH", "2",
                           "SOLVER.BASE_LR", "0.0001", "DATALOADER.NUM_WORKERS", str(spec["workers"])])
        cfg = setup(args)
        trainer = Trainer(cfg)
        times = []
        with EventStorage(0) as trainer.storage:  # what TrainerBase.train provides to run_step
            for i in range(spec["det_warmup"] + spec["det_iters"]):
                if time.time() > stop_at:
                    break
                trainer.iter = i
                _sync(torch)
                t = time.perf_counter()
                trainer.run_step()
                _sync(torch)
                times.append(time.perf_counter() - t)
            data = [v for v, _ in trainer.storage.history("data_time").values()]
        timed, data = times[spec["det_warmup"]:], data[spec["det_warmup"]:]
        r = {"status": "ok" if len(timed) == spec["det_iters"] else "cut", "config": item["config"],
             "iters_timed": len(timed), "wall_s": round(time.perf_counter() - t0, 1),
             "images_per_iter": cfg.SOLVER.IMS_PER_BATCH, "min_size_train": list(cfg.INPUT.MIN_SIZE_TRAIN),
             "max_size_train": cfg.INPUT.MAX_SIZE_TRAIN, "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
             "peak_gpu_mem_gb": _peak_gb(torch)}
        if timed:
            r.update(s_per_iter=sum(timed) / len(timed), s_per_iter_min=min(timed), data_s_per_iter=sum(data) / len(data))
        results.append(r)
        del trainer
        _save_partial(spec, results)
    return results


def child_sync_bn(spec: dict) -> dict:
    import torch

    from core.checkpoint import read_checkpoint
    from pretrain.loop import LAST, main
    from pretrain.train import load

    work = Path(spec["work"])
    ddp, single = work / "ddp", work / "single"
    # The same first step as tests/pretrain/test_ddp.py, through the real launcher, here on nccl
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "pretrain/run.sh"), "--standalone", "--nproc_per_node", "2",
                           "--config", str(REPO / "pretrain/configs/defaults.yaml"), *spec["overrides"],
                           f"out_dir={ddp}"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"2-process run failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    main(load(REPO / "pretrain/configs/defaults.yaml", [*spec["overrides"], f"out_dir={single}"]))
    a, b = read_checkpoint(ddp / LAST)["state_dict"], read_checkpoint(single / LAST)["state_dict"]
    worst, worst_key = 0.0, None
    for key, value in a.items():
        if value.is_floating_point():
            d = (value - b[key]).abs().max().item()
            if d > worst:
                worst, worst_key = d, key
        elif not torch.equal(value, b[key]):
            worst, worst_key = math.inf, key
    # float reduction order (nccl, cudnn) differs between the runs: equal within 1e-4 after one step
    return {"backend": "nccl" if spec["device"] == "cuda" else "gloo", "processes": 2,
            "max_abs_diff": worst, "worst_tensor": worst_key, "ok": worst < 1e-4}


CHILDREN = {"train": child_train, "photometric": child_photometric, "knn": child_knn, "detection": child_detection,
            "sync_bn": child_sync_bn}


def child_main(part: str, spec_file: str) -> None:
    from core.files import write_json

    spec = json.loads(Path(spec_file).read_text())
    write_json(spec["result"], CHILDREN[part](spec), allow_nan=True)


# ---------------------------------------------------------------------------------------------- the parent
class Runner:
    """Starts each part as a child process under its budget and the check's deadline; kills what remains."""

    GRACE_S = 20.0  # after its budget a part may still save a checkpoint and exit; then it is killed

    def __init__(self, scratch: Path, deadline: float, dry_run: bool):
        self.scratch, self.deadline, self.dry_run = scratch, deadline, dry_run
        self.proc: subprocess.Popen | None = None
        self.count = 0

    def part(self, name: str, label: str, budget: float, spec: dict) -> tuple[dict, object]:
        """(status, value): status {'status': ok | cut | failed, 'wall_s', ...}; value what the child
        returned (or saved before it was killed), else None."""
        self.count += 1
        budget = min(budget, self.deadline - time.monotonic() - self.GRACE_S)
        if budget < 5:
            print(f"gpu_check: {label}: cut, no time left in --budget-s", flush=True)
            return {"status": "cut", "budget_s": round(max(budget, 0), 1), "why": "no time left in --budget-s"}, None
        tag = f"{self.count:02d}_{name}"
        result = self.scratch / f"{tag}.json"
        spec = {**spec, "dry_run": self.dry_run, "result": str(result), "deadline": time.time() + budget}
        spec_file = self.scratch / f"{tag}_spec.json"
        write_json(spec_file, spec)
        log = self.scratch / f"{tag}.log"
        print(f"gpu_check: {label} (budget {budget:.0f} s) ...", flush=True)
        t0 = time.monotonic()
        with log.open("w") as out:  # a child's log stream in the scratch folder, not a result: no atomic write
            # its own session: on a cut the whole group goes (DataLoader workers, torchrun and its workers)
            self.proc = subprocess.Popen([sys.executable, "-m", "bench.gpu_check", "--child", name, str(spec_file)],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                             [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])))
            try:
                code = self.proc.wait(timeout=budget + self.GRACE_S)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                self.stop()
        wall = round(time.monotonic() - t0, 1)
        value = json.loads(result.read_text()) if result.is_file() else None
        if code is None:
            status = {"status": "cut", "budget_s": round(budget, 1), "wall_s": wall, "why": "killed at its budget"}
        elif code == 0 and value is not None:
            status = {"status": "ok", "wall_s": wall}
        else:
            status = {"status": "failed", "exit": code, "wall_s": wall,
                      "log_tail": log.read_text(errors="replace")[-3000:]}
        last = status.get("log_tail", "").strip().splitlines()[-1:]
        print(f"gpu_check: {label}: {status['status']} in {wall} s" + (f"; last line: {last[0]}" if last else ""),
              flush=True)
        return status, value

    def single(self, name: str, label: str, budget: float, spec: dict) -> dict:
        """A part that returns one record."""
        status, value = self.part(name, label, budget, spec)
        return {**(value or {}), **status} if status["status"] != "ok" else {**status, **value}

    def items(self, name: str, label: str, items: list[dict], spec: dict) -> list[dict]:
        """A part that measures several settings in one process (one start-up), each under its budget."""
        status, value = self.part(name, label, sum(i["budget_s"] for i in items), {**spec, "items": items})
        done = value or []
        out = [{**status, **r} if status["status"] == "failed" else r for r in done]
        return out + [{**status, "status": "cut" if status["status"] == "ok" else status["status"]}
                      for _ in items[len(done):]]

    def stop(self) -> None:
        """Kill the running child's whole process group (if any) and reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None or _group_alive(proc.pid):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def prepare_photos(scratch: Path, per_class: int, copies: int) -> Path:
    """ImageNet-sized JPEGs (bench/photos.py), each file repeated `copies` times: decoding is what costs,
    so repeats measure the same as distinct photos and take no time to write."""
    from bench.photos import write_photo_folder

    distinct = write_photo_folder(scratch / "photos", per_photo=per_class)
    if copies <= 1:
        return distinct
    train = scratch / "photos_train"
    for jpeg in sorted(distinct.glob("*/*.jpg")):
        (train / jpeg.parent.name).mkdir(parents=True, exist_ok=True)
        for c in range(copies):
            target = train / jpeg.parent.name / f"{jpeg.stem}_{c:02d}.jpg"
            try:
                os.link(jpeg, target)
            except OSError:  # a file system without hard links
                shutil.copyfile(jpeg, target)
    return train


def train_overrides(sz: dict, device: str, photos: Path, out: Path, backend: str, amp: str, cl: bool) -> list[str]:
    return [f"out_dir={out}", f"arch={sz['arch']}", f"device={device}", f"data.train_dir={photos}",
            f"data.crop_size={sz['crop']}", f"data.workers={sz['workers']}", f"data.backend={backend}",
            f"optim.batch_size={sz['batch']}", "optim.epochs=2", f"train.amp={amp}",
            f"train.channels_last={str(cl).lower()}", "train.keep_checkpoints=1", "monitor.knn_every=0",
            "monitor.collapse_patience=0", *sz["model"]]


def check(out_dir: Path, budget_s: float, dry_run: bool, parts: list[str], explicit: bool = False) -> dict:
    import torch

    from core.runtime import git_revision

    t_start = time.monotonic()
    deadline = t_start + budget_s
    sz = sizes(dry_run)
    device = "cpu" if dry_run else "cuda"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    report = {"format": 1, "dry_run": dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "git_revision": git_revision(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "device": torch.cuda.get_device_name(0) if gpus else "cpu", "gpus": gpus, "cpu_cores": os.cpu_count(),
              "budget_s": budget_s, "sizes": {k: v for k, v in sz.items() if k != "model"}}
    scratch = Path(tempfile.mkdtemp(prefix=".gpu_check_", dir=out_dir))
    runner = Runner(scratch, deadline, dry_run)
    try:
        photos = prepare_photos(scratch, sz["photos_per_class"], sz["photo_copies"])
        if "train" in parts:
            settings = [(f"{b}, {'fp32' if amp == 'none' else amp}{' + channels_last' if cl else ''}", b, amp, cl)
                        for b, amp, cl in TRAIN_SETTINGS]
            results = runner.items("train", f"train, {len(settings)} settings", [
                {"budget_s": BUDGETS["train"], "overrides": train_overrides(sz, device, photos, scratch / f"run{i}", b, amp, cl)}
                for i, (_, b, amp, cl) in enumerate(settings)], {})
            report["train"] = [{"setting": label, "backend": b, "amp": amp, "channels_last": cl, **r}
                               for (label, b, amp, cl), r in zip(settings, results)]
        if "photometric" in parts:
            report["photometric"] = runner.single("photometric", "photometric ops on the device vs official views",
                                                  BUDGETS["photometric"], {"photos": str(scratch / "photos"),
                                                                           "crop": sz["crop"], "batch": sz["batch"]})
        if "knn" in parts:
            report["knn"] = runner.single("knn", "kNN", BUDGETS["knn"],
                                          {k: sz[k] for k in ("bank", "queries", "dim", "classes", "k")})
        if "detection" in parts:
            from embedded.generator import EmbeddedDataConfig, generate

            w, h = sz["det_image"]  # the recipe's resize (shorter side 480-800 / 640-800) scales them up
            data = generate(scratch / "det_data", EmbeddedDataConfig(
                cls_train_per_class=1, cls_val_per_class=1, det_width=w, det_height=h, voc07_trainval=8, voc07_test=2,
                voc12_trainval=2, coco_train=8, coco_val=2))
            jobs = (("voc", "Faster R-CNN C4"), ("coco", "Mask R-CNN C4"))
            results = runner.items("detection", "detection, Faster and Mask R-CNN C4", [
                {"budget_s": BUDGETS["detection"], "config": sz["det_configs"][job], "work": str(scratch / f"det_{job}")}
                for job, _ in jobs], {"data_root": str(data), "workers": min(4, sz["workers"]),
                                      "det_iters": sz["det_iters"], "det_warmup": sz["det_warmup"]})
            report["detection"] = [{"job": job, "model": name, **r} for (job, name), r in zip(jobs, results)]
        if "sync_bn" in parts:
            # a dry run takes gloo on the CPU through the same launcher when asked by name (--parts sync_bn):
            # it costs a torchrun start, and tests/pretrain/test_ddp.py already proves gloo
            if gpus >= 2 or (dry_run and explicit):
                ddp = ["arch=resnet50" if not dry_run else f"arch={sz['arch']}", f"device={device}",
                       f"data.train_dir={photos}", f"data.crop_size={sz['ddp_crop']}", "data.workers=1",
                       f"optim.batch_size={sz['ddp_batch']}", "optim.epochs=1", "train.stop_after_steps=1",
                       "monitor.knn_every=0", *sz["model"]]
                report["sync_bn"] = runner.single("sync_bn", "sync BN, 2 processes vs 1", BUDGETS["sync_bn"],
                                                  {"overrides": ddp, "work": str(scratch / "ddp"), "device": device})
            else:
                why = (f"{gpus} GPU(s) visible: the 2-process NCCL sync-BN check needs two (tests/pretrain/test_ddp.py "
                       "covers gloo" + ("; --dry-run --parts sync_bn runs this check on gloo)" if dry_run else ")"))
                print(f"gpu_check: sync BN: skipped, {why}", flush=True)
                report["sync_bn"] = {"status": "skipped", "why": why}
    finally:
        runner.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    report["wall_s"] = round(time.monotonic() - t_start, 1)
    return report


# ---------------------------------------------------------------------------------------------- the table
def _gb(v) -> str:
    return "-" if v is None else f"{v:.1f} GB"


def _status(r: dict) -> str:
    if r["status"] == "ok":
        return "PASS" if r.get("ok") is True else "FAIL" if r.get("ok") is False else "ok"
    return r["status"] + (f" ({r['why']})" if r.get("why") else f" (budget {r['budget_s']} s)" if "budget_s" in r else "")


def table(report: dict) -> str:
    """One markdown table of every measurement, plus a header line saying where and when."""
    sz = report["sizes"]
    rows = []
    for r in report.get("train", []):
        what = (f"{r['images_per_s']:.0f} img/s, data wait {100 * r['data_wait_frac']:.0f}% "
                f"({r['compute_images_per_s']:.0f} img/s without it)" if "images_per_s" in r else "-")
        rows.append(("train", f"{sz['arch']}, {sz['crop']} px, batch {sz['batch']}: {r['setting']}", what,
                     _gb(r.get("peak_gpu_mem_gb")), _status(r)))
    if "photometric" in report:
        r = report["photometric"]
        what = ("; ".join(f"{k} {v:.4f} (< {PHOTOMETRIC_LIMITS[k]})" for k, v in r["diffs"].items())
                + f"; {r['batch_ms_both_views']:.1f} ms per batch of {r['batch']}, both views"
                if r["status"] == "ok" else "-")
        rows.append(("photometric", "fast path's ops on the device vs official views", what, "-", _status(r)))
    if "knn" in report:
        r = report["knn"]
        if r["status"] == "ok":
            where = f"bank {r['bank']} x {r['dim']}, {r['queries']} queries, k={r['k']}"
            rows.append(("knn", f"{where}, float32 (core/knn.py knn_grid)",
                         f"{r['float32']['queries_per_s']:.0f} queries/s; full ImageNet val "
                         f"{r['imagenet_val_float32_s_projected']:.0f} s projected", _gb(r.get("peak_gpu_mem_gb")), "ok"))
            for name in ("bf16", "fp16"):
                if name in r:
                    x = r[name]
                    rows.append(("knn", f"{where}, {name} product (core/knn.py)",
                                 f"{x['queries_per_s']:.0f} queries/s ({x['speedup']:.2f}x float32); "
                                 f"{100 * x['neighbour_overlap']:.2f}% of float32's {r['k']} neighbours kept, "
                                 f"same top-1 class {100 * x['same_prediction_frac']:.2f}%, top-1 {x['top1']:.1f} "
                                 f"vs {r['float32']['top1']:.1f}", "-", "ok"))
        else:
            rows.append(("knn", "bank x queries", "-", "-", _status(r)))
    for r in report.get("detection", []):
        what = (f"{r['s_per_iter']:.3f} s/iter (min {r['s_per_iter_min']:.3f}, data {r['data_s_per_iter']:.3f}), "
                f"{r['images_per_iter']} images, shorter side {min(r['min_size_train'])}-{max(r['min_size_train'])}"
                if "s_per_iter" in r else "-")
        rows.append(("detection", f"{r['model']}, {sz['det_configs'][r['job']]}", what, _gb(r.get("peak_gpu_mem_gb")),
                     _status(r)))
    if "sync_bn" in report:
        r = report["sync_bn"]
        what = (f"{r['backend']}: max |difference| {r['max_abs_diff']:.2e} after one step (< 1e-4)"
                if r["status"] == "ok" else "-")
        rows.append(("sync_bn", "2 processes vs 1 over the same batch", what, "-", _status(r)))
    head = (f"GPU check{' (DRY RUN: CPU, toy sizes)' if report['dry_run'] else ''}: {report['device']} x "
            f"{report['gpus']}, {report['cpu_cores']} CPU cores, torch {report['torch']}, CUDA {report['cuda']}, "
            f"revision {report['git_revision'][:12]}, {report['started']}, {report['wall_s']} s of "
            f"{report['budget_s']:.0f} s\n\n")
    lines = ["| part | setting | measured | peak GPU memory | result |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return head + "\n".join(lines) + "\n"


def main(args) -> None:
    explicit = args.parts is not None
    parts = [p.strip() for p in (args.parts or ",".join(PARTS)).split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise UserError(f"--parts: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if args.budget_s < 10:
        raise UserError(f"--budget-s {args.budget_s} is too short; give at least 10 seconds")
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise UserError("no CUDA GPU is visible: the GPU check measures a GPU; run it on a GPU machine, or "
                        "--dry-run to run the same code on the CPU at toy sizes")
    from core.files import write_json, write_text
    from core.progress import say_outputs
    from core.runtime import check_writable_dir

    out_dir = check_writable_dir(args.out_dir)
    # SIGTERM / SIGHUP (a job's time limit, a closed terminal) unwind through check()'s finally, which
    # kills the running part's process group: nothing is left on the GPU
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _: sys.exit(128 + signum))
    report = check(out_dir, args.budget_s, args.dry_run, parts, explicit)
    write_json(out_dir / "gpu_check.json", report, allow_nan=True)
    md = table(report)
    write_text(out_dir / "gpu_check.md", md)
    print("\n" + md)
    say_outputs("gpu_check", out_dir)


def command() -> Command:
    cmd = Command("python -m bench.gpu_check", __doc__, overrides=False)
    cmd.add_argument("--out-dir", default="runs/gpu_check", metavar="DIR",
                     help="folder for gpu_check.json and gpu_check.md (scratch files go there too, then are removed)")
    cmd.add_argument("--budget-s", type=float, default=480.0, metavar="S",
                     help="seconds for the whole check; parts that would run past it are cut")
    cmd.add_argument("--parts", metavar="LIST",
                     help=f"comma-separated parts to run (default: all, {','.join(PARTS)}; with --dry-run, "
                          "sync_bn runs on gloo only when named here)")
    cmd.add_argument("--dry-run", action="store_true",
                     help="run every part on the CPU at toy sizes (checks the code paths, measures nothing useful)")
    cmd.add_argument("--child", nargs=2, metavar=("PART", "SPEC"), help=argparse.SUPPRESS)
    return cmd


def cli(argv=None) -> None:
    args = command().parse(argv)
    if args.child:  # one part, inside the process the parent started
        child_main(*args.child)
        return
    run(main, args)


if __name__ == "__main__":
    cli()
