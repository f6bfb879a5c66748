"""Two gloo processes under torchrun train the same probe as one process (same batches, averaged
gradients), and the DDP feature pass returns the single-process features in dataset order."""

import json
import os
import subprocess
import sys

import torch

from eval import linear
from eval.linear import CHECKPOINT
from tests.helpers import REPO, toy_splits, torchvision_checkpoint


def test_two_process_probe_matches_one_process(tmp_path):
    train, val = toy_splits(tmp_path, train_per_class=4, val_per_class=2)  # 16 images: one batch of 16
    ckpt = torchvision_checkpoint(tmp_path / "tv.pth")
    common = ["--checkpoint", str(ckpt), "--arch", "resnet18", "--train-dir", str(train), "--val-dir", str(val),
              "--config", str(REPO / "eval" / "configs" / "embedded_cpu.yaml"), "data.image_size=32",
              "data.workers=0", "linear.epochs=2", "linear.batch_size=16", "features.batch_size=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "eval.linear",
           *common, "--out-dir", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    linear.cli_main([*common, "--out-dir", str(tmp_path / "single")])
    ddp, single = (torch.load(tmp_path / d / CHECKPOINT, weights_only=True) for d in ("ddp", "single"))
    for k in ("weight", "bias"):
        assert torch.allclose(ddp["fc"][k], single["fc"][k], rtol=1e-4, atol=1e-6), k
    assert not torch.equal(single["fc"]["weight"].abs().sum(), torch.tensor(0.0))
    ddp_result = json.loads((tmp_path / "ddp" / "linear.json").read_text())
    assert ddp_result["protocol"]["world_size"] == 2
    # the val features the DDP run cached (gathered from two strided shards) are the single run's, in order
    (ddp_val,) = [torch.load(f, weights_only=True) for f in (tmp_path / "ddp" / "feature_cache").glob("*.pt")]
    (single_val,) = [torch.load(f, weights_only=True) for f in (tmp_path / "single" / "feature_cache").glob("*.pt")]
    assert torch.equal(ddp_val["labels"], single_val["labels"])
    assert torch.allclose(ddp_val["feats"], single_val["feats"], atol=1e-5)
