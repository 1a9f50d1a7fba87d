"""Text encoding for class embeddings, trimmed to each batch's true length where that is exact.

The classic CLIP text transformer is causal and pools the end-of-text token, so
the tokens after the longest prompt's end-of-text in a batch can never change
the result: the batch can run at that length instead of the full context (77).
Prompts are sorted by token length so batches are tight.  Towers that attend
both ways, pool elsewhere, or come from Hugging Face keep open_clip's own path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

TRIMMED = "trimmed"
FULL = "full"


@dataclass
class TextParts:
    """The pieces of a classic causal text tower, wherever the model keeps them."""

    token_embedding: Any
    positional_embedding: torch.Tensor
    transformer: Any
    attn_mask: torch.Tensor
    ln_final: Any
    text_projection: Any
    pool_type: str
    eos_id: int | None


def text_parts(model) -> TextParts | None:
    """The causal tower's parts, or None when trimming would not be exact for this model."""
    from open_clip.transformer import TextTransformer

    tower = getattr(model, "text", None)
    if tower is None:  # open_clip.CLIP keeps the text tower's modules on the model itself
        owner, pool_type, eos_id = model, getattr(model, "text_pool_type", None), getattr(model, "text_eos_id", None)
        if not hasattr(model, "token_embedding"):
            return None
    elif isinstance(tower, TextTransformer):  # CustomTextCLIP with open_clip's own text transformer
        if tower.cls_emb is not None or tower.use_pad_mask or getattr(tower, "output_tokens", False):
            return None
        owner, pool_type, eos_id = tower, tower.pool_type, tower.eos_id
    else:  # Hugging Face towers and anything else
        return None
    attn_mask = getattr(owner, "attn_mask", None)
    if attn_mask is None or pool_type not in ("argmax", "eos") or not _is_causal(attn_mask):
        return None
    return TextParts(owner.token_embedding, owner.positional_embedding, owner.transformer, attn_mask,
                      owner.ln_final, owner.text_projection, pool_type, eos_id)


def _is_causal(mask: torch.Tensor) -> bool:
    upper = torch.triu(torch.ones_like(mask, dtype=torch.bool), diagonal=1)
    return bool(torch.isinf(mask[upper]).all()) and bool((mask[~upper] == 0).all())


def text_path(model) -> str:
    """Which path encode_texts takes for this model: "trimmed" or "full"."""
    return TRIMMED if text_parts(model) is not None else FULL


def end_positions(tokens: torch.Tensor, parts: TextParts) -> torch.Tensor:
    if parts.pool_type == "argmax":
        return tokens.argmax(dim=-1)
    return (tokens == parts.eos_id).int().argmax(dim=-1)


def encode_trimmed(parts: TextParts, tokens: torch.Tensor, length: int) -> torch.Tensor:
    tokens = tokens[:, :length]
    cast_dtype = parts.transformer.get_cast_dtype()
    x = parts.token_embedding(tokens).to(cast_dtype)
    x = x + parts.positional_embedding[:length].to(cast_dtype)
    x = parts.transformer(x, attn_mask=parts.attn_mask[:length, :length])
    x = parts.ln_final(x)
    ends = end_positions(tokens, parts)
    x = x[torch.arange(x.shape[0], device=x.device), ends]
    if parts.text_projection is None:
        return x
    if isinstance(parts.text_projection, torch.nn.Linear):
        return parts.text_projection(x)
    return x @ parts.text_projection


def encode_texts(model, tokenizer, texts: Sequence[str], device=None, batch_size: int = 256,
                 progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """L2-normalised text embeddings [len(texts), D] in input order (float32, on the CPU)."""
    device = device if device is not None else next(model.parameters()).device
    tokens = tokenizer(list(texts))
    parts = text_parts(model)
    if parts is not None:
        ends = end_positions(tokens, parts)
        order = torch.argsort(ends, stable=True)
    else:
        order = torch.arange(len(texts))
    chunks = []
    done = 0
    with torch.inference_mode():
        for batch_index in order.split(batch_size):
            batch = tokens[batch_index].to(device)
            if parts is not None:
                features = encode_trimmed(parts, batch, int(ends[batch_index].max()) + 1)
            else:
                features = model.encode_text(batch)
            chunks.append(F.normalize(features.float(), dim=-1).cpu())
            done += len(batch_index)
            if progress is not None:
                progress(done, len(texts))
    encoded = torch.cat(chunks)
    out = torch.empty_like(encoded)
    out[order] = encoded
    return out

