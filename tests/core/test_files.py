"""core/files.py: every file is fsynced with its directory, gets the umask's mode, fails cleanly, and
no module writes a file behind the writer's back; the done markers of finished stages."""

from __future__ import annotations

import ast
import errno
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from core import files
from core.files import WriteError
from tests.helpers import REPO

PROJECT_DIRS = ("core", "pretrain", "eval", "transfer", "pipeline", "embedded", "bench")


@pytest.fixture
def fsynced(monkeypatch) -> list[Path]:
    """Record the path of every file or directory os.fsync is called on."""
    seen: list[Path] = []
    real = os.fsync

    def fsync(fd):
        seen.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def assert_synced(seen: list[Path], path: Path) -> None:
    """The file was fsynced (as its temp file, which is renamed over it) and so was its directory."""
    assert any(p.parent == path.parent and p.name.startswith(f".{path.name}.") for p in seen), seen
    assert path.parent in seen, seen


def _writers(tmp_path: Path):
    """(path, write) of each helper of core.files and each project writer that goes through it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from core.config import dump_config
    from pipeline.report import save_plot
    from transfer.convert import write_d2_weights
    from transfer.trials import write_json as trials_json

    def figure():
        fig, ax = plt.subplots(figsize=(1, 1))
        ax.plot([0, 1])
        return fig

    return {
        "bytes": (tmp_path / "a.bin", lambda p: files.write_bytes(p, b"\x00\x01")),
        "text": (tmp_path / "a.txt", lambda p: files.write_text(p, "x\n")),
        "json": (tmp_path / "a.json", lambda p: files.write_json(p, {"a": 1})),
        "yaml": (tmp_path / "a.yaml", lambda p: files.write_yaml(p, {"a": 1})),
        "figure": (tmp_path / "a.png", lambda p: files.save_figure(figure(), p)),
        "torch": (tmp_path / "a.pth", lambda p: files.save_atomic({"w": torch.zeros(2)}, p)),
        "done": (tmp_path / files.DONE, lambda p: files.mark_done(p.parent, "stage")),
        "dump_config": (tmp_path / "c.yaml", lambda p: dump_config({"a": 1}, p)),
        "trials_json": (tmp_path / "t.json", lambda p: trials_json({"AP": float("nan")}, p)),
        "d2_weights": (tmp_path / "w.pkl", lambda p: write_d2_weights({"x": np.zeros(2)}, p, "test")),
        "report_plot": (tmp_path / "r.png", lambda p: save_plot(figure(), p)),
    }


@pytest.mark.parametrize("kind", ["bytes", "text", "json", "yaml", "figure", "torch", "done", "dump_config",
                                  "trials_json", "d2_weights", "report_plot"])
def test_every_writer_fsyncs_the_file_and_its_directory(tmp_path, fsynced, kind):
    path, write = _writers(tmp_path)[kind]
    write(path)
    assert path.is_file() and path.stat().st_size > 0
    assert_synced(fsynced, path)
    assert not list(tmp_path.glob(".*.tmp"))


def test_metrics_log_appends_and_fsyncs_each_record(tmp_path, fsynced):
    from core.runtime import MetricsLogger

    log = MetricsLogger(tmp_path, tensorboard=False)
    log.log({"epoch": 1}, 1)
    log.log({"epoch": 2}, 2)
    assert fsynced == [tmp_path / "metrics.jsonl"] * 2
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [{"epoch": 1}, {"epoch": 2}]


def test_trials_json_keeps_nan_as_null(tmp_path):
    from transfer.trials import write_json

    path = write_json({"AP": float("nan"), "v": [1.0, float("inf")]}, tmp_path / "sub" / "r.json")
    assert json.loads(path.read_text()) == {"AP": None, "v": [1.0, None]}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    """A checkpoint, a converted detectron2 .pkl and a text file, in a process started with `umask`
    (the umask is read once, at import)."""
    script = textwrap.dedent(f"""
        import os, sys
        os.umask({umask:#o})
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np, torch
        from core.files import save_atomic, write_text
        from transfer.convert import write_d2_weights
        out = {str(tmp_path)!r}
        save_atomic({{"w": torch.zeros(2)}}, os.path.join(out, "checkpoint_0001.pth.tar"))
        write_d2_weights({{"x": np.zeros(2)}}, os.path.join(out, "converted.pkl"), "test")
        write_text(os.path.join(out, "result.json"), "{{}}")
        print(oct(os.umask({umask:#o})))  # the umask was left as it was
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == oct(umask)
    for name in ("checkpoint_0001.pth.tar", "converted.pkl", "result.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_failed_write_names_path_and_cause_and_keeps_the_old_file(tmp_path):
    path = files.write_text(tmp_path / "result.json", "old")

    def write(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(WriteError, match=rf"cannot write {path}: No space left on device \(ENOSPC\).*intact"):
        files.write_atomic(path, write)
    assert path.read_text() == "old" and not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(WriteError, match=r"cannot write .*missing.*\(ENOENT\)"):
        files.write_text(tmp_path / "missing" / "x.txt", "x")


def test_stale_temp_files_are_removed(tmp_path):
    (tmp_path / ".checkpoint_0001.pth.tar.abc.tmp").write_bytes(b"PK")  # what a kill -9 leaves
    (tmp_path / "keep.txt").write_text("x")
    assert [p.name for p in files.remove_stale_temp_files(tmp_path, "checkpoint_*")] == [".checkpoint_0001.pth.tar.abc.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_done_markers_merge_per_stage_and_clear(tmp_path):
    assert not files.is_done(tmp_path, "knn") and files.done_info(tmp_path / "absent") == {}
    files.mark_done(tmp_path, "knn", result="knn.json")
    files.mark_done(tmp_path, "linear", result="linear.json")
    info = files.done_info(tmp_path)
    assert set(info) == {"knn", "linear"} and info["knn"]["result"] == "knn.json" and info["knn"]["finished"] > 0
    files.clear_done(tmp_path, "knn")
    assert not files.is_done(tmp_path, "knn") and files.is_done(tmp_path, "linear")


# ----------------------------------------------------------------------------- nothing bypasses the writer

# (module, what) pairs that write without core.files on purpose; core/files.py documents each.
ALLOWED = {
    ("core/runtime.py", "open(..., 'a')"),       # metrics.jsonl: append-only log, fsynced per record
    ("core/preemption.py", "open(..., 'a')"),    # the preemption note read by pretrain/run.sh
    ("bench/gpu_check.py", "open(..., 'w')"),    # a child process's log stream in its scratch folder
}


def _write_mode(call: ast.Call) -> str | None:
    """The mode of open(path, mode), path.open(mode), os.fdopen(fd, mode), PathManager.open(...): a
    string constant among the first two arguments, or mode=, that opens for writing."""
    for node in [*call.args[:2], *(k.value for k in call.keywords if k.arg == "mode")]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"[rwaxbt+]{1,3}", node.value) \
                and set(node.value) & set("wax+"):
            return node.value
    return None


def _lambda_params(parents: list[ast.AST]) -> set[str]:
    return {a.arg for p in parents if isinstance(p, ast.Lambda) for a in p.args.args}


def bypasses(source: str) -> list[tuple[int, str]]:
    """Calls that write a file without core.files: open/Path.open for writing, Path.write_text/bytes,
    json.dump, savefig, and torch.save/pickle.dump except into a write_atomic callback's file."""
    found = []

    def visit(node: ast.AST, parents: list[ast.AST]) -> None:
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
            if name in ("open", "fdopen"):
                mode = _write_mode(node)
                if mode:
                    found.append((node.lineno, f"open(..., {mode!r})"))
            elif name in ("write_text", "write_bytes") and isinstance(f, ast.Attribute) and owner != "files":
                found.append((node.lineno, f".{name}()"))
            elif name == "dump" and owner in ("json", "yaml"):
                found.append((node.lineno, f"{owner}.dump()"))
            elif name == "savefig":
                found.append((node.lineno, "savefig()"))
            elif (owner, name) in (("torch", "save"), ("pickle", "dump")):
                target = node.args[1] if len(node.args) > 1 else None
                if not (isinstance(target, ast.Name) and target.id in _lambda_params(parents)):
                    found.append((node.lineno, f"{owner}.{name}()"))
        for child in ast.iter_child_nodes(node):
            visit(child, parents + [node])

    visit(ast.parse(source), [])
    return found


def test_the_bypass_check_catches_each_kind_of_writer():
    source = textwrap.dedent("""
        open(p, "w"); open(p, mode="ab"); p.open("w"); os.fdopen(fd, "wb"); open(p, "rb"); Image.open(f)
        PathManager.open(p, "w")
        p.write_text("x"); p.write_bytes(b""); files.write_text(p, "x"); write_text(p, "x")
        json.dump(o, f); json.dumps(o); yaml.dump(o, f); fig.savefig(p)
        torch.save(o, p); pickle.dump(o, f); write_atomic(p, lambda f: torch.save(o, f))
    """)
    assert [what for _, what in bypasses(source)] == [
        "open(..., 'w')", "open(..., 'ab')", "open(..., 'w')", "open(..., 'wb')", "open(..., 'w')",
        ".write_text()", ".write_bytes()",
        "json.dump()", "yaml.dump()", "savefig()", "torch.save()", "pickle.dump()"]


def test_no_module_writes_a_file_without_core_files():
    offenders = []
    for folder in PROJECT_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel == "core/files.py":
                continue
            offenders += [f"{rel}:{line} {what}" for line, what in bypasses(path.read_text())
                          if (rel, what) not in ALLOWED]
    assert not offenders, "write these through core.files (write_text, write_json, save_atomic, ...):\n" + "\n".join(offenders)
