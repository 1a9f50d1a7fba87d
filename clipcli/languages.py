"""Which writing systems label text uses, and whether the model's tokenizer was trained on them (stdlib only).

OpenAI's CLIP byte-pair encoding (open_clip's SimpleTokenizer, transformers' CLIPTokenizer) was learnt from
English web text: it accepts any text, but Chinese, Japanese, Korean, Cyrillic, Arabic, ... labels come out as
byte fragments the text tower never learnt to read, and the scores are noise.  `warn_unsupported_script` warns
once per run and names a multilingual model.
"""

from __future__ import annotations

import unicodedata
import warnings
from typing import Iterable

from .errors import ClipCliWarning

# Unicode character-name prefixes -> the script they belong to (enough to tell non-Latin label text apart).
SCRIPTS = {"CJK": "Chinese/Japanese (Han)", "HIRAGANA": "Japanese", "KATAKANA": "Japanese", "HANGUL": "Korean",
           "CYRILLIC": "Cyrillic", "ARABIC": "Arabic", "HEBREW": "Hebrew", "THAI": "Thai", "DEVANAGARI": "Devanagari",
           "GREEK": "Greek", "BENGALI": "Bengali", "TAMIL": "Tamil", "GEORGIAN": "Georgian", "ARMENIAN": "Armenian"}
ENGLISH_ONLY_TOKENIZERS = {"SimpleTokenizer", "CLIPTokenizer", "CLIPTokenizerFast"}  # OpenAI's CLIP BPE
CHINESE_MODEL = "transformers:OFA-Sys/chinese-clip-vit-base-patch16"
MULTILINGUAL_MODEL = "xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k"
_warned: set[str] = set()  # once per run (eval builds one classifier per template set)


def scripts_of(text: str) -> list[str]:
    """The non-Latin scripts `text` uses, in order of first appearance."""
    found: dict[str, None] = {}
    for char in text:
        if ord(char) < 0x370:  # ASCII, Latin-1 and Latin Extended: the scripts CLIP's BPE saw
            continue
        name = unicodedata.name(char, "")
        prefix = name.split(" ", 1)[0]
        script = SCRIPTS.get(prefix)
        if script:
            found[script] = None
    return list(found)


def english_only(loaded) -> bool:
    """Whether the model reads text with OpenAI's English CLIP BPE (judged from its identity: no torch needed)."""
    return loaded.identity.get("tokenizer") in ENGLISH_ONLY_TOKENIZERS


def warn_unsupported_script(loaded, texts: Iterable[str]) -> None:
    """One warning when label or template text uses a script that an English-only tokenizer was not trained on."""
    if not english_only(loaded):
        return
    examples: dict[str, str] = {}
    for text in texts:
        for script in scripts_of(text):
            examples.setdefault(script, text)
    if not examples:
        return
    shown = ", ".join(f"{script} script (e.g. {text[:20]!r})" for script, text in examples.items())
    model = CHINESE_MODEL if any("Han" in s for s in examples) else MULTILINGUAL_MODEL
    message = (f"labels or templates in {shown}: this model's tokenizer (OpenAI's CLIP BPE) was trained on English "
               f"text only, so such prompts score as noise; use a multilingual model, e.g. --model {model}")
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, ClipCliWarning, stacklevel=3)
