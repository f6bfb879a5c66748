"""Our checkpoints are the official format: the official linear-eval rule loads them, and resume is exact."""

import torch
import torchvision

from core.checkpoint import epoch_checkpoints, read_checkpoint
from pretrain.loop import LAST, main
from tests.helpers import tiny_config


def test_official_format_and_linear_eval_loading_rule(tmp_path, tiny_folder):
    out = tmp_path / "run"
    main(tiny_config(out, tiny_folder, **{"arch": "resnet50", "optim.epochs": 1, "optim.batch_size": 4,
                                           "model.dim": 2048, "model.pred_dim": 512}))
    assert [p.name for p in epoch_checkpoints(out)] == ["checkpoint_0001.pth.tar"]
    ck = read_checkpoint(out / "checkpoint_0001.pth.tar")
    assert {"epoch", "arch", "state_dict", "optimizer"} <= set(ck) and ck["epoch"] == 1 and ck["arch"] == "resnet50"
    assert {"config", "git_revision", "rng"} <= set(ck)
    sd = ck["state_dict"]
    assert "module.encoder.conv1.weight" in sd and "module.encoder.layer1.0.bn3.weight" in sd
    assert {k.rsplit(".", 1)[0] for k in sd if k.startswith("module.predictor.")} == {f"module.predictor.{i}" for i in (0, 1, 3)}
    # The official main_lincls rule: keep module.encoder.* except the projector fc, strip, load non-strictly.
    kept = {k[len("module.encoder."):]: v for k, v in sd.items()
            if k.startswith("module.encoder.") and not k.startswith("module.encoder.fc")}
    net = torchvision.models.resnet50()
    msg = net.load_state_dict(kept, strict=False)
    assert set(msg.missing_keys) == {"fc.weight", "fc.bias"} and not msg.unexpected_keys
    assert torch.equal(net.layer4[2].conv3.weight, sd["module.encoder.layer4.2.conv3.weight"])


def _final_state(out):
    return read_checkpoint(out / "checkpoint_0002.pth.tar")


def test_resume_mid_epoch_is_exact(tmp_path, tiny_folder):
    # 36 images, batch 8 -> 4 steps/epoch; 2 epochs = 8 steps. Stop after 5 (inside epoch 2) and resume.
    straight = tmp_path / "straight"
    main(tiny_config(straight, tiny_folder))
    resumed = tmp_path / "resumed"
    main(tiny_config(resumed, tiny_folder, **{"train.stop_after_steps": 5}))
    stopped = read_checkpoint(resumed / LAST)
    assert (stopped["epoch"], stopped["step_in_epoch"], stopped["global_step"]) == (1, 1, 5)
    assert not (resumed / "checkpoint_0002.pth.tar").exists()
    main(tiny_config(resumed, tiny_folder))
    a, b = _final_state(straight), _final_state(resumed)
    assert a["global_step"] == b["global_step"] == 8
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    # a run that already finished resumes into nothing and changes nothing
    mtime = (resumed / "checkpoint_0002.pth.tar").stat().st_mtime_ns
    main(tiny_config(resumed, tiny_folder))
    assert (resumed / "checkpoint_0002.pth.tar").stat().st_mtime_ns == mtime


def test_resume_at_epoch_boundary_is_exact(tmp_path, tiny_folder):
    straight = tmp_path / "straight"
    main(tiny_config(straight, tiny_folder))
    resumed = tmp_path / "resumed"
    main(tiny_config(resumed, tiny_folder, **{"optim.epochs": 2, "train.stop_after_steps": 4}))
    main(tiny_config(resumed, tiny_folder))
    a, b = _final_state(straight), _final_state(resumed)
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())


def test_views_do_not_depend_on_worker_count(tmp_path, tiny_folder):
    a, b = tmp_path / "w0", tmp_path / "w2"
    main(tiny_config(a, tiny_folder, **{"optim.epochs": 1, "train.stop_after_steps": 2}))
    main(tiny_config(b, tiny_folder, **{"optim.epochs": 1, "train.stop_after_steps": 2, "data.workers": 2}))
    sa, sb = read_checkpoint(a / LAST)["state_dict"], read_checkpoint(b / LAST)["state_dict"]
    assert all(torch.equal(v, sb[k]) for k, v in sa.items())


def test_keep_checkpoints_deletes_only_older_epochs(tmp_path, tiny_folder):
    out = tmp_path / "run"
    main(tiny_config(out, tiny_folder, **{"optim.epochs": 3, "train.keep_checkpoints": 2}))
    assert [p.name for p in epoch_checkpoints(out)] == ["checkpoint_0002.pth.tar", "checkpoint_0003.pth.tar"]
    assert read_checkpoint(out / "checkpoint_0003.pth.tar")["epoch"] == 3
