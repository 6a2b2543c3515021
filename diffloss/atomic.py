"""Atomic file writes: nothing half-written ever replaces a good file.

Every file the trainer writes (checkpoints, ``config.json``, the history) goes through
:func:`atomic_write`: a temporary file in the same folder, ``fsync``, an optional verification
of the temporary file, then ``os.replace`` (atomic on POSIX and Windows) and an ``fsync`` of
the folder. If anything fails, the previous file is untouched and the temporary file removed.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text", "remove_stale_temporaries"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_folder_mode() -> int:
    """The mode a new folder gets from the user's umask (``0o755`` under ``022``), for folders made
    by :func:`tempfile.mkdtemp` (``0o700``) and then published in place of the final one."""
    return 0o777 & ~_umask()


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entry table, so a completed ``os.replace`` survives a power cut."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None],
                 verify: Callable[[Path], None] | None = None) -> None:
    """Write through a temporary file in the same folder, verify it, then ``os.replace``.

    The file gets the permissions a plain ``open(path, "w")`` would (``0o666`` minus the umask),
    not ``mkstemp``'s private ``0o600``. Temporary names are ``.<name>.<random>.tmp``; a killed
    writer can leave one behind, which :func:`remove_stale_temporaries` clears.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))



def remove_stale_temporaries(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the temporary files a killed :func:`atomic_write` of ``folder/<name>`` left behind
    (``.<name>.*.tmp``); returns what was removed. Call it only when no other process writes
    to ``folder``."""
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed
