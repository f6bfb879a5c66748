"""torchvision ResNet-50 backbone keys -> detectron2 R50-C4 weights (PROTOCOL.md section 5).

The input is whatever the shared loader `core.checkpoint.load_backbone_detected` accepts (every format
of core/checkpoint_formats.py, detected or named by a `Choice`, and "random"); that loader already
strips the prefixes or maps the keys, drops heads, momentum encoders and `fc.*`, and checks the key
set against a ResNet-50. The format's input normalisation travels with the result: detectron2 must
normalise its 0-255 pixels the same way (transfer/d2_model.py pixel_options). Here we only rename
and serialise:

    conv1.weight                  -> stem.conv1.weight
    bn1.*                         -> stem.conv1.norm.*
    layer1..layer4                -> res2..res5
    layerN.i.bnK.*                -> resM.i.convK.norm.*
    layerN.i.downsample.0.weight  -> resM.i.shortcut.weight
    layerN.i.downsample.1.*       -> resM.i.shortcut.norm.*

The file is a pickle of `{"model": {name: np.ndarray}, "__author__": str, "matching_heuristics": True}`:
detectron2's DetectionCheckpointer then matches keys by suffix, which is how `res5.*` lands in the C4
model's `roi_heads.res5.*`. Only numpy arrays and plain Python types go in (no torch objects), so
the file loads without torch and cannot carry code beyond numpy's own reconstructors.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import torch

from core.checkpoint import CheckpointError, load_backbone_detected
from core.checkpoint_formats import Choice
from core.files import write_atomic

ARCH = "resnet50"  # the C4 recipe is defined for ResNet-50 only
_LAYER_RE = re.compile(r"^layer([1-4])$")
_BN_RE = re.compile(r"^bn([1-3])$")


def d2_name(tv_key: str) -> str:
    """Rename one torchvision ResNet key to detectron2's ResNet naming."""
    parts = tv_key.split(".")
    if not _LAYER_RE.match(parts[0]):
        parts = ["stem", *parts]  # conv1 / bn1 of the stem
    out = []
    i = 0
    while i < len(parts):
        p = parts[i]
        if m := _LAYER_RE.match(p):
            out.append(f"res{int(m.group(1)) + 1}")
        elif m := _BN_RE.match(p):
            out += [f"conv{m.group(1)}", "norm"]
        elif p == "downsample":
            # downsample.0 is the 1x1 projection conv, downsample.1 its BN
            index = parts[i + 1]
            if index not in ("0", "1"):
                raise ValueError(f"unexpected downsample index in {tv_key!r}")
            out += ["shortcut"] if index == "0" else ["shortcut", "norm"]
            i += 1
        else:
            out.append(p)
        i += 1
    return ".".join(out)


def to_d2_state(backbone_state: dict[str, torch.Tensor]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Renamed numpy copies of a torchvision backbone state; also the names of filled-in BN counters.

    Some exports (the classic torchvision ImageNet file among them) lack the BN `num_batches_tracked`
    counters. They are written as 0 so that every buffer of the detectron2 model receives a value;
    the counter is unused by BN with a fixed momentum, so 0 changes nothing numerically.
    """
    model: dict[str, np.ndarray] = {}
    for key, value in backbone_state.items():
        if key.startswith("fc."):
            raise ValueError(f"classifier/projector tensor {key!r} must be dropped before conversion")
        model[d2_name(key)] = value.detach().cpu().numpy().copy()
    filled = []
    for key in list(model):
        if key.endswith(".running_var"):
            counter = key[: -len("running_var")] + "num_batches_tracked"
            if counter not in model:
                model[counter] = np.zeros((), dtype=np.int64)
                filled.append(counter)
    return model, filled


def write_d2_weights(model: dict[str, np.ndarray], path: str | Path, author: str) -> Path:
    """Pickle the detectron2 weight dict atomically (temp file + rename)."""
    path = Path(path)
    if path.suffix != ".pkl":
        # detectron2 reads .pkl as a pickle of numpy arrays and anything else as a torch file.
        raise CheckpointError(f"output {path} must end in .pkl (detectron2 picks the reader by extension)")
    for k, v in model.items():
        if not isinstance(v, np.ndarray):
            raise TypeError(f"{k}: only numpy arrays go into the detectron2 file, got {type(v).__name__}")
    payload = {"model": model, "__author__": str(author), "matching_heuristics": True}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL))
    return path


# The only globals a weight file of numpy arrays needs (protocol 2 and protocol 5 pickles, numpy 1.x
# and 2.x module names). pickle.load, which detectron2's DetectionCheckpointer uses for .pkl, would
# import and call anything the file names: os.system included.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("collections", "OrderedDict"),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a file of numpy weights never needs "
                                     "(a pickle that carries code?)")


def read_d2_weights(path: str | Path) -> dict:
    """Read a detectron2 .pkl weight file allowing only numpy arrays and plain types; CheckpointError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"detectron2 weights not found: {path}")
    try:
        with open(path, "rb") as f:
            data = _ArraysOnlyUnpickler(f, encoding="latin1").load()
    except Exception as e:  # UnpicklingError, EOFError (truncated), ...
        raise CheckpointError(f"cannot read detectron2 weights {path}: {type(e).__name__}: {e}. Loading is "
                              "restricted to numpy arrays; re-create the file with transfer/convert_to_d2.py") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"detectron2 weights {path} hold a {type(data).__name__}, expected a dict")
    return data


def load_resnet50_state(source: str | Path, seed: int = 0, choice: Choice | None = None):
    """(state, Detection) from the shared loader, with the refusal message phrased for this stage."""
    try:
        return load_backbone_detected(source, arch=ARCH, seed=seed, choice=choice)
    except CheckpointError as e:
        raise CheckpointError(f"{e}. The detectron2 R50-C4 transfer needs a ResNet-50 backbone") from None


def convert(source: str | Path, out: str | Path, seed: int = 0, choice: Choice | None = None) -> dict:
    """Convert `source` (a checkpoint path or "random") into a detectron2 .pkl at `out`.

    Returns a summary: kind (the format), the detection, the input normalisation, the torchvision
    state used (for verification), tensor count, filled counters.
    """
    state, detection = load_resnet50_state(source, seed, choice)
    kind = detection.format
    model, filled = to_d2_state(state)
    origin = f"seed {seed}" if kind == "random" else str(Path(source).resolve())
    norm = detection.normalization
    write_d2_weights(model, out, author=f"simsiam-transfer convert_to_d2 ({kind}: {origin}; input normalisation "
                                        f"{norm.name} mean {list(norm.mean)} std {list(norm.std)})")
    return {"kind": kind, "detection": detection, "normalization": norm, "tv_state": state,
            "num_tensors": len(model), "filled_counters": filled, "out": Path(out)}
