"""The CLIP tokenizer rebuilt on Hugging Face `tokenizers` (Rust): the alternative bench_tokenizer.py measures
against clipcli/tokenizer.py.  Not used by clipcli (see bench/RESULTS.md, "the tokenizer").

Same interface as clipcli.tokenizer.ClipTokenizer.  Built from open_clip's vocabulary file: a BPE model
(vocabulary + merges, `</w>` end-of-word suffix), a pre-tokenizer that keeps what open_clip's word pattern
matches (then maps bytes to characters), a template adding the start and end tokens, truncation to the
context (which keeps the end token, as open_clip does).  Differences from a plain transcription, each found
by the comparison:
- Text cleaning stays in Python (ftfy, HTML unescaping, whitespace folding, str.lower): `tokenizers` has no
  ftfy or HTML unescaping, its Lowercase has no Greek final sigma, and its whitespace is not str.split's.
- open_clip's pattern is case-insensitive, which the `regex` module applies to the literal letters ('ſ
  matches 's) and to U+0345 (it folds to a letter, so no class matches it and it is dropped); spelled out
  here, because Oniguruma's (?i) treats classes differently.
- A special token written in the text is one only where open_clip's scan reaches it (not inside a run of
  punctuation): `tokenizers` would find it anywhere, so such texts take a slower word-by-word path.
- Padding is done by numpy: the padded encodings of `tokenizers` cost more than they save.
What remains different: letters and digits of Unicode versions newer than Oniguruma's tables (open_clip
uses the `regex` module's), 17,480 code points with regex 2026.11.19 and tokenizers 0.23.3.
"""

from __future__ import annotations

import gzip

import numpy as np

from clipcli.tokenizer import MERGES, SPECIALS, _byte_chars, vocab_path
from clipcli.tokenizer import ClipTokenizer as _PythonTokenizer

PATTERN = r"'[sSſ]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|\p{L}+|\p{N}|[^\s\p{L}\p{N}\x{345}]+"
SPECIAL_PATTERN = r"<[sSſ][tT][aA][rR][tT]_[oO][fF]_[tT][eE][xX][tT]>|<[eE][nN][dD]_[oO][fF]_[tT][eE][xX][tT]>"
SPECIAL_HINT = "_of_text>"  # in every text the special alternative can match (after cleaning)


def _words(specials: bool):
    from tokenizers import Regex, pre_tokenizers

    pattern = f"{SPECIAL_PATTERN}|{PATTERN}" if specials else PATTERN
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


class ClipTokenizer:
    def __init__(self, context_length: int = 77, path: str | None = None) -> None:
        from tokenizers import Tokenizer, models, processors

        with gzip.open(path or vocab_path(), "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n", MERGES + 1)[1:MERGES + 1]
        parts = " ".join(lines).split(" ")
        base = list(_byte_chars().values())
        tokens = base + [c + "</w>" for c in base] + [line.replace(" ", "") for line in lines] + list(SPECIALS)
        self.ids = {token: i for i, token in enumerate(tokens)}
        self.sot, self.eot = self.ids[SPECIALS[0]], self.ids[SPECIALS[1]]
        self.context_length = context_length
        self._model = models.BPE(self.ids, list(zip(parts[0::2], parts[1::2])), end_of_word_suffix="</w>",
                                 continuing_subword_prefix="", fuse_unk=False)
        self._plain = Tokenizer(self._model)
        self._plain.pre_tokenizer = _words(False)
        self._template = processors.TemplateProcessing(
            single=f"{SPECIALS[0]} $A {SPECIALS[1]}", special_tokens=[(SPECIALS[0], self.sot), (SPECIALS[1], self.eot)])
        self._cut: dict[int, object] = {}
        self._special_words = None

    def _truncating(self, length: int):
        tokenizer = self._cut.get(length)
        if tokenizer is None:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer(self._model)  # the model is shared, not copied
            tokenizer.pre_tokenizer = self._plain.pre_tokenizer
            tokenizer.post_processor = self._template
            tokenizer.enable_truncation(length)
            self._cut[length] = tokenizer
        return tokenizer

    clean = staticmethod(_PythonTokenizer.clean)  # the same text cleaning

    def _word_by_word(self, text: str) -> list[int]:
        if self._special_words is None:
            self._special_words = _words(True)
        out: list[int] = []
        for word, _ in self._special_words.pre_tokenize_str(text):
            if word in SPECIALS:
                out.append(self.ids[word])
            else:
                out.extend(token.id for token in self._model.tokenize(word))
        return out

    def encode(self, text: str) -> list[int]:
        text = self.clean(text)
        if SPECIAL_HINT in text:
            return self._word_by_word(text)
        return self._plain.encode(text, add_special_tokens=False).ids

    def __call__(self, texts, context_length: int | None = None) -> np.ndarray:
        texts = [self.clean(t) for t in ([texts] if isinstance(texts, str) else texts)]
        length = context_length or self.context_length
        result = np.zeros((len(texts), length), dtype=np.int64)
        for row, (text, encoding) in enumerate(zip(texts, self._truncating(length).encode_batch_fast(texts))):
            ids = encoding.ids
            if SPECIAL_HINT in text:
                ids = [self.sot, *self._word_by_word(text), self.eot]
                if len(ids) > length:
                    ids = ids[:length]
                    ids[-1] = self.eot
            result[row, :len(ids)] = ids
        return result
