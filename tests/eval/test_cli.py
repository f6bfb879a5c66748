"""The four entry points end to end on a toy ImageFolder: JSON results carrying their whole protocol,
and one clear line (exit 2) for each kind of bad input."""

import json

import pytest

from eval import all as eval_all
from eval import fast_probe, knn, linear
from tests.helpers import COLOURS, REPO, solid_colour_folder, toy_splits, torchvision_checkpoint


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    train, val = toy_splits(tmp, train_per_class=4, val_per_class=2)
    return tmp, train, val, torchvision_checkpoint(tmp / "tv.pth")


def _argv(tmp, train, val, ckpt, out="out", *extra):
    return ["--config", str(REPO / "eval" / "configs" / "embedded_cpu.yaml"), "--checkpoint", str(ckpt),
            "--arch", "resnet18", "--train-dir", str(train), "--val-dir", str(val), "--out-dir", str(tmp / out),
            "data.image_size=32", "data.workers=0", "knn.grid=[[4,0.2],[20,0.07]]", "linear.epochs=2",
            "linear.batch_size=16", "fast_probe.l2_grid=[0.01]", "fast_probe.max_iter=20", *extra]


def test_all_writes_every_result_with_its_protocol(toy):
    tmp, train, val, ckpt = toy
    eval_all.cli_main(_argv(tmp, train, val, ckpt))
    out = tmp / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint"]["kind"] == "torchvision" and len(summary["checkpoint"]["sha256"]) == 64
    headline = summary["headline"]
    assert {"knn_top1 (k=4, T=0.2)", "knn_top1 (k=20, T=0.07)", "fast_probe_top1", "fast_minus_official_top1"} <= set(headline)
    for name in ("knn", "linear", "fast_probe"):
        result = json.loads((out / f"{name}.json").read_text())
        p = result["protocol"]
        assert p["checkpoint"]["path"] == str(ckpt.resolve()) and p["checkpoint"]["kind"] == "torchvision"
        assert p["layer"] == "pool5" and p["seed"] == 0 and p["num_classes"] == 4 and p["feature_dim"] == 512
        assert "CenterCrop(size=(32, 32))" in p["val_transform"]
    knn_result = json.loads((out / "knn.json").read_text())
    assert [(r["k"], r["T"]) for r in knn_result["knn"]] == [(4, 0.2), (20, 0.07)]
    assert all({"top1", "top5"} <= set(r) for r in knn_result["knn"])
    lin = json.loads((out / "linear.json").read_text())
    assert (lin["protocol"]["optimizer"], lin["protocol"]["epochs"], lin["protocol"]["batch_size"]) == ("lars", 2, 16)
    assert set(lin["linear"]) == {"last_epoch", "best_epoch"}
    fast = json.loads((out / "fast_probe.json").read_text())
    assert fast["official_probe"]["official_last_epoch_top1"] == lin["linear"]["last_epoch"]["top1"]
    assert fast["official_probe"]["gap_top1"] == pytest.approx(fast["fast_probe"]["top1"] - lin["linear"]["last_epoch"]["top1"])
    # one feature pass per split for everything: kNN extracted, the probes reused
    assert not knn_result["features"]["train"]["cached"] and fast["features"]["train"][0]["cached"] is False
    assert len(fast["features"]["train"]) == 2  # the centre crop and the default one augmented view
    assert len(list((out / "feature_cache").glob("*.pt"))) == 3


def _error_line(entry, argv, capsys):
    with pytest.raises(SystemExit) as e:
        entry.cli_main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_input_is_one_line(toy, capsys):
    tmp, train, val, ckpt = toy
    msg = _error_line(knn, _argv(tmp, train, tmp / "nope", ckpt), capsys)
    assert "nope" in msg and "does not exist" in msg
    msg = _error_line(linear, _argv(tmp, train, val, tmp / "missing.pth"), capsys)
    assert "checkpoint not found" in msg and "missing.pth" in msg
    (tmp / "garbage.pth").write_bytes(b"not a checkpoint")
    assert "cannot read checkpoint" in _error_line(fast_probe, _argv(tmp, train, val, tmp / "garbage.pth"), capsys)
    assert "resnet50" in _error_line(knn, _argv(tmp, train, val, ckpt) + ["--arch", "resnet50"], capsys)
    assert "unknown config key" in _error_line(knn, _argv(tmp, train, val, ckpt, "out", "knn.kk=3"), capsys)
    assert "has no usable images" in _error_line(knn, _argv(tmp, train, train / "colour0", ckpt), capsys)
    three = solid_colour_folder(tmp / "val3", 1, colours=COLOURS[:3])
    assert "different classes" in _error_line(knn, _argv(tmp, train, three, ckpt), capsys)
    no_ckpt = [a for a in _argv(tmp, train, val, ckpt) if a not in ("--checkpoint", str(ckpt))]
    assert "no checkpoint given" in _error_line(eval_all, no_ckpt, capsys)

