"""Reading and writing files safely: only regular files are read, and small files only up to a limit (a FIFO,
a device or a YAML bomb never blocks or floods a run); writes are atomic, durable, and with the permissions a
plain write would give (stdlib only; pyyaml is imported where YAML is parsed)."""

from __future__ import annotations

import errno
import functools
import os
import stat
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO, Iterator

from .errors import OutputPathError, WriteError

MAX_CONFIG_BYTES = 1 << 20  # labels and template files
MAX_YAML_DEPTH = 32
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})
SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                 (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class NotRegularFileError(OSError):
    """A FIFO, device or socket where a file is to be read: refused instead of opened."""


def reason(exc: OSError) -> str:
    """What went wrong, without the path and in lower case: 'permission denied', 'is a FIFO (named pipe), ...'."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def check_regular(path: str | os.PathLike, mode: int | None = None) -> None:
    """Refuse to read anything but a regular file (symlinks followed), before it is opened: a folder raises
    IsADirectoryError; a FIFO, device or socket NotRegularFileError (opening one could block or never end).
    mode: the st_mode already known (of an open descriptor); stat'ed when None."""
    mode = os.stat(path).st_mode if mode is None else mode
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    kind = next((kind for test, kind in SPECIAL_FILES if test(mode)), "a special file")
    raise NotRegularFileError(f"is {kind}, not a regular file")


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open a regular file for reading in binary (see check_regular): checked before opening, and again on the
    descriptor, opened non-blocking so that a FIFO swapped in meanwhile cannot block either."""
    check_regular(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # no effect on reading a regular file
    try:
        check_regular(path, os.fstat(fd).st_mode)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_config_text(path: str | os.PathLike, encoding: str = "utf-8", limit: int = MAX_CONFIG_BYTES) -> str:
    """The text of a small regular file (labels, templates); a bigger file raises OSError (EFBIG)."""
    with open_regular(path) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"is larger than {limit >> 20} MiB", str(path))
    return data.decode(encoding)


@functools.cache
def _yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader without aliases (a "billion laughs" document expands them without bound) or deep nesting."""

        depth = 0

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                raise yaml.composer.ComposerError(None, None, f"aliases such as *{event.anchor} are not allowed",
                                                  event.start_mark)
            if self.depth >= MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                                  event.start_mark)
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return Loader


def parse_yaml(text: str):
    """yaml.safe_load without aliases and with bounded nesting; raises yaml.YAMLError (see yaml_error_message)."""
    import yaml

    return yaml.load(text, Loader=_yaml_loader())


def yaml_text(value, path, what: str, error: type[Exception]) -> str:
    """A parsed YAML scalar as text; a mapping, a list or an empty value raises `error` naming the file and what
    the value is (a label, a template), instead of becoming text such as "{'c': 'd'}" or "None"."""
    problem = ("empty" if value is None else "a mapping" if isinstance(value, dict)
               else "a list" if isinstance(value, (list, set)) else None)
    if problem:
        raise error(f"{path}: {what} is {problem}, not text")
    return str(value)


def disk_error(exc: OSError, name: str | os.PathLike) -> WriteError | None:
    """The one-line error for a write to `name` that failed because the disk is full or failing; None for
    any other error."""
    if exc.errno not in DISK_ERRNOS:
        return None
    return WriteError(f"cannot write {name}: {reason(exc)}")


_UMASK_LOCK = threading.Lock()


def umask_mode(base: int = 0o666) -> int:
    """The mode a plain `open(path, "w")` gives a new file under the current umask.  Reading the umask means
    setting it for a moment: one thread at a time, or two could leave it at 0."""
    with _UMASK_LOCK:
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


_TEMPS: set[str] = set()  # temporary files being written now (see remove_temp_files)
_TEMPS_LOCK = threading.Lock()


def temp_beside(target: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """A new hidden temporary file in the target's folder (so the final rename stays on one filesystem).  It is
    known to remove_temp_files until forget_temp(name)."""
    directory = target.parent if str(target.parent) else Path(".")
    with _TEMPS_LOCK:  # made and known at once (see remove_temp_files)
        fd, name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=suffix)
        _TEMPS.add(name)
    os.fchmod(fd, umask_mode())
    return fd, name


def forget_temp(name: str) -> None:
    """The temporary file was renamed into place or removed: nothing left for remove_temp_files."""
    with _TEMPS_LOCK:
        _TEMPS.discard(name)


def remove_temp_files() -> None:
    """Remove the temporary files this process is writing, for an exit that skips every `finally` (os._exit
    from a thread, see engines.ray.ClusterWatch): a write cut short leaves no file behind there either.  The
    lock stays held: no other thread makes a new one before the caller ends the process."""
    _TEMPS_LOCK.acquire()
    for name in _TEMPS:
        try:
            os.unlink(name)
        except OSError:  # renamed into place or removed meanwhile
            pass


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
    except BaseException as exc:
        Path(name).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename in (None, name):
            exc.filename = str(target)  # name the file being written, not its temporary stand-in
        raise
    finally:
        forget_temp(name)
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


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[IO[str]]:
    """Write to a temporary file beside `path` and rename it over `path` only on success.

    If the block is interrupted (KeyboardInterrupt), the complete records written
    so far are kept as `path.partial` and `path` itself is left untouched; on any
    other error the temporary file is removed.  A full or failing disk raises WriteError naming `path`.
    """
    target = Path(path)
    try:
        if target.exists() and not target.is_file():  # /dev/null, a FIFO: nothing to replace, write straight in
            with open(target, "w", encoding="utf-8", newline="") as stream:
                yield stream
        else:
            with _replacing(target) as stream:
                yield stream
    except OSError as exc:
        error = disk_error(exc, target)
        if error is None:
            raise
        raise error from None


@contextmanager
def _replacing(target: Path) -> Iterator[IO[str]]:
    """A temporary file that replaces `target` when the block ends well; removed (or kept as `.partial` on
    Ctrl-C) on every other way out, even when closing it fails on a full disk."""
    fd, temp_name = temp_beside(target)  # mode as a plain write under the umask would give, not mkstemp's 0600
    stream = os.fdopen(fd, "w", encoding="utf-8", newline="")
    try:
        yield stream
        stream.close()
        os.replace(temp_name, target)
    except KeyboardInterrupt:
        _close(stream)
        os.replace(temp_name, f"{target}.partial")
        raise
    finally:
        _close(stream)
        Path(temp_name).unlink(missing_ok=True)
        forget_temp(temp_name)


def _close(stream: IO[str]) -> None:
    """Close a stream whose last write may fail (a full disk): the file is closed either way."""
    try:
        stream.close()
    except OSError:
        pass
