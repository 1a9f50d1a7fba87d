"""Facts about model files and the Hugging Face Hub that every model family needs (stdlib; huggingface_hub when
asked): a cheap fingerprint of a weights file, whether the hub answers, whether a repository is cached, and one
line for a checkpoint that failed to load."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from urllib.parse import urlparse


def fingerprint_file(path: str) -> str:
    """Size and the hash of the first and last 4 MiB: cheap, changes when the weights do, and stays the same for a
    copy of the file elsewhere (no path, no mtime)."""
    stat = os.stat(path)
    digest = hashlib.sha256(f"{stat.st_size}".encode())
    chunk = 4 << 20
    with open(path, "rb") as handle:
        digest.update(handle.read(chunk))
        if stat.st_size > chunk:
            handle.seek(max(chunk, stat.st_size - chunk))
            digest.update(handle.read(chunk))
    return digest.hexdigest()[:24]


def hub_reachable(url: str, timeout: float = 3.0) -> bool:
    """One quick TCP connect: no network means one clear error now, not a minute of retries."""
    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
        return True
    except (OSError, TypeError):
        return False


def hf_repo_cached(repo: str, filenames: list[str], weights_dir: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, name, cache_dir=weights_dir), str) for name in filenames)


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def first_text_line(text: str) -> str:
    return (ANSI.sub("", text).strip().splitlines() or ["unknown error"])[0][:300]


PICKLE_REFUSED = ("the checkpoint holds pickled Python objects besides tensors, and clipcli does not run pickles "
                  "(loading them can run any code); use a safetensors file, or a checkpoint of plain tensors")


def checkpoint_error(exc: BaseException) -> str:
    """One line for a checkpoint that failed to load: our own words for a pickle that torch's safe loader refused
    (torch's text advises weights_only=False, which would run the pickle), else the error's first line."""
    import pickle

    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text or "Weights only load failed" in text:
        return PICKLE_REFUSED
    return first_text_line(text)
