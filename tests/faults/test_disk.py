"""A full disk (ENOSPC) or an unwritable output while saving: one clear error, the previous checkpoint intact."""

import errno
import os

import pytest

import core.files as files_mod
from core.checkpoint import read_checkpoint
from pretrain.loop import LAST
from pretrain.train import cli
from tests.helpers import one_error_line, tiny_overrides


class _FullDisk:
    """A file whose writes fail with ENOSPC after `room` bytes, as the kernel's write(2) does."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data):
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fill_disk_when_writing(monkeypatch, target: str, room: int = 4096):
    """Writes of temp files for `target` (a checkpoint file name) hit a full disk."""
    real = os.fdopen

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) if isinstance(fd, int) else ""
        return _FullDisk(f, room) if name.startswith(f".{target}.") else f

    monkeypatch.setattr(files_mod.os, "fdopen", fdopen)


def _one_error(capsys, overrides) -> str:
    return one_error_line(capsys, lambda: cli(overrides))


def test_disk_full_writing_epoch_checkpoint(tmp_path, tiny_folder, capsys, monkeypatch):
    out = tmp_path / "out"
    fill_disk_when_writing(monkeypatch, "checkpoint_0002.pth.tar")
    err = _one_error(capsys, tiny_overrides(out, tiny_folder))
    assert f"cannot write {out / 'checkpoint_0002.pth.tar'}: No space left on device (ENOSPC)" in err
    assert "previous checkpoint there is intact" in err
    assert read_checkpoint(out / "checkpoint_0001.pth.tar")["epoch"] == 1
    assert not (out / "checkpoint_0002.pth.tar").exists() and not list(out.glob(".*.tmp"))


def test_disk_full_replacing_last_keeps_the_old_one(tmp_path, tiny_folder, capsys, monkeypatch):
    out = tmp_path / "out"
    cli(tiny_overrides(out, tiny_folder, **{"optim.epochs": 1, "train.stop_after_steps": 2}))
    assert read_checkpoint(out / LAST)["global_step"] == 2
    fill_disk_when_writing(monkeypatch, LAST)
    err = _one_error(capsys, tiny_overrides(out, tiny_folder, **{"optim.epochs": 1, "train.save_every_steps": 1}))
    assert f"cannot write {out / LAST}" in err and "ENOSPC" in err
    assert read_checkpoint(out / LAST)["global_step"] == 2  # the resumed run's first save failed: old LAST stays
    assert not list(out.glob(".*.tmp"))


def test_output_dir_becomes_unwritable(tmp_path, tiny_folder, capsys, monkeypatch):
    """The dir checked writable at start-up later refuses new files (permissions changed, read-only
    remount). Root ignores permission bits, so the refusal of mkstemp(2) is injected."""
    out = tmp_path / "out"
    real = files_mod.tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if kwargs.get("prefix", "").startswith(".checkpoint_0002"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real(*args, **kwargs)

    monkeypatch.setattr(files_mod.tempfile, "mkstemp", mkstemp)
    err = _one_error(capsys, tiny_overrides(out, tiny_folder))
    assert f"cannot write {out / 'checkpoint_0002.pth.tar'}: Permission denied (EACCES)" in err
    assert read_checkpoint(out / "checkpoint_0001.pth.tar")["epoch"] == 1


def test_real_full_filesystem(tmp_path):
    """The kernel's own ENOSPC, on a 1 MiB tmpfs (needs root and mount; skipped elsewhere): a second
    600 kB checkpoint does not fit beside the first, and the first stays loadable."""
    import subprocess

    import torch

    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        path = mnt / "checkpoint_0001.pth.tar"
        files_mod.save_atomic({"w": torch.zeros(150_000)}, path)
        with pytest.raises(files_mod.WriteError, match="No space left on device"):
            files_mod.save_atomic({"w": torch.ones(150_000)}, path)
        assert torch.equal(read_checkpoint(path)["w"], torch.zeros(150_000))
        assert [p.name for p in mnt.iterdir()] == [path.name]  # temp file removed
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
