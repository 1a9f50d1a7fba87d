"""The CLIP byte-pair-encoding tokenizer without torch (numpy out), for the ONNX text tower.

Same vocabulary file, text cleaning and rules as open_clip's `SimpleTokenizer` (clean="lower"):
ftfy + HTML unescaping, whitespace folding, lower case; words split by the CLIP pattern; each word's
bytes mapped to printable characters, merged pair by pair in the order of the merge list; start and
end tokens around; cut to the context with the end token kept last.  Equality with open_clip's
tokenizer is tested on many strings.  The vocabulary is read from the installed open_clip package's
data file, found without importing open_clip (which would import torch).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os

import numpy as np

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # the merges CLIP uses from that file
SPECIALS = ("<start_of_text>", "<end_of_text>")


def vocab_path() -> str:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open_clip is not installed: its BPE vocabulary file is needed")
    return os.path.join(list(spec.submodule_search_locations)[0], VOCAB_FILE)


@functools.lru_cache(maxsize=1)
def _byte_chars() -> dict[int, str]:
    """Every byte as a printable character: printable Latin-1 bytes stand for themselves, the rest
    are shifted past 255, in byte order (the GPT-2 / CLIP convention the vocabulary is written in).
    The dict lists the printable bytes first, then the shifted ones: the vocabulary's own order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [byte for byte in range(256) if byte not in set(keep)]
    return {**{byte: chr(byte) for byte in keep}, **{byte: chr(256 + i) for i, byte in enumerate(shifted)}}


class ClipTokenizer:
    def __init__(self, context_length: int = 77, path: str | None = None) -> None:
        import regex

        with gzip.open(path or vocab_path(), "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n")[1:MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        base = list(_byte_chars().values())
        tokens = base + [c + "</w>" for c in base] + ["".join(m) for m in merges] + list(SPECIALS)
        self.ids = {token: i for i, token in enumerate(tokens)}
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self.sot, self.eot = self.ids[SPECIALS[0]], self.ids[SPECIALS[1]]
        self.context_length = context_length
        self.pattern = regex.compile("|".join(SPECIALS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                                     regex.IGNORECASE)
        self._words: dict[str, list[int]] = {}

    @staticmethod
    def clean(text: str) -> str:
        if not (text.isascii() and text.isprintable() and "&" not in text):
            import ftfy  # what it fixes (mojibake, control characters, entities) never occurs in printable ASCII
            # without "&", so most prompts skip it, and its import (0.05-0.08 s of a one-query start)

            text = ftfy.fix_text(text)
        text = html.unescape(html.unescape(text)).strip()
        return " ".join(text.split()).lower()

    def _word(self, word: str) -> list[int]:
        cached = self._words.get(word)
        if cached is not None:
            return cached
        if word in SPECIALS:
            ids = [self.ids[word]]
        else:
            parts = list(word[:-1]) + [word[-1] + "</w>"]
            while len(parts) > 1:
                best, best_rank = None, None
                for i in range(len(parts) - 1):
                    rank = self.ranks.get((parts[i], parts[i + 1]))
                    if rank is not None and (best_rank is None or rank < best_rank):
                        best, best_rank = i, rank
                if best is None:
                    break
                pair = (parts[best], parts[best + 1])
                merged, i = [], 0
                while i < len(parts):  # merge every occurrence of the pair, left to right
                    if i < len(parts) - 1 and (parts[i], parts[i + 1]) == pair:
                        merged.append(parts[i] + parts[i + 1])
                        i += 2
                    else:
                        merged.append(parts[i])
                        i += 1
                parts = merged
            ids = [self.ids[p] for p in parts]
        self._words[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        chars = _byte_chars()
        out: list[int] = []
        for word in self.pattern.findall(self.clean(text)):
            out.extend(self._word(word if word in SPECIALS else "".join(chars[b] for b in word.encode("utf-8"))))
        return out

    def __call__(self, texts, context_length: int | None = None) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        result = np.zeros((len(texts), length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > length:
                ids = ids[:length]
                ids[-1] = self.eot
            result[row, :len(ids)] = ids
        return result


def is_text_truncated(tokenizer, text: str) -> bool:
    """True when a prompt is longer than the tokenizer's context (the tokenizer cuts it silently).  Any tokenizer:
    this package's, open_clip's or transformers' (those without `encode` or a context length are never judged)."""
    encode = getattr(tokenizer, "encode", None)
    context = getattr(tokenizer, "context_length", None)
    if encode is None or context is None:
        return False
    if len(text.encode("utf-8")) + 2 <= context:  # byte-level BPE: never more tokens than bytes
        return False
    try:
        return len(encode(text)) + 2 > context  # + start and end tokens
    except Exception:
        return False
