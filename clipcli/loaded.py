"""A model as the rest of clipcli sees it, whichever family it comes from (open_clip in `models`, transformers in
`hf_models`): what was asked for (`ModelSpec`) and the loaded model's interface (`LoadedModel`, the torch backend;
the ONNX backend's `OnnxModel` has the same)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for, normalised: `name` as open_clip takes it, and the pretrained tag or file."""

    name: str
    pretrained: str | None = None
    alias: str | None = None

    @property
    def schema(self) -> str | None:
        for prefix in ("hf-hub:", "local-dir:", "transformers:"):
            if self.name.startswith(prefix):
                return prefix[:-1]
        return None

    @property
    def display_name(self) -> str:
        return self.alias or self.name

    @property
    def short_name(self) -> str:
        """For narrow places such as table columns: the folder name of a local-dir: model."""
        if self.alias:
            return self.alias
        if self.schema == "local-dir":
            return Path(self.name[len("local-dir:"):]).name or self.name
        if self.schema == "transformers":
            return Path(self.name[len("transformers:"):]).name or self.name
        return f"{self.name}:{self.pretrained}" if self.pretrained else self.name


@dataclass
class LoadedModel:
    """A model ready for inference, with everything needed to use it and to name it."""

    kind: ClassVar[str] = "open_clip"  # the model family: open_clip, or transformers (hf_models.HFModel)

    model: Any
    preprocess: Callable
    tokenizer: Any
    spec: ModelSpec
    device: Any
    precision: str
    identity: dict = field(default_factory=dict)
    load_args: dict = field(default_factory=dict)  # how to load this model again elsewhere (a Ray worker)

    def expect_images(self, count: int) -> None:
        """How many images the run will encode: the ONNX backend starts its session early; torch has nothing to do."""

    def expect_texts(self, count: int) -> None:
        """How many prompts are about to be encoded (likewise)."""

    @property
    def cast_dtype(self):
        import torch

        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)

    @property
    def image_size(self) -> int:
        size = getattr(self.model.visual, "image_size", 224)
        return int(min(size) if isinstance(size, (tuple, list)) else size)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp().reshape(-1)[0])

    @property
    def logit_bias(self) -> float | None:
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else float(bias.detach().float().reshape(-1)[0])

    backend = "torch"

    def describe(self) -> dict:
        """The model as result documents name it."""
        return {"name": self.spec.display_name, "pretrained": self.spec.pretrained, "backend": self.backend,
                "precision": self.precision}

    def encode_texts(self, texts, progress: Callable[[int, int], None] | None = None):
        """L2-normalised float32 numpy [len(texts), dim] (trimmed where exact: see textenc)."""
        from .textenc import encode_texts

        return encode_texts(self.model, self.tokenizer, texts, device=self.device, progress=progress).numpy()

    def image_batches(self, paths, batch_size: int, workers: int | None, decode):
        """Decoded, preprocessed batches in input order (torch DataLoader workers)."""
        from .pipeline import iter_batches

        return iter_batches(paths, self.preprocess, batch_size, workers, decode, pin_memory=self.device.type == "cuda")

    def encode_pixels(self, pixels):
        """L2-normalised float32 torch features of a batch of preprocessed pixels (torch or numpy)."""
        import torch

        from .pipeline import encode_images

        return encode_images(self.model, torch.as_tensor(pixels), self.device, self.cast_dtype)

    @property
    def embed_dim(self) -> int:
        dim = getattr(self.model, "embed_dim", None) or getattr(getattr(self.model, "visual", None), "output_dim", None)
        if dim is None:
            import torch

            size = self.image_size
            with torch.inference_mode():
                dim = self.model.encode_image(torch.zeros(1, 3, size, size, device=self.device,
                                                          dtype=self.cast_dtype)).shape[-1]
        return int(dim)

    def identity_key(self) -> str:
        """A short stable hash of everything that determines the text embeddings."""
        from .paths import identity_hash

        return identity_hash(self.identity)
