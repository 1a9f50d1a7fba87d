"""Names and keys: path names as clipcli shows and stores them, model identity hashes (stdlib only; a leaf)."""

from __future__ import annotations

import os

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".avif", ".heic",
})


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def display_path(path: str) -> str:
    """The path as text, for output and as the store's key: undecodable bytes kept as \\x escapes."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def identity_hash(identity: dict, leave_out: tuple[str, ...] = ()) -> str:
    """A short stable hash of a model's identity (what determines its embeddings)."""
    import hashlib
    import json

    kept = {k: v for k, v in identity.items() if k not in leave_out}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:20]
