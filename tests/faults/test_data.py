"""Bad image data: one clear message naming the file, or skipped and counted when the user chose
skipping; odd but valid images are converted; stray files are ignored."""

import json

import numpy as np
import pytest
from PIL import Image

from core.images import BadImageError, drop_undecodable, image_folder, load_rgb
from pretrain.loop import main
from pretrain.train import cli
from tests.helpers import tiny_config, tiny_overrides


def _pixels(size=40, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)


def test_truncated_and_zero_byte_files_are_named(tmp_path):
    Image.fromarray(_pixels()).save(tmp_path / "good.jpg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((tmp_path / "good.jpg").read_bytes()[:300])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(BadImageError, match=f"cannot decode image {truncated}.*skip_bad_images"):
        load_rgb(str(truncated))
    with pytest.raises(BadImageError, match=rf"image {empty} is empty \(0 bytes\)"):
        load_rgb(str(empty))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_png_and_webp_named_jpg_decode_by_content(tmp_path, fmt):
    path = tmp_path / "really_not_a.jpg"
    Image.fromarray(_pixels()).save(path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    img = load_rgb(str(path))
    assert img.mode == "RGB" and img.size == (40, 40)
    assert np.array_equal(np.asarray(img), _pixels())  # lossless formats: the exact pixels


@pytest.mark.parametrize("mode", ["CMYK", "L", "P", "RGBA", "I;16"])
def test_cmyk_grayscale_and_other_modes_become_rgb(tmp_path, mode):
    path = tmp_path / f"{mode.replace(';', '')}.{'jpg' if mode in ('CMYK', 'L') else 'png'}"
    Image.fromarray(_pixels()).convert(mode if mode != "I;16" else "L").convert(mode).save(path)
    img = load_rgb(str(path))
    assert img.mode == "RGB" and img.size == (40, 40)


def test_decompression_bomb_is_refused_and_named(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the default is 89.5 Mpx; tiny files stand in
    warn_zone, over = tmp_path / "warn.png", tmp_path / "bomb.png"
    Image.fromarray(_pixels(40)).save(warn_zone)  # 1600 px: between 1x and 2x, where PIL only warns
    Image.fromarray(_pixels(64)).save(over)  # 4096 px: PIL's own DecompressionBombError
    for path in (warn_zone, over):
        with pytest.raises(BadImageError, match=f"image {path} is refused as a decompression bomb"):
            load_rgb(str(path))


def test_empty_class_dir_is_named_and_stray_files_ignored(tmp_path):
    root = tmp_path / "train"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(_pixels(seed=i)).save(root / c / f"{i}.jpg")
    for stray in ("a/README.txt", "a/.DS_Store", "b/._0.jpg", "b/labels.csv", "notes.md"):
        (root / stray).write_bytes(b"\x00\x05\x16\x07 not an image")
    ds = image_folder(root)
    assert len(ds) == 4 and ds.classes == ["a", "b"]
    assert all(not p.endswith((".txt", ".DS_Store", "._0.jpg", ".csv")) for p, _ in ds.samples)
    (root / "c").mkdir()
    (root / "c" / "Thumbs.db").write_bytes(b"x")
    with pytest.raises(Exception, match=rf"no usable images in class folder\(s\) {root / 'c'}"):
        image_folder(root)


def _with_bad_files(folder):
    bad = {"truncated": folder / "class0" / "003.jpg", "empty": folder / "class1" / "004.jpg",
           "bomb": folder / "class2" / "005.jpg"}
    bad["truncated"].write_bytes(bad["truncated"].read_bytes()[:200])
    bad["empty"].write_bytes(b"")
    Image.fromarray(_pixels(400)).save(bad["bomb"], format="PNG")  # 160 kpx, above the limit set below
    return bad


def test_training_names_the_bad_file_on_the_cli(tmp_path, tiny_folder, capsys):
    bad = _with_bad_files(tiny_folder)
    with pytest.raises(SystemExit) as exc:
        cli(tiny_overrides(tmp_path / "out", tiny_folder, **{"optim.epochs": 1}))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and any(str(p) in lines[0] for p in bad.values()) and "Traceback" not in err


def test_training_skips_and_counts_bad_files(tmp_path, tiny_folder, monkeypatch):
    bad = _with_bad_files(tiny_folder)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    assert drop_undecodable(image_folder(tiny_folder)) == len(bad)
    out = tmp_path / "out"
    # batch 6 divides the 36 images: every image is met once in the epoch
    main(tiny_config(out, tiny_folder, **{"data.skip_bad_images": True, "optim.epochs": 1, "optim.batch_size": 6}))
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["skipped_images"] == 3
