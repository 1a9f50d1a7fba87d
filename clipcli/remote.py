"""Inputs on object storage (s3://, gs://), read through pyarrow's filesystems.

Listing a prefix, a file's state (size, modification time) for the store, and a file's bytes for decoding.
Credentials, regions and endpoints come from where pyarrow (the AWS and Google SDKs) looks for them: the
environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS, ...), config files,
instance roles; options can also ride on the URI as pyarrow allows (`s3://bucket/prefix?region=...`), and
then go with every object listed under it.
A URI names an object as `scheme://bucket/key`; records, stores and errors keep that text as the path.
"""

from __future__ import annotations

import os
import threading
from urllib.parse import urlsplit

SCHEMES = ("s3", "gs", "gcs")
_filesystems: dict[tuple[int, str], object] = {}
_lock = threading.Lock()
_listed: dict[str, tuple[int, int]] = {}  # URI -> (size, mtime_ns), remembered from listings


def is_remote(path: str) -> bool:
    head, sep, _ = path.partition("://")
    return bool(sep) and head.lower() in SCHEMES


def _split(uri: str):
    """(pyarrow filesystem, path on it, the URI's scheme) for an object-storage URI."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    root = f"{scheme}://{parts.netloc}" + (f"?{parts.query}" if parts.query else "")
    key = (os.getpid(), root)  # a forked worker makes its own client: the SDKs' clients do not survive fork
    with _lock:
        filesystem = _filesystems.get(key)
        if filesystem is None:
            import pyarrow.fs as pafs

            filesystem, _ = pafs.FileSystem.from_uri(root)
            _filesystems[key] = filesystem
    return filesystem, parts.netloc + parts.path.rstrip("/"), scheme


def list_images(uri: str, recursive: bool = True) -> list[str]:
    """The image objects under a prefix (sorted, hidden names skipped), or the URI itself when it names an
    object or nothing (a missing object is reported when read)."""
    import pyarrow.fs as pafs

    from .errors import InputError, first_line
    from .paths import is_input_name

    query = urlsplit(uri).query
    try:
        filesystem, path, scheme = _split(uri)
        info = filesystem.get_file_info(path)
        if info.type != pafs.FileType.Directory:
            _remember(uri, info)
            return [uri]
        found = filesystem.get_file_info(pafs.FileSelector(path, recursive=recursive))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot list {uri}: {first_line(exc)}") from None
    images = []
    for entry in sorted(found, key=lambda e: e.path):
        relative = entry.path[len(path):].lstrip("/")
        if entry.type != pafs.FileType.File or any(p.startswith(".") for p in relative.split("/")) \
                or not is_input_name(entry.base_name):
            continue
        name = f"{scheme}://{entry.path}" + (f"?{query}" if query else "")  # the URI's options go with each object
        _remember(name, entry)
        images.append(name)
    return images


def _remember(uri: str, info) -> None:
    """Keep a listed object's state for `object_state` (one listing, not one request per object); the next
    listing refreshes it."""
    import pyarrow.fs as pafs

    if info.type == pafs.FileType.File:
        _listed[uri] = (info.size, info.mtime_ns or 0)
    else:
        _listed.pop(uri, None)


def object_state(uri: str, listed: bool = True) -> tuple[int, int] | None:
    """(size, mtime_ns) of an object, or None when it cannot be found or read.  listed: the state seen when
    the object was last listed, when it was (False: always ask the storage)."""
    if listed and uri in _listed:
        return _listed[uri]
    import pyarrow.fs as pafs

    try:
        filesystem, path, _ = _split(uri)
        info = filesystem.get_file_info(path)
    except (OSError, ValueError):
        return None
    if info.type != pafs.FileType.File:
        return None
    return info.size, info.mtime_ns or 0


def read_bytes(uri: str) -> bytes:
    """An object's bytes (FileNotFoundError when it is missing, OSError when it cannot be read)."""
    filesystem, path, _ = _split(uri)
    with filesystem.open_input_file(path) as handle:
        return handle.read()

