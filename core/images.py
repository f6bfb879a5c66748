"""Image folders as every stage reads them: ImageFolder with clear errors, safe decoding, bad-image
handling, ImageNet normalisation and the clean evaluation view.

Shared by pretraining (its training set and kNN monitor) and evaluation (kNN, linear probe), so a
file that one stage refuses the other refuses with the same message.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from core.checkpoint_formats import IMAGENET
from core.cli import UserError

# One source: the ImageNet normalisation is also the default input normalisation of checkpoint formats.
IMAGENET_MEAN, IMAGENET_STD = IMAGENET.mean, IMAGENET.std


class BadImageError(UserError):
    """An image file that cannot be decoded."""


def eval_transform(size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> transforms.Compose:
    """Clean view for kNN/linear evaluation: resize to size*256/224, centre crop `size`, normalise with
    the mean/std the checkpoint's format expects (ImageNet's; SimCLR's [0, 1] inputs: mean 0, std 1)."""
    return transforms.Compose([
        transforms.Resize(round(size * 256 / 224)),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def load_rgb(path: str) -> Image.Image:
    """Decode an image fully and convert it to RGB, or raise BadImageError naming the file.

    * Truncated files fail here, not later in a worker (img.load() decodes every byte).
    * The format is read from the content, not the name: a PNG or WebP saved as .jpg decodes as what
      it is, as every other reader of these datasets (torchvision, PIL, OpenCV) does.
    * CMYK, grayscale, palette and RGBA images are converted to RGB.
    * An image above PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS, 89.5 Mpx by default) is
      refused: PIL only warns between 1x and 2x the limit, we make that an error too, because such a
      file in a training set is a corrupt header or a hostile file, and decoding it can exhaust memory.
      Raise Image.MAX_IMAGE_PIXELS in your own launcher if you really train on larger images.
    """
    try:
        if os.path.getsize(path) == 0:
            raise BadImageError(f"image {path} is empty (0 bytes). Remove or replace the file, "
                                "or set data.skip_bad_images=true to skip and count such files")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(path, "rb") as f:
                img = Image.open(f)
                img.load()
                return img.convert("RGB")
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(
            f"image {path} is refused as a decompression bomb ({e}). Remove the file, or set "
            "data.skip_bad_images=true to skip and count such files"
        ) from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, UnidentifiedImageError...
        raise BadImageError(
            f"cannot decode image {path} ({type(e).__name__}: {e}). Remove or replace the file, "
            "or set data.skip_bad_images=true to skip and count such files"
        ) from None


def is_image_file(path: str) -> bool:
    """What the dataset reads: image extensions only, hidden files excluded. Stray files (README.txt,
    .DS_Store, labels.csv) and macOS '._name.jpg' resource forks, which carry an image extension but
    hold no image, are ignored rather than failing the run."""
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def image_folder(root: str | Path, transform=None, skip_bad: bool = False) -> datasets.ImageFolder:
    """torchvision ImageFolder over `root/<class>/*.jpg`, with one clear message for a wrong layout.

    A class folder without images is an error that names it: ImageFolder would otherwise either fail
    with a list of every empty class or, told to allow it, give that class a label no sample carries
    (and a classifier one output too many). With skip_bad, an undecodable image loads as None, for the
    caller's collate function to count and drop."""
    root = Path(root)
    layout = f"expected {root}/<class_name>/<image>.jpg (one sub-folder per class)"
    if not root.is_dir():
        raise UserError(f"dataset dir {root} does not exist; {layout}")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise UserError(f"dataset dir {root} has no usable images (no class sub-folders); {layout}")
    empty = [c for c in classes if not any(is_image_file(os.path.join(dp, n)) for dp, _, ns in
                                           os.walk(root / c, followlinks=True) for n in ns)]
    if empty:
        shown = ", ".join(str(root / c) for c in empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
        raise UserError(f"dataset dir {root} has no usable images in class folder(s) {shown} "
                        f"(extensions {', '.join(IMG_EXTENSIONS)}); add images or remove the folder; {layout}")
    ds = datasets.ImageFolder(str(root), transform=transform, loader=_skipping_loader if skip_bad else load_rgb,
                              is_valid_file=is_image_file)
    return ds


def drop_undecodable(ds: datasets.ImageFolder) -> int:
    """Remove the samples that do not decode (one extra pass over the files); returns how many."""
    good = []
    for path, target in ds.samples:
        try:
            load_rgb(path)
            good.append((path, target))
        except BadImageError:
            pass
    dropped = len(ds.samples) - len(good)
    ds.samples = ds.imgs = good
    ds.targets = [t for _, t in good]
    return dropped


def _skipping_loader(path: str):
    try:
        return load_rgb(path)
    except BadImageError:
        return None  # counted and dropped by the caller's collate function (pretrain.data.collate_skipping)
