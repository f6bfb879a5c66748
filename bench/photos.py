"""ImageNet-sized natural-image JPEGs for the data-path tests and benchmark, with no network.

The photographs come from the files scikit-image ships inside its package (read straight from its
data folder: skimage.data's fetcher would try to download the ones that are not bundled). Each JPEG
is a random crop of 60-100% of a photo's side, resized to ImageNet's typical 500x375 (or 375x500),
saved at quality 90. Deterministic from the seed.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
          "motorcycle_left.png", "retina.jpg", "rocket.jpg")  # the bundled colour photographs


def bundled_photos() -> list[Image.Image]:
    try:
        folder = importlib.resources.files("skimage") / "data"
    except ModuleNotFoundError:
        raise SystemExit("the natural-image JPEGs need scikit-image (the dev extra): pip install -e '.[dev]'") from None
    return [Image.open(folder / name).convert("RGB") for name in PHOTOS]


def write_photo_folder(root: Path, per_photo: int = 4, seed: int = 0, size: tuple[int, int] = (500, 375)) -> Path:
    """root/<photo>/<k>.jpg: per_photo JPEGs per bundled photograph (an ImageFolder, one class per photo)."""
    rng = np.random.default_rng(seed)
    for name, photo in zip(PHOTOS, bundled_photos()):
        d = Path(root) / Path(name).stem
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per_photo):
            w, h = size if rng.random() < 0.75 else size[::-1]  # a quarter portrait, as in ImageNet
            side = rng.uniform(0.6, 1.0)
            cw = min(photo.width, round(photo.width * side))
            ch = min(photo.height, round(cw * h / w))
            cw = round(ch * w / h)
            x0 = int(rng.integers(0, photo.width - cw + 1))
            y0 = int(rng.integers(0, photo.height - ch + 1))
            photo.resize((w, h), Image.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch)).save(d / f"{k:03d}.jpg", quality=90)
    return Path(root)
