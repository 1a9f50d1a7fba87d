"""Finding images on disk (or on object storage, see `remote`) and opening them safely.

Every per-file problem becomes an ImageReadError naming the file and what went
wrong; callers turn those into error records and go on with the batch.
"""

from __future__ import annotations

import errno
import glob
import io
import os
import sys
from typing import Iterable, Iterator

from .errors import ImageReadError, InputError
from .fsutil import NotRegularFileError, check_regular, reason
from .paths import display_path, is_image_name, is_input_name  # noqa: F401 (display_path re-exported)

GLOB_CHARS = frozenset("*?[")
# Above this, a JPEG is always decoded at reduced size (shorter side >= HUGE_DECODE_SIDE) so memory stays
# bounded, even with reduced decoding off.
HUGE_MEGAPIXELS = 40.0
HUGE_DECODE_SIDE = 2048
EXIF_ORIENTATION = 0x0112


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def walk_images(directory: str, recursive: bool = True, videos: bool = True) -> Iterator[str]:
    """Image and video files (images only with videos=False: a labelled set) under a directory in sorted order,
    skipping hidden entries and never entering the same real directory twice (folder symlink loops end).  What
    cannot be examined is yielded to be reported when read (see read_image): entries named like images that are
    broken or looping symlinks or special files, and subfolders that cannot be listed.  The directory itself
    that cannot be listed raises InputError."""
    seen: set[tuple[int, int]] = set()

    def visit(path: str, top: bool) -> Iterator[str]:
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in seen:
                return
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(path) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            if top:
                raise InputError(f"cannot list {path}: {reason(exc)}") from None
            yield path
            return
        for entry in entries:
            if _is_hidden(entry.name):
                continue
            if _is_dir(entry):
                if recursive:
                    yield from visit(entry.path, False)
            elif is_input_name(entry.name) if videos else is_image_name(entry.name):
                yield entry.path

    yield from visit(directory, True)


def _is_dir(entry: os.DirEntry) -> bool:
    """A folder, or a symlink to one; False for a symlink loop, which is reported when read."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def read_path_list(source: str) -> list[str]:
    """Paths from a file, one per line, or from standard input with `-`."""
    if source == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            with open(source, encoding="utf-8", errors="surrogateescape") as handle:
                lines = handle.read().splitlines()
        except OSError as exc:
            raise InputError(f"cannot read --files-from {source}: {exc.strerror or exc}") from None
    return [line for line in lines if line.strip()]


def discover(inputs: Iterable[str], recursive: bool = True) -> list[str]:
    """Expand files, directories and glob patterns into image paths, in the order given.

    `file://` URIs are read as the local paths they name; `s3://` and `gs://` URIs are listed on object
    storage (see `remote`).  A path named explicitly is kept even if it is missing or has no image
    extension (it is decoded by content, or reported when read).  Each file is listed once, under the
    path it was first named by, however it is reached (`a.png`, `./a.png`, its absolute path, a folder
    holding it, a symlink or hard link to it: see file_identity), so one file is never its own duplicate;
    where a folder holds both a symlink and the file it points to, the file's own name is kept.
    """
    from . import remote

    found: list[str] = []
    for item in inputs:
        if remote.is_remote(item):
            found.extend(remote.list_images(item, recursive))
            continue
        item = local_path(item)
        if os.path.isdir(item):
            found.extend(walk_images(item, recursive))
        elif not os.path.lexists(item) and GLOB_CHARS & set(item):
            for match in sorted(glob.glob(item, recursive=True)):
                if os.path.isdir(match):
                    found.extend(walk_images(match, recursive))
                elif is_input_name(match):
                    found.append(match)
        else:
            found.append(item)
    return unique_files(found)


def local_path(item: str) -> str:
    """A `file://` URI as the local path it names (the same file or folder); anything else as it is."""
    if item.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(item).path)
    return item


def file_identity(path: str):
    """What names one file: (device, inode) of what the path resolves to, or the resolved path where it cannot be
    stat-ed (missing, a broken link), or the text itself for object storage."""
    from . import remote

    if remote.is_remote(path):
        return path
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return os.path.realpath(path)
    return (st.st_dev, st.st_ino)


def unique_files(paths: Iterable[str]) -> list[str]:
    """The paths in order, each file once (see discover): a later path naming a file already listed is dropped,
    except that a path that is not a symlink takes the place of a symlink listed before it."""
    kept: list[str] = []
    where: dict[object, int] = {}
    for path in dict.fromkeys(paths):
        identity = file_identity(path)
        index = where.get(identity)
        if index is None:
            where[identity] = len(kept)
            kept.append(path)
        elif _is_link(kept[index]) and not _is_link(path):
            kept[index] = path
    return kept


def _is_link(path: str) -> bool:
    try:
        return os.path.islink(path)
    except (OSError, ValueError):
        return False


def _describe(exc: BaseException) -> tuple[str, str]:
    """(kind, message) for an exception raised while opening or decoding an image."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, PermissionError):
        return "permission_denied", "permission denied"
    if isinstance(exc, NotRegularFileError):
        return "not_a_file", str(exc)
    if getattr(exc, "errno", None) == errno.ELOOP:
        return "symlink_loop", "symlink loop (too many levels of symbolic links)"
    if isinstance(exc, OSError) and exc.errno is not None:
        return "unreadable", f"cannot read file ({reason(exc)})"
    if isinstance(exc, UnidentifiedImageError):
        return "not_an_image", "not an image Pillow can decode"
    if isinstance(exc, Image.DecompressionBombError):
        return "too_large", str(exc)
    text = str(exc) or type(exc).__name__
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return "truncated", f"truncated or corrupt image data ({text})"
    return "decode_error", f"cannot decode image ({text})"


def open_image(path: str, max_megapixels: float | None = None, min_size: int | None = None):
    """Open one image as an upright RGB PIL image (see read_image)."""
    return read_image(path, max_megapixels, min_size)[0]


def read_image(path: str, max_megapixels: float | None = None, min_size: int | None = None):
    """(upright RGB PIL image, (width, height) of the full upright image before any reduced decoding).

    max_megapixels: refuse larger images (decompression bombs) before decoding.
    min_size: for JPEG, decode at the smallest reduced scale whose shorter side is
        still >= min_size (Pillow's draft mode), which is much faster for photos.
        Without it, only JPEGs above HUGE_MEGAPIXELS are decoded reduced (to bound memory).
    """
    return _read(path, None, max_megapixels, min_size)


def read_image_bytes(name: str, data: bytes, max_megapixels: float | None = None, min_size: int | None = None):
    """read_image for an image held in memory (an upload): the same checks and decoding, nothing written to disk;
    errors name `name`."""
    return _read(name, io.BytesIO(data), max_megapixels, min_size)


def _read(path: str, source, max_megapixels: float | None, min_size: int | None):
    from PIL import Image

    from . import remote

    if max_megapixels is not None:
        Image.MAX_IMAGE_PIXELS = None  # our own limit (below) replaces Pillow's fixed one
    try:
        with Image.open(_open_source(path) if source is None else source) as image:
            _check_pixels(path, image, max_megapixels)
            width, height = image.size
            orientation = image.getexif().get(EXIF_ORIENTATION)
            if orientation in (5, 6, 7, 8):  # stored turned by 90 degrees
                width, height = height, width
            if image.format == "JPEG":
                huge = image.size[0] * image.size[1] > HUGE_MEGAPIXELS * 1e6
                if min_size or huge:
                    _draft(image, min_size or HUGE_DECODE_SIDE)
            image.seek(0)  # first frame of animations and multi-page files
            image.load()
            return _to_upright_rgb(image, orientation), (width, height)
    except ImageReadError:
        raise
    except IsADirectoryError:
        raise _folder_error(path) from None
    except FileNotFoundError:
        if source is None and not remote.is_remote(path) and os.path.islink(path):
            raise ImageReadError(path, f"broken symlink (points to {os.readlink(path)})", "broken_symlink") from None
        raise ImageReadError(path, "file not found", "not_found") from None
    except Exception as exc:  # Pillow raises many types for bad data; all of them mean "this file"
        kind, message = _describe(exc)
        raise ImageReadError(path, message, kind) from None


def _open_source(path: str):
    """What Pillow opens: an object's bytes from storage, or the path of a local regular file (never a FIFO or a
    device, which could block or never end; see check_regular)."""
    from . import remote

    if remote.is_remote(path):
        return io.BytesIO(remote.read_bytes(path))
    check_regular(path)
    return path


def _folder_error(path: str) -> ImageReadError:
    """A folder reached as an image: one that walk_images could not list (it says why), or one named by mistake."""
    try:
        os.scandir(path).close()
    except OSError as exc:
        kind = "permission_denied" if isinstance(exc, PermissionError) else "unreadable"
        return ImageReadError(path, f"cannot list folder: {reason(exc)}", kind)
    return ImageReadError(path, "is a directory", "not_a_file")


def _check_pixels(path: str, image, max_megapixels: float | None) -> None:
    if max_megapixels is None:
        return
    width, height = image.size
    megapixels = width * height / 1e6
    if megapixels > max_megapixels:
        raise ImageReadError(
            path, f"image is {width}x{height} ({megapixels:.0f} MP), above the {max_megapixels:g} MP limit "
            "(raise it with --max-megapixels)", "too_large")


def _draft(image, min_size: int) -> None:
    width, height = image.size
    scale = min(width, height) / min_size
    if scale >= 2:
        # draft picks a scale >= the requested size, so the shorter side stays >= min_size
        image.draft("RGB", (max(1, round(width / scale)), max(1, round(height / scale))))


def _to_upright_rgb(image, orientation: int | None):
    """The image turned upright, in RGB.  An upright RGB image is returned as it is: copying a decoded photo
    costs more than a tenth of its decoding time (Pillow's exif_transpose and convert always copy)."""
    from PIL import Image, ImageOps

    if orientation in (2, 3, 4, 5, 6, 7, 8):
        image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        image = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image if image.mode == "RGB" else image.convert("RGB")



def find_images(inputs: Iterable[str], recursive: bool = True, files_from: str | None = None) -> list[str]:
    """Every image the inputs name (files, folders, globs, object storage) and, with files_from, the paths listed in
    that file (- for standard input); a one-line InputError when they name none."""
    named = list(inputs or [])
    if files_from is not None:
        listed = read_path_list(files_from)
        if not listed and not named:
            where = "standard input" if files_from == "-" else files_from
            raise InputError(f"--files-from {files_from}: {where} holds no paths (one path per line)")
        named += listed
    if not named:
        raise InputError("no images given; name files or folders, or use --files-from FILE (- for stdin)")
    paths = discover(named, recursive=recursive)
    if not paths:
        raise InputError(f"no images found in {', '.join(named[:3])}{' ...' if len(named) > 3 else ''}")
    return paths
