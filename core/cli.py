"""The one command line of every entry point, and the one way it reports a user's mistake.

    python -m STAGE.ENTRY [--config FILE] [--flag VALUE ...] [dotted.key=value ...]    (in any order)

* `--config FILE`: a YAML run config whose `_base_` chain holds every key with its meaning. A
  relative path means the caller's working directory; a bare file name that is not there names a
  preset shipped in the stage's `configs/` folder (`--config imagenet_100ep.yaml`).
* Flags are shorthands for config keys (`--checkpoint X` is `checkpoint=X`); a flag given explicitly
  wins over an override of the same key. The output folder is `out_dir` (`--out-dir`) everywhere.
* `key=value` overrides take YAML values (safe_load: never code).
* A user mistake (unknown key, missing file, value out of range, ...) is one line
  `error: <what is wrong>; <how to fix it>` on stderr and exit status 2: `run()` turns every
  UserError into that line, and argparse's own usage errors take the same form.
* Something the user should know but that is not an error is one line `warning: ...` (`warn()`).
* `--help` shows every option with its default (a flag's default is the default config's value).

This module imports neither torch nor anything heavy, so `--help` answers at once: an entry module
parses first and imports its stage's code after (see pretrain/train.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from core.config import load_yaml_with_bases
from core.errors import UserError  # noqa: F401  (the stages import it from here, with run)


def fail(message: str) -> None:
    """Print `error: message` as one line on stderr and exit 2."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
    sys.exit(2)


def warn(message: str) -> None:
    """Print `warning: message` as one line on stderr: something the user should know, not an error."""
    print("warning: " + " ".join(str(message).split()), file=sys.stderr, flush=True)


def run(main, *args):
    """Call main(*args); a UserError (from any stage) becomes one `error:` line and exit 2."""
    try:
        return main(*args)
    except UserError as e:
        msg = str(e).strip()
        # Errors raised in DataLoader workers arrive wrapped with the worker's traceback: keep the last line.
        if "Original Traceback" in msg:
            msg = msg.splitlines()[-1].split(": ", 1)[-1]
        fail(msg)


@dataclass(frozen=True)
class Flag:
    """`--name VALUE` as a shorthand for the config key `key`."""

    name: str
    key: str
    help: str
    metavar: str = "VALUE"


OUT_DIR = Flag("--out-dir", "out_dir", "output folder (created if needed)", "DIR")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's two-line usage error -> our one line, exit 2
        fail(f"{message}; see {self.prog} --help")


def resolve_config(path: str | Path, presets: Path | None) -> Path:
    """A config path relative to the working directory, or a bare preset name from `presets`."""
    given = Path(path)
    if given.is_file():
        return given
    if presets is not None and given.name == str(path) and (presets / given).is_file():
        return presets / given
    known = f" Presets in {presets}: {', '.join(sorted(p.name for p in presets.glob('*.yaml')))}" if presets else ""
    raise UserError(f"config file not found: {path} (relative paths are taken from the current directory "
                    f"{Path.cwd()}); give an existing YAML file or a preset name.{known}")


def _config_defaults(default_config: str | Path | None, presets: Path | None) -> dict:
    """The default config's values, to show beside the flags in --help (YAML only: still no torch)."""
    try:
        return load_yaml_with_bases(resolve_config(default_config, presets))
    except (UserError, OSError):  # a missing default config is reported when the command runs, not in --help
        return {}


def _dotted(tree: dict, key: str):
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


class Command:
    """The parser of one entry point: `--config`, its flags, `key=value` overrides, optional positionals.

    `overrides=False` leaves out the `key=value` positional (an entry point without a config)."""

    def __init__(self, prog: str, description: str, default_config: str | Path | None = None,
                 presets: Path | None = None, flags: tuple[Flag, ...] = (), epilog: str | None = None,
                 overrides: bool = True):
        self.prog, self.flags, self.presets = prog, flags, presets
        self.default_config = default_config
        self.parser = _Parser(prog=prog, description=description, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        if default_config is not None:
            self.parser.add_argument("--config", default=str(default_config), metavar="FILE",
                                     help=f"YAML run config or preset name (default: {default_config})")
        defaults = _config_defaults(default_config, presets) if flags and default_config is not None else {}
        for flag in flags:
            shown = _dotted(defaults, flag.key)
            default = ("the config's value" if shown is None else "unset (empty in the default config)"
                       if shown == "" else f"{shown!r} from the default config")
            self.parser.add_argument(flag.name, dest=flag.key, metavar=flag.metavar,
                                     help=f"{flag.help} (config key {flag.key}; default: {default})")
        self.with_overrides = overrides
        if overrides:
            self.parser.add_argument("overrides", nargs="*", metavar="key=value",
                                     help="dotted config overrides, e.g. optim.epochs=10 (values are YAML)")

    def add_argument(self, *args, **kwargs):
        """An option that is not a config key (e.g. a stage selector); shown with its default."""
        if "default" in kwargs and "help" in kwargs and kwargs.get("action") not in ("store_true", "store_false"):
            kwargs["help"] += f" (default: {kwargs['default']})"
        return self.parser.add_argument(*args, **kwargs)

    def add_mutually_exclusive_group(self):
        """Options of which at most one may be given (e.g. --from / --only)."""
        return self.parser.add_mutually_exclusive_group()

    def print_help(self, file=None) -> None:
        self.parser.print_help(file)

    def parse(self, argv=None) -> argparse.Namespace:
        """Flags, overrides and options in any order. `ns.overrides` ends with the explicit flags, so they win."""
        ns = self.parser.parse_intermixed_args(argv)
        if not self.with_overrides:
            return ns
        for item in ns.overrides:
            if "=" not in item:
                fail(f"unexpected argument {item!r}: overrides look like dotted.key=value; see {self.prog} --help")
        # JSON-quoted values are valid YAML: a path such as "2024" or "a: b" stays a string
        ns.overrides = list(ns.overrides) + [f"{f.key}={json.dumps(getattr(ns, f.key))}" for f in self.flags
                                             if getattr(ns, f.key) is not None]
        if self.default_config is not None:
            try:
                ns.config = resolve_config(ns.config, self.presets)
            except UserError as e:  # parse() runs before run(): report it the same way here
                fail(str(e))
        return ns


def plain_parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with the one-line usage errors of Command, for an entry point without a run
    config: positional arguments only (transfer/convert_to_d2.py), or a foreign config system
    (transfer/train_det.py takes detectron2's KEY VALUE list)."""
    return _Parser(prog=prog, description=description, epilog=epilog,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
