"""Tokenizing label prompts for a Hugging Face transformers model, the way transformers' zero-shot pipeline does it.

`pipeline("zero-shot-image-classification")` calls the model's tokenizer with padding to the longest prompt, or, for
SigLIP-family models (model_type containing "siglip"), with padding to `max_length` 64 and truncation; the model then
gets every input the tokenizer returns (input_ids, and attention_mask / token_type_ids where the tokenizer's
`model_input_names` has them).  `TextSettings` records that; two tokenizers apply it with one interface
(`__call__(texts) -> {name: int64 array}`, `encode`, `context_length`):

- `TransformersTokenizer` wraps transformers' own tokenizer (the torch backend);
- `FastTokenizer` runs the same `tokenizers` pipeline from its `tokenizer.json`, with neither torch nor
  transformers (the ONNX Runtime warm path); the export checks it gives the same arrays on probe prompts.

Unlike the pipeline, prompts longer than the model's text positions are cut (the pipeline would fail on them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class TextSettings:
    inputs: tuple[str, ...]  # what the model's text tower takes, in the tokenizer's order
    max_length: int  # truncation length (and the padded length when pad_to_max)
    pad_to_max: bool  # SigLIP: always `max_length` tokens; else padded to the batch's longest prompt
    pad_id: int
    pad_token: str
    padding_side: str = "right"
    truncation_side: str = "right"

    def to_dict(self) -> dict:
        return {**asdict(self), "inputs": list(self.inputs)}

    @classmethod
    def from_dict(cls, data: dict) -> "TextSettings":
        return cls(**{**data, "inputs": tuple(data["inputs"])})


class TransformersTokenizer:
    """transformers' tokenizer, called as the zero-shot pipeline calls it (numpy out)."""

    def __init__(self, tokenizer, settings: TextSettings) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        self.context_length = settings.max_length

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        s = self.settings
        out = self.tokenizer(list(texts), padding="max_length" if s.pad_to_max else True, truncation=True,
                             max_length=s.max_length, return_tensors="np")
        return {name: np.asarray(out[name], dtype=np.int64) for name in s.inputs if name in out}

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


class FastTokenizer:
    """The same tokenization from `tokenizer.json` with the `tokenizers` library only."""

    def __init__(self, path: str, settings: TextSettings) -> None:
        from tokenizers import Tokenizer

        s = settings
        self.settings = settings
        self.context_length = s.max_length
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.enable_truncation(s.max_length, direction=s.truncation_side)
        self.tokenizer.enable_padding(direction=s.padding_side, pad_id=s.pad_id, pad_token=s.pad_token,
                                      length=s.max_length if s.pad_to_max else None)

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(list(texts))
        fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
        return {name: np.asarray([getattr(e, fields[name]) for e in encodings], dtype=np.int64).reshape(len(texts), -1)
                for name in self.settings.inputs}

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)


def prompt_lengths(tokens: dict[str, np.ndarray]) -> np.ndarray:
    """Tokens per prompt (without padding), to batch prompts of similar length."""
    mask = tokens.get("attention_mask")
    return mask.sum(axis=1) if mask is not None else np.full(len(tokens["input_ids"]), tokens["input_ids"].shape[1])


def batch_rows(tokens: dict[str, np.ndarray], rows: np.ndarray, settings: TextSettings) -> dict[str, np.ndarray]:
    """The rows of a tokenized batch, cut to their longest prompt (padding to the longest prompt, as the pipeline
    pads one call's prompts; with an attention mask the features do not depend on how much padding there is)."""
    picked = {name: array[rows] for name, array in tokens.items()}
    if settings.pad_to_max or "attention_mask" not in picked:
        return picked
    length = max(int(picked["attention_mask"].sum(axis=1).max()), 1)
    cut = slice(None, length) if settings.padding_side == "right" else slice(-length, None)
    return {name: np.ascontiguousarray(array[:, cut]) for name, array in picked.items()}
