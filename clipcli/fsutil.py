"""Writing files safely: atomically, durably, and with the permissions a plain write would give (stdlib only)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import OutputPathError


def umask_mode(base: int = 0o666) -> int:
    """The mode a plain `open(path, "w")` gives a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename inside `directory` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_beside(target: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """A new hidden temporary file in the target's folder (so the final rename stays on one filesystem)."""
    directory = target.parent if str(target.parent) else Path(".")
    fd, name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=suffix)
    os.fchmod(fd, umask_mode())
    return fd, name


def atomic_write_bytes(target: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Write `data` to `target` through a temporary file and a rename: readers see the old or the new file.
    durable: fsync the file and its folder too (skipped for caches, which can always be rebuilt)."""
    target = Path(target)
    fd, name = temp_beside(target)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(name, target)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(target.parent if str(target.parent) else ".")


def check_output_file(path: str | os.PathLike, option: str) -> None:
    """Refuse, before any slow work, an output path that cannot be written: a folder, a missing or
    read-only parent folder."""
    target = Path(path)
    if target.is_dir():
        raise OutputPathError(f"{option} {target}: is a folder; give a file name, e.g. {target / 'out.json'}")
    if target.exists() and not target.is_file():
        return  # /dev/null, a FIFO: written in place
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"{option} {target}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{option} {target}: folder {parent} is not writable")
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputPathError(f"{option} {target}: file is not writable")


def check_output_dir(path: str | os.PathLike, option: str) -> None:
    """A folder the command will create or write into: it may not exist yet, but may not be a file,
    and its nearest existing ancestor must be writable."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise OutputPathError(f"{option} {target}: is a file, not a folder")
    existing = target
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{option} {target}: folder {existing} is not writable")
