"""The one way this project writes a file, and the one "done" marker of a finished stage.

Every file goes through `write_atomic`: a temp file in the target's directory, written, flushed and
fsynced, given the mode the user's umask gives a new file, renamed over the target, then the directory
fsynced. A crash or a kill leaves the old file or the new one, never half of one; a full disk leaves
the old one and says so; teammates on a shared cluster can read what we write (mkstemp alone creates
files at 0600). tests/core/test_files.py walks the code base so that a writer bypassing this module
fails the suite.

Documented exceptions, each written somewhere that is already safe:
  * append-only logs: metrics.jsonl (core/runtime.py), fsynced per record, whose readers skip a torn
    last line; the preemption note (core/preemption.py), a line for pretrain/run.sh read at once;
  * the embedded generator's per-image files (JPEG, VOC XML) inside its private staging directory,
    which becomes visible only by one rename once complete (embedded/generator.py);
  * files written by libraries on our behalf (detectron2's checkpoints, its config.yaml and logs,
    tensorboard's event files).

This module imports nothing heavy: torch and yaml are imported by the helpers that need them.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable

from core.errors import UserError

DONE = "done.json"
_DEFERRED_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2}
# Filesystems that cannot fsync a directory answer with one of these; the file itself is synced.
_NO_DIR_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}


def _read_umask() -> int:
    """The process umask. os.umask can only be read by setting it, so it is set back at once; this
    runs once, at import, before any thread of ours writes files."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


UMASK = _read_umask()
FILE_MODE = 0o666 & ~UMASK  # what open(path, "w") would have given a new file


class WriteError(UserError):
    """A file could not be written; the message names the path, the cause and says the old file is intact."""


@contextmanager
def signals_deferred():
    """Hold interrupt/preemption signals until the block ends, then deliver them in order.

    A handler that exits (SLURM's requeue, Ctrl-C) must not fire inside torch.save, whose zip writer
    then fails. Swapping the Python-level handlers also catches a signal that arrived just before
    the block but whose handler had not run yet. Only the main thread can install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in _DEFERRED_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for s in caught:
            signal.raise_signal(s)


class _RecordingFile:
    """The file handed to write(): keeps the OSError of a failed write. torch's zip writer swallows it
    and reports only "unexpected pos ..." (a full disk would otherwise read as a torch bug)."""

    def __init__(self, f: BinaryIO):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def sync_dir(folder: str | Path) -> None:
    """fsync a directory, so that a rename or a new entry in it survives a power loss."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _NO_DIR_SYNC:
            raise
    finally:
        os.close(fd)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None], what: str = "file") -> Path:
    """write(f) into a temp file in the same dir, fsync, chmod to the umask's mode, rename over `path`,
    fsync the dir. A preemption signal waits until the file is complete. A failed write (disk full,
    quota, read-only or vanished dir) removes the temp file and raises one WriteError naming `path`
    and the cause; the file at `path`, if any, is untouched. `what` names it in that message."""
    path = Path(path)
    tmp, out = None, None
    with signals_deferred():
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                out = _RecordingFile(f)
                write(out)
                f.flush()
                os.fchmod(f.fileno(), FILE_MODE)
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            cause = e if isinstance(e, OSError) else (out.error if out is not None else None)
            if cause is None:
                raise
            code = errno.errorcode.get(cause.errno, "") if cause.errno else ""
            raise WriteError(
                f"cannot write {path}: {cause.strerror or cause}{f' ({code})' if code else ''}; nothing was "
                f"replaced, so the previous {what} there is intact. Free space or choose another output "
                "directory, then re-run to resume"
            ) from None
        try:
            sync_dir(path.parent)
        except OSError as e:
            raise WriteError(f"wrote {path} but could not sync its directory ({e.strerror or e}); "
                             "it may not survive a power loss. Check the filesystem, then re-run") from None
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj, indent: int | None = 2, allow_nan: bool = True, **dumps_kw) -> Path:
    """JSON with a final newline; allow_nan=False refuses NaN/inf (strict JSON) instead of writing them."""
    return write_text(path, json.dumps(obj, indent=indent, allow_nan=allow_nan, **dumps_kw) + "\n")


def write_yaml(path: str | Path, obj) -> Path:
    import yaml

    return write_text(path, yaml.safe_dump(obj, sort_keys=False))


def save_figure(fig, path: str | Path, **savefig_kw) -> Path:
    """A matplotlib figure, rendered into memory (format from the suffix) and then written atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", **savefig_kw)
    return write_bytes(path, buffer.getvalue())


def save_atomic(obj, path: str | Path) -> Path:
    """torch.save, atomically (the argument order is torch.save's)."""
    import torch

    return write_atomic(path, lambda f: torch.save(obj, f), what="checkpoint")


def remove_stale_temp_files(folder: str | Path, name_glob: str = "*") -> list[Path]:
    """Delete the temp files write_atomic leaves when a process is killed (-9) mid-write.

    They hold half a file that nothing will ever read; call at start-up, from one process."""
    stale = sorted(Path(folder).glob(f".{name_glob}.*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# ----------------------------------------------------------------------------- done markers


def done_info(out_dir: str | Path) -> dict:
    """{stage: info} of the stages finished in out_dir ({} when none, or the marker is unreadable)."""
    try:
        info = json.loads((Path(out_dir) / DONE).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def is_done(out_dir: str | Path, stage: str) -> bool:
    return stage in done_info(out_dir)


def mark_done(out_dir: str | Path, stage: str, **info) -> Path:
    """Record `stage` as finished in out_dir/done.json: the very last write of a finished stage, so the
    marker's presence means every other output of that stage is complete.

    One file per output folder, one entry per stage, because several stages share a folder (the eval
    protocols, the pipeline's stages in RUN/). Entries are merged by read-modify-write: call from one
    process (rank 0); two processes finishing in the same folder at the same instant could drop one."""
    entries = done_info(out_dir)
    entries[stage] = {"finished": time.time(), **info}
    return write_json(Path(out_dir) / DONE, entries)


def clear_done(out_dir: str | Path, stage: str) -> None:
    """Forget that `stage` finished (it is about to be redone)."""
    entries = done_info(out_dir)
    if entries.pop(stage, None) is not None:
        write_json(Path(out_dir) / DONE, entries)
