"""Export a loaded open_clip model's towers to ONNX (torch; runs once per model identity).

    <cache>/onnx/<identity key>/image.onnx   pixels [B, 3, H, W] -> L2-normalised features [B, D]
    <cache>/onnx/<identity key>/text.onnx    tokens [B, L] -> L2-normalised features [B, D]  (classic towers)
    <cache>/onnx/<identity key>/model.json   identity, preprocessing, logit scale/bias, tokenizer, versions

The text tower is exported with a dynamic sequence length and computes exactly what `textenc`'s
trimmed encoder computes (causal mask and positions cut to the batch's length, end-of-text pooling),
so the ONNX text path is as fast as the trimmed torch path.  torch's tracer bakes the shapes that
`nn.MultiheadAttention` computes internally into the graph; while tracing, each self-attention is
swapped for the same computation written without fixed shapes (same weights).  Every export is
checked against the torch model at other batch sizes and lengths before it is used; one that does
not match to 1e-4 is an export failure.  The folder is written under a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ExportError, first_line
from .onnx import ort_session
from .probes import OPSET, PROBE_TEXTS, check_close


class _SelfAttention(torch.nn.Module):
    """nn.MultiheadAttention's self-attention without shape constants: traces to a graph that runs at any
    batch size and sequence length."""

    def __init__(self, mha: torch.nn.MultiheadAttention) -> None:
        super().__init__()
        self.mha = mha

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None, key_padding_mask=None, **_):
        mha = self.mha
        if not (key is None or key is query) or not (value is None or value is query) or key_padding_mask is not None:
            return mha(query, key, value, need_weights=need_weights, attn_mask=attn_mask,
                       key_padding_mask=key_padding_mask)
        x = query if mha.batch_first else query.transpose(0, 1)  # [B, L, D]
        q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
        heads = mha.num_heads
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))  # [B, H, L, d]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = mha.out_proj(out.transpose(1, 2).flatten(-2))
        return (out if mha.batch_first else out.transpose(0, 1)), None


@contextlib.contextmanager
def _shape_free_attention(model: torch.nn.Module):
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.MultiheadAttention) and child._qkv_same_embed_dim:
                setattr(parent, name, _SelfAttention(child))
                swapped.append((parent, name, child))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


class _ImageTower(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels):
        return F.normalize(self.model.encode_image(pixels).float(), dim=-1)


class _TextTower(torch.nn.Module):
    def __init__(self, model, parts) -> None:
        super().__init__()
        self.model = model  # owns every parameter the parts use, so the tracer sees them as weights
        self.parts = parts

    def forward(self, tokens):
        from ..textenc import encode_trimmed

        if self.parts is None:  # not a classic causal tower: open_clip's own full-context encoding
            return F.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return F.normalize(encode_trimmed(self.parts, tokens, tokens.shape[1]).float(), dim=-1)


def _tokenizer_support(loaded) -> str:
    """"" when clipcli's torch-free tokenizer gives the model's own tokens, else why not."""
    from ..tokenizer import ClipTokenizer

    tokenizer = loaded.tokenizer
    context = getattr(tokenizer, "context_length", None)
    if type(tokenizer).__name__ != "SimpleTokenizer" or not context:
        return f"tokenizer {type(tokenizer).__name__} has no torch-free twin"
    try:
        same = np.array_equal(ClipTokenizer(context)(PROBE_TEXTS), tokenizer(PROBE_TEXTS).numpy())
    except Exception as exc:  # noqa: BLE001  (any mismatch in set-up means: keep the torch tokenizer)
        return f"tokenizer check failed ({exc})"
    return "" if same else "tokenizer settings differ from CLIP's defaults"


def _export_image(loaded, path: Path) -> None:
    size = loaded.image_size
    tower = _ImageTower(loaded.model).eval()
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(False), torch.no_grad(), _shape_free_attention(loaded.model):
        torch.onnx.export(tower, (example,), str(path), input_names=["pixels"], output_names=["features"],
                          dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}}, opset_version=OPSET,
                          dynamo=False)
    session = ort_session(path)
    for batch in (1, 3):
        pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            want = tower(pixels).numpy()
        check_close("image", session.run(None, {"pixels": pixels.numpy()})[0], want)


def _ends(tokens, parts):
    from ..textenc import end_positions

    if parts is None:
        return torch.full((tokens.shape[0],), tokens.shape[1] - 1)
    return end_positions(tokens, parts)


def _export_text(loaded, parts, path: Path) -> None:
    tower = _TextTower(loaded.model, parts).eval()
    tokens = loaded.tokenizer(PROBE_TEXTS[:2])
    length = int(_ends(tokens, parts).max()) + 1
    with torch.inference_mode(False), torch.no_grad(), _shape_free_attention(loaded.model):
        torch.onnx.export(tower, (tokens[:, :length],), str(path), input_names=["tokens"], output_names=["features"],
                          dynamic_axes={"tokens": {0: "batch", 1: "length"}, "features": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    session = ort_session(path)
    want = loaded.encode_texts(PROBE_TEXTS)
    tokens = loaded.tokenizer(PROBE_TEXTS)
    ends = _ends(tokens, parts)
    for rows in ([0], [1, 2], [0, 1, 2, 3, 4]):
        length = int(ends[rows].max()) + 1
        check_close("text", session.run(None, {"tokens": tokens[rows, :length].numpy()})[0], want[rows])


def preprocess_config(loaded) -> dict:
    """The model's preprocessing as open_clip configures it, checked against its torchvision preprocess."""
    from PIL import Image

    from ..preprocess import ImageTransform

    cfg = getattr(loaded.model.visual, "preprocess_cfg", None)
    if not cfg:
        raise ExportError("the model has no preprocess configuration")
    transform = ImageTransform.from_config(cfg)
    probe = Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 61, 3), dtype=np.uint8))
    want = loaded.preprocess(probe).numpy()
    got = transform(probe)
    if got.shape != want.shape or float(np.abs(got - want).max()) > 1e-6:
        raise ExportError("the model's preprocessing is not the standard open_clip one")
    return transform.to_config()


def _finish(work: Path, target: Path, facts: dict) -> None:
    """model.json written last, then the folder renamed into place (atomically)."""
    from .onnx import record_sizes

    (work / "model.json").write_text(json.dumps(facts, indent=2), encoding="utf-8")
    os.chmod(work, 0o755)
    if (target / "model.json").is_file():  # another run exported the same model meanwhile: use that one
        shutil.rmtree(work, ignore_errors=True)
        return
    if target.exists():  # an incomplete folder (a run killed mid-rename on an odd filesystem)
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.replace(work, target)
    except OSError:
        if not (target / "model.json").is_file():
            raise
        shutil.rmtree(work, ignore_errors=True)  # lost the race to a concurrent export: equally good
        return
    record_sizes(target)


def export_model(loaded, root: Path) -> Path:
    """Export both towers into root/<identity key>/ (atomically); returns that folder."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes are not the user's concern
        return _export_model(loaded, root)


def _export_model(loaded, root: Path) -> Path:
    from .. import __version__

    if loaded.precision != "fp32" or loaded.device.type != "cpu":
        raise ExportError("ONNX export needs the model in fp32 on the CPU")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot write the ONNX export under {root}: {exc.strerror or first_line(exc)}") from None
    target = root / loaded.identity_key()
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        facts = {"identity": loaded.identity, "key": loaded.identity_key(),
                 "spec": {"name": loaded.spec.name, "pretrained": loaded.spec.pretrained, "alias": loaded.spec.alias},
                 "embed_dim": loaded.embed_dim, "logit_scale": loaded.logit_scale, "logit_bias": loaded.logit_bias,
                 "opset": OPSET, "clipcli": __version__, "torch": torch.__version__}
        if loaded.kind == "transformers":  # a Hugging Face transformers model: its own towers
            from .export_hf import export_towers

            facts.update(export_towers(loaded, work))
            _finish(work, target, facts)
            return target
        facts.update(preprocess=preprocess_config(loaded), image_size=loaded.image_size)
        _export_image(loaded, work / "image.onnx")
        from ..textenc import text_parts

        why = _tokenizer_support(loaded)
        if not why:
            parts = text_parts(loaded.model)
            _export_text(loaded, parts, work / "text.onnx")
            facts["text"] = {"context_length": loaded.tokenizer.context_length,
                             "mode": "trimmed" if parts is not None else "full",
                             "pool": parts.pool_type if parts is not None else None,
                             "eos_id": parts.eos_id if parts is not None else None}
        else:
            facts["text"] = None
            facts["text_reason"] = why
        _finish(work, target, facts)
    except ExportError:
        shutil.rmtree(work, ignore_errors=True)
        raise
    except Exception as exc:  # noqa: BLE001  (the exporter fails in many ways; each means: stay on torch)
        shutil.rmtree(work, ignore_errors=True)
        raise ExportError(f"ONNX export failed: {first_line(exc)}") from None
    return target
