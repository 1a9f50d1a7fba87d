"""Export a transformers CLIP-family model's towers to ONNX (torch; once per model identity, see `export`).

    image.onnx       pixel_values [B, 3, H, W] -> L2-normalised get_image_features [B, D]; for SigLIP 2 the packed
                     NaFlex array [B, P + 1, 3 * p * p] (patches, then the spatial shape; unpacked in the graph)
    text.onnx        the tokenizer's inputs (input_ids, attention_mask, token_type_ids) [B, L] -> features [B, D]
    tokenizer.json   the model's fast tokenizer, run by the `tokenizers` library on the warm path (no torch)

Both towers are traced with eager attention (the masks transformers builds for SDPA take shortcuts on what the
traced inputs happen to be) and checked against the torch model at other batch sizes and lengths.  The text
tower is exported only when the torch-free tokenizer gives the model's own tokens on probe prompts; otherwise
label text runs on torch (images still on ONNX Runtime).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .probes import OPSET, PROBE_TEXTS, check_close
from .onnx import ort_session

HF_PROBE_TEXTS = [*PROBE_TEXTS, "这是一张馄饨的照片。", "a photo of a dog, 一只狗"]


class _ImageTower(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        from ..hf_models import pooled_features, image_inputs

        inputs = image_inputs(self.model, pixel_values)
        return F.normalize(pooled_features(self.model.get_image_features(**inputs)).float(), dim=-1)


class _TextTower(torch.nn.Module):
    def __init__(self, model, names) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *arrays):
        from ..hf_models import pooled_features

        return F.normalize(pooled_features(self.model.get_text_features(**dict(zip(self.names, arrays)))).float(), dim=-1)


@contextlib.contextmanager
def _eager_attention(model):
    """Eager attention while tracing (the model's own setting restored after)."""
    setter = getattr(model, "set_attn_implementation", None)
    before = getattr(model.config, "_attn_implementation", None)
    if setter is None or before in (None, "eager"):
        yield
        return
    setter("eager")
    try:
        yield
    finally:
        setter(before)


def _probe_pixels(loaded, batch: int, seed: int) -> torch.Tensor:
    """Inputs for the image tower: random pixels, or for SigLIP 2 random images of several shapes, packed."""
    from ..preprocess import NaFlexImageTransform

    if not isinstance(loaded.preprocess, NaFlexImageTransform):
        height, width = loaded.preprocess.size
        return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))
    from PIL import Image

    rng = np.random.default_rng(seed)
    shapes = [(37, 61), (64, 23), (16, 16), (9, 200), (120, 96)]
    images = [Image.fromarray(rng.integers(0, 255, (*shapes[(seed + i) % len(shapes)], 3), dtype=np.uint8))
              for i in range(batch)]
    return torch.from_numpy(np.stack([loaded.preprocess(image) for image in images]))


def _export_image(loaded, path: Path) -> None:
    tower = _ImageTower(loaded.model).eval()
    example = _probe_pixels(loaded, 2, 0)
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(tower, (example,), str(path), input_names=["pixel_values"], output_names=["features"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "features": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    session = ort_session(path)
    for batch in (1, 3):
        pixels = _probe_pixels(loaded, batch, batch)
        with torch.no_grad():
            want = loaded.encode_pixels(pixels).numpy()
        check_close("image", session.run(None, {"pixel_values": pixels.numpy()})[0], want)


def _tokenizer_twin(loaded, path: Path) -> str:
    """Save the fast tokenizer as tokenizer.json; "" when it tokenizes as the model's tokenizer does, else why not."""
    from ..hf_text import FastTokenizer

    backend = getattr(loaded.tokenizer.tokenizer, "backend_tokenizer", None)
    if backend is None:
        return f"tokenizer {type(loaded.tokenizer.tokenizer).__name__} is not a fast (tokenizers) tokenizer"
    backend.save(str(path))
    try:
        twin = FastTokenizer(str(path), loaded.settings)
        want, got = loaded.tokenizer(HF_PROBE_TEXTS), twin(HF_PROBE_TEXTS)
        same = want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)
    except Exception as exc:  # noqa: BLE001  (any mismatch in set-up means: keep the transformers tokenizer)
        return f"tokenizer check failed ({exc})"
    return "" if same else "the tokenizers library does not tokenize as the model's tokenizer does"


def _export_text(loaded, path: Path) -> None:
    from ..hf_text import batch_rows

    names = list(loaded.settings.inputs)
    tower = _TextTower(loaded.model, names).eval()
    tokens = loaded.tokenizer(HF_PROBE_TEXTS)
    example = batch_rows(tokens, np.array([0, 1]), loaded.settings)
    axes = {name: {0: "batch", 1: "length"} for name in names}
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(tower, tuple(torch.from_numpy(example[n]) for n in names), str(path), input_names=names,
                          output_names=["features"], dynamic_axes={**axes, "features": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    session = ort_session(path)
    want = loaded.encode_texts(HF_PROBE_TEXTS)
    for rows in ([0], [1, 2], [0, 1, 2, 3, 4, 5, 6], [5, 3]):
        inputs = batch_rows(tokens, np.array(rows), loaded.settings)
        check_close("text", session.run(None, inputs)[0], want[rows])


def export_towers(loaded, work: Path) -> dict:
    """Write image.onnx (and text.onnx + tokenizer.json when the text tower can run without torch) into `work`;
    the facts model.json records for them."""
    facts = {"preprocess": loaded.preprocess.to_config(), "image_size": loaded.image_size,
             "image_input": "pixel_values"}
    with _eager_attention(loaded.model):
        _export_image(loaded, work / "image.onnx")
        why = _tokenizer_twin(loaded, work / "tokenizer.json")
        if why:
            (work / "tokenizer.json").unlink(missing_ok=True)
            facts.update(text=None, text_reason=why)
            return facts
        _export_text(loaded, work / "text.onnx")
    facts["text"] = {"mode": "transformers", "settings": loaded.settings.to_dict(),
                     "context_length": loaded.settings.max_length}
    return facts

