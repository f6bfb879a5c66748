"""Where each self-supervised method keeps its ResNet backbone in a checkpoint, and how one file is
matched to one of them (PROTOCOL.md section 8).

Each format is one declarative entry: the container key(s) the backbone sits under, the prefix to
strip (or a key mapping), the tensor groups that are knowingly dropped (heads, momentum encoders,
queues, prototypes), the input normalisation the weights expect, the archs it can hold and the
variants it refuses. `detect` tries every entry on a file and returns a `Detection`: the format, the
container, the prefix or mapping, what was kept and dropped, and the normalisation. It needs only
key names (no torch), so `--help` and the config rules can list the formats cheaply; the strict
key-set / shape / finite checks stay in core/checkpoint.py.

A candidate fits a file when, in one container, the prefix selects tensors that are all torchvision
ResNet names (conv1.weight among them) and every other tensor there belongs to a dropped group of
that format. Several fitting candidates are fine when they read the same tensors with the same
normalisation (a bare torchvision file is also a VICReg, BYOL or timm file); the one that explains
more dropped groups names the result. Candidates that read different tensors or need different
normalisations make the file ambiguous: one error line, with the escape hatches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

HATCHES = "--format NAME, --checkpoint-key KEY, --prefix PREFIX"
CONFIG_KEYS = "config keys checkpoint_format, checkpoint_key, checkpoint_prefix"


@dataclass(frozen=True)
class Normalization:
    """What the network expects after ToTensor (pixels in [0, 1]): (x - mean) / std per RGB channel."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {"name": self.name, "mean": list(self.mean), "std": list(self.std)}


IMAGENET = Normalization("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# SimCLR (v1 and v2, TensorFlow) trains on [0, 1] RGB without mean/std; the conversions keep that.
UNIT = Normalization("unit ([0, 1] RGB, no mean/std)", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

# A torchvision ResNet key (fc included: it is dropped after renaming as the format's projector or classifier).
_TV_NAME = re.compile(r"^(conv1\.weight|bn1\.\w+|layer[1-4]\.\d+\.(conv[1-3]\.weight|bn[1-3]\.\w+|"
                      r"downsample\.[01]\.\w+)|fc\..+)$")

# ResNet-looking but not torchvision's (layer5.*, conv4.*): kept in the state so that the strict check
# names the tensor, instead of calling the whole file unrecognised.
_RESNETISH = re.compile(r"^(conv|bn|layer|downsample)\w*\.")


@dataclass(frozen=True)
class Format:
    name: str
    about: str  # one line: whose files, and what was confirmed in that method's code
    containers: tuple  # keys of the top-level dict tried in order; None = the top-level dict itself
    prefixes: tuple = ("",)  # backbone prefixes tried in order ("" = bare torchvision names)
    drops: tuple = ()  # (raw-key prefix, what it is): tensors beside the backbone, knowingly dropped
    fc: str = "classifier"  # what the stripped `fc.*` tensors are in this method (always dropped)
    normalization: Normalization = IMAGENET
    archs: tuple = ()  # archs it can hold; () = any the loader knows
    refuse: tuple = ()  # (regex on raw keys, message): variants that are not a torchvision ResNet
    mapping: Callable[[str], str | None] | None = None  # renaming after the prefix, for non-torchvision names
    mapping_doc: str = ""
    auto: bool = True  # False: a layout identical to another format's, chosen only with --format
    notes: tuple = ()  # said in every report of this format (a warning where it matters)


# ---------------------------------------------------------------- key mappings

_V2_STEM = {"0.weight": "conv1.weight"}
_V2_KEY = re.compile(r"^net\.([1-4])\.blocks\.(\d+)\.(projection\.shortcut\.weight|projection\.bn\.0\.(\w+)|"
                     r"net\.([0-5])\.(weight|0\.(\w+)))$")


def simclr_v2_name(key: str) -> str | None:
    """SimCLRv2-Pytorch's positional ResNet (nn.Sequential of Stem, 4 x Blocks) -> torchvision names.

    net.0.0 = stem conv, net.0.1.0 = its BN; in a bottleneck `net` list, even indices are the convs
    (1x1, 3x3, 1x1) and odd indices BatchNormRelu whose `.0` is the BN; `projection` is the shortcut."""
    if key.startswith("fc."):
        return key
    if key.startswith("net.0."):
        rest = key[len("net.0."):]
        if rest in _V2_STEM:
            return _V2_STEM[rest]
        return "bn1." + rest[len("1.0."):] if rest.startswith("1.0.") else None
    m = _V2_KEY.match(key)
    if not m:
        return None
    stage, block, what = m.group(1), m.group(2), m.group(3)
    base = f"layer{stage}.{block}."
    if what == "projection.shortcut.weight":
        return base + "downsample.0.weight"
    if what.startswith("projection.bn."):
        return base + "downsample.1." + m.group(4)
    k = int(m.group(5))
    if m.group(6) == "weight":
        return base + f"conv{k // 2 + 1}.weight" if k % 2 == 0 else None
    return base + f"bn{(k + 1) // 2}.{m.group(7)}" if k % 2 == 1 else None


_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def children_name(key: str) -> str:
    """`nn.Sequential(*list(resnet.children())[:-1])` (lightly's examples) -> torchvision names;
    named keys pass unchanged."""
    head, _, rest = key.partition(".")
    return f"{_CHILDREN[head]}.{rest}" if head in _CHILDREN else key


# ---------------------------------------------------------------- the registry

_MOMENTUM, _PROJ, _PRED = "momentum encoder", "projector", "predictor"

FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("torchvision", "a plain torchvision ResNet state dict, bare or under state_dict/model, "
           "`module.` from DDP allowed (torchvision's files; pytorch/examples imagenet checkpoints)",
           (None, "state_dict", "model"), ("", "module.")),
    Format("simsiam", "ours and the official SimSiam (facebookresearch/simsiam main_lincls keeps "
           "module.encoder.* minus fc)", ("state_dict",), ("module.encoder.", "encoder."),
           (("module.predictor.", _PRED), ("predictor.", _PRED)), fc=_PROJ),
    Format("moco", "MoCo v1/v2 (facebookresearch/moco main_lincls keeps module.encoder_q.* minus fc)",
           ("state_dict",), ("module.encoder_q.", "encoder_q."),
           (("module.encoder_k.", _MOMENTUM), ("encoder_k.", _MOMENTUM), ("module.queue", "queue"),
            ("queue", "queue")), fc=_PROJ),
    Format("moco_v3", "MoCo v3 ResNet (confirmed: moco-v3 main_lincls keeps module.base_encoder.* minus "
           "fc, which is the projector)", ("state_dict",), ("module.base_encoder.", "base_encoder."),
           (("module.momentum_encoder.", _MOMENTUM), ("momentum_encoder.", _MOMENTUM),
            ("module.predictor.", _PRED), ("predictor.", _PRED)), fc=_PROJ),
    Format("byol", "BYOL converted from JAX (chigur/byol-convert style): flat torchvision names with fc",
           (None, "state_dict"), auto=False,
           notes=("the JAX original pads like TensorFlow ('SAME'); torchvision's padding differs slightly",)),
    Format("swav", "SwAV (facebookresearch/swav): flat or under state_dict, module.-prefixed ResNet beside "
           "projection_head and prototypes; its explicit stem padding equals torchvision's",
           (None, "state_dict"), ("module.", ""),
           (("module.projection_head.", _PROJ), ("module.prototypes", "prototypes"),
            ("projection_head.", _PROJ), ("prototypes", "prototypes"))),
    Format("simclr_v1", "SimCLR v1 converted (tonylins/simclr-converter, confirmed: saves "
           "{'state_dict': model.state_dict()} with the supervised fc; its eval.py feeds [0, 1] inputs "
           "without normalisation)", ("state_dict",), normalization=UNIT, archs=("resnet50",), auto=False),
    Format("simclr_v2", "SimCLR v2 converted (Separius/SimCLRv2-Pytorch, confirmed: saves {'resnet', 'head'}, "
           "a positional nn.Sequential ResNet; sk1 models use selective kernels)", ("resnet",),
           normalization=UNIT, archs=("resnet50",), mapping=simclr_v2_name,
           mapping_doc="simclr_v2 positional: net.0.{0,1.0} -> conv1/bn1, net.{1..4}.blocks.{i}.net.{0,2,4} -> "
                       "conv{1,2,3}, .net.{1,3,5}.0 -> bn{1,2,3}, .projection.{shortcut,bn.0} -> downsample.{0,1}",
           refuse=((r"(^|\.)(main_conv|mixing_conv)\.|^net\.0\.[2-5]\.", "a SimCLR v2 selective-kernel (sk1) model: "
                    "its 3x3 convolutions are selective-kernel blocks and its stem is 3 convolutions, not a "
                    "torchvision ResNet; use an sk0 checkpoint (r50_1x_sk0)"),)),
    Format("barlow_twins", "Barlow Twins (facebookresearch/barlowtwins): bare resnet50.pth, or checkpoint.pth "
           "{model: module.backbone.*, module.projector.*, module.bn.*}", (None, "model"),
           ("", "module.backbone."), (("module.projector.", _PROJ), ("module.bn.", "loss BN (module.bn)"))),
    Format("vicreg", "VICReg (facebookresearch/vicreg): bare resnet50.pth (torchvision names, padded stem), or "
           "the full {model: module.backbone.*, module.projector.*}", (None, "model"), ("", "module.backbone."),
           (("module.projector.", _PROJ),), auto=False),
    Format("dino", "DINO ResNet-50 (confirmed: main_dino saves {'student', 'teacher', ...}, heads as *.head.*); "
           "the teacher is evaluated (dino issue 44); the released file is the flat teacher backbone",
           ("teacher", "student", None), ("module.backbone.", "backbone.", ""),
           (("module.head.", "DINO head"), ("head.", "DINO head"))),
    Format("densecl", "DenseCL (WXinlong/DenseCL, OpenSelfSup): raw {state_dict: backbone.* (mmcv names = "
           "torchvision's), encoder_q/encoder_k, queues}; extracted {state_dict: torchvision names}",
           ("state_dict", None), ("backbone.", ""),
           (("encoder_q.", "encoder_q (the same backbone again + neck)"), ("encoder_k.", _MOMENTUM),
            ("neck.", "neck"), ("queue", "queues"))),
    Format("pixpro", "PixPro (zdaxie/PixPro): {model: module.encoder.*} beside module.encoder_k.* and the heads",
           ("model",), ("module.encoder.",),
           (("module.encoder_k.", _MOMENTUM), ("module.projector_k.", "momentum projector"),
            ("module.projector.", _PROJ), ("module.predictor", _PRED), ("module.value_transform", "PPM"),
            ("module.queue", "queue"))),
    Format("solo_learn", "solo-learn Lightning checkpoint {state_dict: backbone.*, momentum_backbone.*, "
           "projector.*, classifier.*, ...}; the CIFAR variant is arch resnet18_cifar", ("state_dict",),
           ("backbone.",),
           (("momentum_backbone.", _MOMENTUM), ("momentum_projector.", "momentum projector"),
            ("projector.", _PROJ), ("predictor.", _PRED), ("classifier.", "online classifier"),
            ("prototypes", "prototypes"), ("head.", "head"), ("momentum_head.", "momentum head"),
            ("queue", "queue"))),
    Format("lightly", "lightly Lightning checkpoint {state_dict: backbone.*, teacher_backbone.*, "
           "projection_head.*, online_classifier.*}; a backbone saved as Sequential(children) is mapped too",
           ("state_dict",), ("backbone.",),
           (("teacher_backbone.", _MOMENTUM), ("teacher_projection_head.", "momentum projector"),
            ("projection_head.", _PROJ), ("prediction_head.", _PRED), ("online_classifier.", "online classifier")),
           mapping=children_name, mapping_doc="prefix backbone. (Sequential children 0,1,4..7 -> conv1, bn1, layer1..4)"),
    Format("mmselfsup", "mmselfsup / mmpretrain {state_dict: backbone.*, neck.*, head.*, target_net.*}; "
           "torchvision-compatible only with style='pytorch'", ("state_dict",), ("backbone.",),
           (("neck.", "neck"), ("head.", "head"), ("target_net.", _MOMENTUM),
            ("momentum_encoder.", _MOMENTUM), ("queue", "queue"), ("data_preprocessor.", "data preprocessor")),
           refuse=((r"^(module\.)?backbone\.stem\.\d", "a ResNetV1d (deep stem: three 3x3 convolutions, avg-pool "
                    "shortcut) backbone, not a torchvision ResNet; evaluate it with mmpretrain"),
                   (r"^(module\.)?backbone\.(gn1|layer\d\.\d+\.gn\d)\.", "a GroupNorm ResNet, not a BatchNorm "
                    "torchvision ResNet; evaluate it with mmpretrain")),
           notes=("style 'caffe' (stride in the 1x1 conv) cannot be told from the tensors and would load "
                  "with the stride in the wrong conv: this assumes style='pytorch', mmselfsup's default; "
                  "check the config the checkpoint was trained with",)),
    Format("timm", "timm ResNet: flat torchvision-like names with fc", (None, "state_dict"), auto=False),
)}

NAMES = tuple(FORMATS)


@dataclass(frozen=True)
class Choice:
    """The escape hatches: a format name, the container key, the backbone prefix ('' / None: automatic)."""

    format: str | None = None
    key: str | None = None
    prefix: str | None = None

    @classmethod
    def of(cls, format=None, key=None, prefix=None) -> "Choice":
        return cls(format or None, key or None, prefix if prefix not in (None, "") else None)

    def given(self) -> bool:
        return any(v is not None for v in (self.format, self.key, self.prefix))

    def to_dict(self) -> dict:
        return {"format": self.format, "key": self.key, "prefix": self.prefix}


@dataclass
class Detection:
    """What `detect` decided, for the loader (state) and for people (report / to_dict)."""

    format: str
    container: str | None  # None: the top-level dict
    prefix: str
    mapping: str  # "" when only the prefix is stripped
    state: dict  # torchvision backbone names -> tensors, fc dropped
    dropped: dict  # what -> list of raw keys
    normalization: Normalization
    top_level_keys: list
    same_layout: list = field(default_factory=list)  # other formats that read the same tensors
    unread: dict = field(default_factory=dict)  # other top-level containers of tensors: key -> count
    notes: list = field(default_factory=list)
    archs: tuple = ()

    def selection(self) -> dict:
        """Which tensors of the file were read: with the file's sha256 it identifies the weights."""
        return {"format": self.format, "container": self.container, "prefix": self.prefix, "mapping": bool(self.mapping)}

    def to_dict(self) -> dict:
        return {
            "format": self.format, "container": self.container, "prefix": self.prefix, "mapping": self.mapping or None,
            "kept": len(self.state), "kept_examples": sorted(self.state)[:3],
            "dropped": {what: {"count": len(keys), "examples": keys[:3]} for what, keys in self.dropped.items()},
            "dropped_total": sum(len(k) for k in self.dropped.values()),
            "normalization": self.normalization.to_dict(), "same_layout_as": self.same_layout,
            "unread_containers": self.unread, "top_level_keys": self.top_level_keys, "notes": self.notes,
        }

    def report(self) -> str:
        """A few lines for people (stdout of every stage that loads a checkpoint)."""
        where = "the top-level dict" if self.container is None else f"key {self.container!r}"
        how = self.mapping or (f"prefix {self.prefix!r} stripped" if self.prefix else "no prefix")
        lines = [f"checkpoint format: {self.format}" + (f" (same layout as {', '.join(self.same_layout)})"
                                                       if self.same_layout else ""),
                 f"  backbone read from {where}; {how}; {len(self.state)} tensors kept (e.g. "
                 f"{', '.join(sorted(self.state)[:2])})"]
        for what, keys in self.dropped.items():
            lines.append(f"  dropped {len(keys)} {what} tensors (e.g. {', '.join(keys[:2])})")
        for key, count in self.unread.items():
            lines.append(f"  not read: {count} tensors under {key!r}")
        n = self.normalization
        lines.append(f"  input normalisation: {n.name}, mean {list(n.mean)}, std {list(n.std)}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _is_tensor(v) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype")


def _tensors(d) -> dict:
    return {k: v for k, v in d.items() if isinstance(k, str) and _is_tensor(v)} if isinstance(d, dict) else {}


@dataclass
class _Candidate:
    fmt: Format
    container: str | None
    prefix: str
    state: dict
    raw: dict  # torchvision name -> raw key (what makes two candidates "the same tensors")
    dropped: dict
    unexplained: list
    fits: bool

    @property
    def rank(self) -> tuple:
        """Better first: nothing left unexplained, then more of the file explained by named groups."""
        return bool(self.unexplained), -(len(self.dropped) - bool(self.unexplained))


def _try(fmt: Format, tensors: dict, container, prefix: str, explicit: bool) -> _Candidate:
    dropped: dict[str, list] = {}
    state, raw, unexplained = {}, {}, []
    for key in sorted(tensors):
        what = next((w for p, w in fmt.drops if key.startswith(p)), None)  # heads first: swav's sit under module.
        if what is not None:
            dropped.setdefault(what, []).append(key)
            continue
        if key.startswith(prefix):
            name = key[len(prefix):]
            name = fmt.mapping(name) if fmt.mapping else name
            if name is None or not _TV_NAME.match(name):
                # under a real prefix (or a given layout) an odd name is the backbone's: the strict check names it
                if name is not None and (explicit or (prefix and _RESNETISH.match(name))):
                    state[name], raw[name] = tensors[key], key  # the strict check names it
                else:
                    unexplained.append(key)
                continue
            if name.startswith("fc."):
                dropped.setdefault(f"{fmt.fc} (fc)", []).append(key)
            else:
                state[name], raw[name] = tensors[key], key
            continue
        unexplained.append(key)
    fits = "conv1.weight" in state and (explicit or not unexplained)
    if explicit and unexplained:
        dropped["other (not in the backbone; kept out because a layout was given)"] = unexplained
    return _Candidate(fmt, container, prefix, state, raw, dropped, unexplained, fits)


def _refusals(obj: dict, source: str) -> None:
    """Variants that share a format's container but are not a torchvision ResNet: refused by name."""
    from core.errors import CheckpointError

    for fmt in FORMATS.values():
        keys = [k for c in fmt.containers if c is not None for k in _tensors(obj.get(c))]
        for pattern, message in fmt.refuse:
            hit = next((k for k in keys if re.search(pattern, k)), None)
            if hit is not None:
                raise CheckpointError(f"{source}: {message} (found tensor {hit}); the {fmt.name} layout "
                                      "cannot be loaded as a torchvision ResNet")


def detect(obj: dict, source: str = "<dict>", choice: Choice = Choice()) -> Detection:
    """Match `obj` (a loaded checkpoint) to one format; CheckpointError (one line) when none or several fit."""
    from core.errors import CheckpointError

    if choice.format is not None and choice.format not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {choice.format!r}; choose one of {', '.join(NAMES)} "
                              f"(python -m core.inspect_checkpoint FILE shows what a file holds)")
    top = list(obj)
    _refusals(obj, source)
    if choice.key is not None and not isinstance(obj.get(choice.key), dict):
        raise CheckpointError(f"{source}: no dict of tensors under key {choice.key!r}; its top-level keys are "
                              f"{_shown(top)}; pass --checkpoint-key with one of them")
    explicit = choice.given()
    # formats with another's exact layout (auto=False) are read only when named
    fmts = [FORMATS[choice.format]] if choice.format else [f for f in FORMATS.values() if f.auto]
    candidates, fitting = [], []
    for fmt in fmts:
        containers = (choice.key,) if choice.key is not None else fmt.containers
        prefixes = (choice.prefix,) if choice.prefix is not None else fmt.prefixes
        for container in containers:
            tensors = _tensors(obj if container is None else obj.get(container))
            if not tensors:
                continue
            tried = [_try(fmt, tensors, container, p, explicit) for p in prefixes]
            candidates += tried
            best = next((c for c in tried if c.fits), None)
            if best is not None:  # a format's first fitting container wins (DINO: the teacher)
                fitting.append(best)
                break
    if not fitting:
        raise CheckpointError(_unknown_message(source, obj, top, candidates, explicit))
    fitting.sort(key=lambda c: c.rank)  # stable: registry order among equals
    chosen = fitting[0]
    differ = [c for c in fitting[1:] if c.raw != chosen.raw or c.fmt.normalization != chosen.fmt.normalization]
    if differ:
        names = ", ".join(f"{c.fmt.name} ({_where(c.container)}, prefix {c.prefix!r}, {c.fmt.normalization.name})"
                          for c in [chosen, *differ][:4])
        raise CheckpointError(f"{source}: ambiguous checkpoint layout: it reads as {names}, which give different "
                              f"weights or input normalisation; top-level keys {_shown(top)}. Say which with "
                              f"{HATCHES} ({CONFIG_KEYS})")
    return _detection(chosen, fitting, obj, top)


def _detection(chosen: _Candidate, fitting, obj, top) -> Detection:
    fmt = chosen.fmt
    same = [c.fmt.name for c in fitting[1:]]
    tensors = _tensors(obj if chosen.container is None else obj[chosen.container])
    for f in FORMATS.values():  # the formats read only by name that would read this file alike
        if not f.auto and f is not fmt and chosen.container in f.containers and chosen.prefix in f.prefixes:
            alike = _try(f, tensors, chosen.container, chosen.prefix, False)
            if alike.fits and alike.raw == chosen.raw:
                same.append(f.name)
    notes = list(fmt.notes)
    other_norm = [n for n in same if FORMATS[n].normalization != fmt.normalization]
    if other_norm:
        notes.append(f"a {', '.join(other_norm)} file has this same layout but expects "
                     f"{FORMATS[other_norm[0]].normalization.name} inputs: if it is one, pass --format {other_norm[0]}")
    unread = {k: len(_tensors(v)) for k, v in obj.items()
              if k != chosen.container and isinstance(v, dict) and _tensors(v)}
    if fmt.name == "dino" and chosen.container == "teacher" and "student" in unread:
        notes.append("the teacher is evaluated (DINO's choice); --checkpoint-key student reads the student")
    return Detection(fmt.name, chosen.container, chosen.prefix, fmt.mapping_doc if fmt.mapping else "",
                     chosen.state, chosen.dropped, fmt.normalization, top, same, unread, notes, fmt.archs)


def _where(container) -> str:
    return "top level" if container is None else f"key {container!r}"


def _shown(keys, n: int = 8) -> str:
    return "[" + ", ".join(map(str, keys[:n])) + (f", ... {len(keys) - n} more" if len(keys) > n else "") + "]"


def _unknown_message(source, obj, top, candidates, explicit) -> str:
    near = [c for c in candidates if c.state]
    near.sort(key=lambda c: ("conv1.weight" not in c.state, len(c.unexplained), -len(c.state)))
    seen, closest = set(), []
    for c in near:
        if c.fmt.name in seen:
            continue
        seen.add(c.fmt.name)
        why = (f"{len(c.unexplained)} tensors outside its layout, e.g. {c.unexplained[0]}" if c.unexplained
               else "no conv1.weight under its prefix")
        closest.append(f"{c.fmt.name} ({_where(c.container)}, prefix {c.prefix!r}: {why})")
    inner = next((k for k in ("state_dict", "model", *obj) if _tensors(obj.get(k))), None)
    sample = list(_tensors(obj.get(inner) if inner else obj))[:3]
    what = "the given layout does not fit" if explicit else "unrecognised checkpoint layout"
    return (f"{source}: {what}: top-level keys {_shown(top)}" + (f", tensors under {inner!r} e.g. {sample}" if inner
                                                                   else f", e.g. {sample}")
            + (f"; closest formats: {'; '.join(closest[:3])}" if closest else "; no format comes close")
            + f". Say where the backbone is with {HATCHES} ({CONFIG_KEYS}); formats: {', '.join(NAMES)}")


def random_detection(arch: str) -> Detection:
    """The 'random' backbone: no file, ImageNet normalisation (the baseline is trained like the others)."""
    return Detection("random", None, "", "", {}, {}, IMAGENET, [], archs=())
