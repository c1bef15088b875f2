"""Atomic file writes and small I/O helpers: nothing is ever half-written.

A write goes to a temporary file in the same directory, is fsync'ed, and is renamed over the target
(``os.replace`` is atomic on POSIX). Directories (checkpoints) are written to ``<name>.tmp-<pid>`` and
renamed into place once complete.

Files and directories come out with the user's umask, like any other tool's (``tempfile`` creates them
owner-only, 0600 / 0700, so the mode is set from the umask before the rename).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from typing import Any, Dict, Iterator

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask: from /proc on Linux (no side effect), else by setting and restoring it."""
    try:
        with open("/proc/self/status", "r", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 less the umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode ``mkdir`` would give a new directory: 0o777 less the umask."""
    return 0o777 & ~current_umask()


def atomic_write_bytes(path: str, data: bytes) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())  # mkstemp made it 0600; give it the mode any other tool would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_jsonl(path: str, record: Dict[str, Any]) -> None:
    """Append one JSON line (a single write of a whole line; a crash can lose the line, never corrupt others)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    line = json.dumps(record, sort_keys=True, default=_json_default) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _json_default(o):
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)


def umask_modes(root: str) -> None:
    """Give every file and folder under ``root`` the mode the umask gives a new one (some writers, e.g.
    safetensors' save_file, create owner-only 0600 files; a teammate or a serving process could not read them)."""
    fm, dm = file_mode(), dir_mode()
    for d, dirs, names in os.walk(root):
        os.chmod(d, dm)
        for n in names:
            p = os.path.join(d, n)
            if not os.path.islink(p):
                os.chmod(p, fm)


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_directory(src: str, dst: str) -> None:
    """Put the complete directory ``src`` at ``dst``. An existing ``dst`` is swapped out in one atomic step where
    the system allows (a reader, or a kill at any instant, sees the old complete folder or the new one), then
    removed; elsewhere it is renamed aside first (a kill between the two renames leaves it at ``src + '.old'``)."""
    if not os.path.lexists(dst):
        os.replace(src, dst)
        return
    if _exchange(src, dst):
        shutil.rmtree(src, ignore_errors=True)  # src now holds the old folder
        return
    old = src + ".old"
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
    """Yield a temporary directory that becomes ``path`` only if the block completes.

    An existing ``path`` is replaced only after the new one is complete.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.tmp-")
    try:
        os.chmod(tmp, dir_mode())  # mkdtemp made it 0700
        yield tmp
        umask_modes(tmp)
        replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_prompts(source) -> list:
    """Prompts from a list, a .txt file (one per line) or a .jsonl file (objects with a 'prompt' key)."""
    return [r["prompt"] for r in read_prompt_records(source)]


def read_prompt_records(source) -> list:
    """Prompt records ``{"prompt": ..., **fields}``: from a list (strings or such dicts), a .txt file (one prompt
    per line) or a .jsonl file whose objects carry per-prompt fields (reference ids, target text, duration, ...)
    that travel with the prompt through the rollout to the rewards and the model's encoder."""
    from .errors import ConfigError

    if isinstance(source, (list, tuple)):
        out = []
        for i, p in enumerate(source):
            if isinstance(p, dict):
                if "prompt" not in p:
                    raise ConfigError(f"prompt entry {i} has no 'prompt' key")
                out.append({**p, "prompt": str(p["prompt"])})
            else:
                out.append({"prompt": str(p)})
        return out
    if not os.path.exists(source):
        raise ConfigError(f"prompts file '{source}' does not exist")
    out = []
    with open(source, "r", encoding="utf-8") as f:
        for i, line in enumerate(f):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if source.endswith(".jsonl"):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise ConfigError(f"prompts file '{source}' line {i + 1} is not valid JSON") from None
                if not isinstance(rec, dict) or "prompt" not in rec:
                    raise ConfigError(f"prompts file '{source}' line {i + 1} has no 'prompt' key")
                out.append({**rec, "prompt": str(rec["prompt"])})
            else:
                out.append({"prompt": line})
    if not out:
        raise ConfigError(f"prompts file '{source}' contains no prompts")
    return out
