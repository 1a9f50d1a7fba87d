"""Hugging Face transformers CLIP-family models as backbones: CLIPModel, ChineseCLIPModel, SiglipModel, MetaClip2Model,
Siglip2Model.

A transformers checkpoint is a folder that `save_pretrained` wrote (config.json, the weights, tokenizer files and
preprocessor_config.json) rather than open_clip's open_clip_config.json.  It is used when:
- `local-dir:DIR` names such a folder (config.json and no open_clip_config.json);
- `hf-hub:ORG/NAME` is in the local Hugging Face cache as such a repository;
- `transformers:DIR_OR_ORG/NAME` forces it (a hub id is downloaded when not cached and the hub is reachable).

The model gives the interface of `loaded.LoadedModel` and computes what transformers'
`pipeline("zero-shot-image-classification")` computes for one template: text through the model's tokenizer as
the pipeline calls it (see `hf_text`), images through the model's image processor as its Pillow backend computes it
(`preprocess.HFImageTransform`, checked against the processor when transformers has that backend), features from
`get_text_features` / `get_image_features`, L2-normalised (SigLIP 2's NaFlex inputs travel packed in one array
per image, see `preprocess.NaFlexImageTransform` and `unpack_naflex`); logit scale exp(logit_scale) and, for SigLIP
and SigLIP 2, logit_bias.
The model's identity (the class-embedding cache key) is the checkpoint's: hashes of config.json, the weights,
the tokenizer files and the preprocessing, never its path.

transformers is an optional extra: pip install 'transformers>=5,<6' tokenizers (in a checkout: '.[transformers]').
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .errors import ModelLoadError
from .hub import checkpoint_error, fingerprint_file, first_text_line
from .loaded import LoadedModel, ModelSpec

PREFIX = "transformers:"
FAMILIES = {"clip": "CLIPModel", "chinese_clip": "ChineseCLIPModel", "siglip": "SiglipModel",
            "metaclip_2": "MetaClip2Model", "siglip2": "Siglip2Model"}
SIGLIP_MAX_LENGTH = 64  # what the pipeline pads SigLIP prompts to
WEIGHT_SUFFIXES = (".safetensors", ".bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "spiece.model", "sentencepiece.bpe.model", "special_tokens_map.json", "added_tokens.json")
# The files a tokenizer's vocabulary comes from: without one of them, transformers builds an empty tokenizer
# (2 tokens) that maps every prompt to the same ids, so every label would score the same.
VOCABULARY_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model",
                    "tokenizer.model")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TEXT_BATCH = 256


def is_transformers_folder(directory: Path) -> bool:
    return (directory / "config.json").is_file() and not (directory / "open_clip_config.json").is_file()


def _cached_snapshot(repo: str, weights_dir: str | None) -> Path | None:
    """The local snapshot folder of a hub repository that transformers saved (its config.json is cached)."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo, "config.json", cache_dir=weights_dir)
    return Path(path).parent if isinstance(path, str) else None


def _is_repo_id(text: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def transformers_source(spec: ModelSpec, weights_dir: str | None) -> str | None:
    """The folder or hub id to load with transformers, or None when the spec is an open_clip model."""
    if spec.schema == "transformers":
        return spec.name[len(PREFIX):]
    if spec.schema == "local-dir":
        directory = Path(spec.name[len("local-dir:"):])
        return str(directory) if is_transformers_folder(directory) else None
    if spec.schema == "hf-hub":
        from .hub import hf_repo_cached

        repo = spec.name[len("hf-hub:"):]
        if not _is_repo_id(repo) or hf_repo_cached(repo, ["open_clip_config.json"], weights_dir):
            return None
        return repo if _cached_snapshot(repo, weights_dir) is not None else None
    return None


def _require_transformers() -> None:
    if importlib.util.find_spec("transformers") is None:
        raise ModelLoadError("this is a Hugging Face transformers model: pip install 'transformers>=5,<6' tokenizers "
                             "(in a clipcli checkout: pip install '.[transformers]')")


def _hash_files(paths: Sequence[Path]) -> str | None:
    digest = hashlib.sha256()
    found = False
    for path in paths:
        if path.is_file():
            found = True
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:24] if found else None


def checkpoint_identity(folder: Path) -> dict:
    """What the checkpoint is, from its files' contents (not their paths)."""
    weights = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
                     and not p.name.startswith("training_args"))
    if not weights:
        raise ModelLoadError(f"{folder}: no weights file (model.safetensors or pytorch_model.bin) next to config.json")
    return {"config": _hash_files([folder / "config.json"]),
            "weights": [[p.name, fingerprint_file(str(p))] for p in weights],
            "tokenizer": _hash_files([folder / name for name in TOKENIZER_FILES])}


def processor_config(folder: Path) -> dict:
    for name in PROCESSOR_FILES:
        path = folder / name
        if path.is_file():
            data = read_json_object(path, str(folder))
            data = data.get("image_processor", data) if name == "processor_config.json" else data
            if not isinstance(data, dict):
                raise ModelLoadError(f"{folder}: {name}: image_processor is not a JSON object")
            return data
    raise ModelLoadError(f"{folder}: preprocessor_config.json is missing (save the model's image processor with "
                         "save_pretrained next to the model)")


def read_json_object(path: Path, display: str) -> dict:
    """A model folder's JSON file that must hold an object (config.json, preprocessor_config.json)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{display}: cannot read {path.name} ({first_text_line(str(exc))})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{display}: {path.name} holds a JSON {type(data).__name__.replace('list', 'array')}, "
                             "not an object (a model's config is a mapping of settings: is it the right file?)")
    return data


def check_tokenizer_files(folder: Path, display: str) -> None:
    """Refuse a folder whose tokenizer has no vocabulary file: it would load as an empty tokenizer."""
    if not any((folder / name).is_file() for name in VOCABULARY_FILES):
        raise ModelLoadError(f"{display}: the tokenizer files are missing (one of {', '.join(VOCABULARY_FILES)}); "
                             "save the model's tokenizer with save_pretrained into the same folder")


def check_tokenizer(tokenizer, display: str) -> None:
    """A tokenizer that knows no more than its special tokens would give every prompt the same ids."""
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    if len(tokenizer) <= len(special) + 1:
        raise ModelLoadError(f"{display}: the tokenizer has no vocabulary ({len(tokenizer)} tokens); save the "
                             "model's tokenizer with save_pretrained into the same folder")


def image_transform(folder: Path):
    """The model's image preprocessing without torch, checked against transformers' Pillow image processor."""
    from .preprocess import HFImageTransform, NaFlexImageTransform, pack_naflex

    cfg = processor_config(folder)
    kind = cfg.get("image_processor_type") or cfg.get("feature_extractor_type") or "?"
    reference = _pil_processor(folder)
    if reference is not None:  # its settings as the processor reads them (`size: 224` means the shortest edge
        cfg = {**cfg, **reference.to_dict()}  # for CLIP's processor, a square for SigLIP's)
    naflex = bool(cfg.get("max_num_patches"))
    try:
        transform = (NaFlexImageTransform if naflex else HFImageTransform).from_processor_config(cfg)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{folder}: image processor {kind} is not supported ({exc})") from None
    if reference is not None:
        from PIL import Image

        for shape in ((37, 61, 3), (64, 33, 3)):
            probe = Image.fromarray(np.random.default_rng(shape[0]).integers(0, 255, shape, dtype=np.uint8))
            out = reference(images=[probe], return_tensors="np")
            want = np.asarray(out["pixel_values"][0])
            if naflex:
                want = pack_naflex(want[np.asarray(out["pixel_attention_mask"][0]) > 0],
                                   tuple(int(v) for v in out["spatial_shapes"][0]), transform.max_patches)
            got = transform(probe)
            if got.shape != want.shape or float(np.abs(got - want).max()) > 1e-5:
                raise ModelLoadError(f"{folder}: image processor {kind} does something clipcli does not "
                                     "reproduce")
    return transform


def _pil_processor(folder: Path):
    """transformers' image processor for the folder on its Pillow backend, or None when there is none."""
    try:
        from transformers import AutoImageProcessor

        with _quiet_transformers():
            return AutoImageProcessor.from_pretrained(str(folder), backend="pil")
    except Exception:  # noqa: BLE001  (older transformers, or no Pillow backend for this processor)
        return None


def text_settings(model, tokenizer):
    from .hf_text import TextSettings

    accepted = set(inspect.signature(model.get_text_features).parameters)
    inputs = tuple(n for n in tokenizer.model_input_names if n in accepted)
    positions = getattr(model.config.text_config, "max_position_embeddings", None) or 10 ** 6
    siglip = "siglip" in model.config.model_type
    own = tokenizer.model_max_length if 0 < (tokenizer.model_max_length or 0) < 10 ** 6 else positions
    max_length = SIGLIP_MAX_LENGTH if siglip else min(own, positions)
    if tokenizer.pad_token_id is None:
        raise ModelLoadError("the model's tokenizer has no padding token")
    return TextSettings(inputs, int(max_length), siglip, int(tokenizer.pad_token_id), str(tokenizer.pad_token),
                        tokenizer.padding_side, tokenizer.truncation_side)


def pooled_features(output):
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


def unpack_naflex(packed):
    """SigLIP 2's image inputs from `NaFlexImageTransform`'s packed batch [B, 3, P + 1, p * p] (torch, traceable):
    pixel_values [B, P, 3 * p * p], pixel_attention_mask [B, P] (the first rows * columns patches) and
    spatial_shapes [B, 2].  Shapes are held to at least one patch and at most P patches, which changes nothing for
    what the transform makes and lets any array of this shape run (the int8 quantiser probes with random ones)."""
    import torch

    flat = packed.permute(0, 2, 3, 1).reshape(packed.shape[0], packed.shape[2], -1)
    pixels, most = flat[:, :-1], flat.shape[1] - 1
    rows = flat[:, -1, 0].round().long().clamp(1, most)
    columns = torch.minimum(flat[:, -1, 1].round().long().clamp(min=1), torch.div(most, rows, rounding_mode="floor"))
    positions = torch.arange(most, device=packed.device)[None, :]
    mask = (positions < (rows * columns)[:, None]).long()
    return {"pixel_values": pixels, "pixel_attention_mask": mask, "spatial_shapes": torch.stack([rows, columns], 1)}


def image_inputs(model, pixels) -> dict:
    """What `get_image_features` takes for a batch of the model's preprocessed pixels."""
    if model.config.model_type == "siglip2":
        return unpack_naflex(pixels)
    return {"pixel_values": pixels}


class HFModel(LoadedModel):
    """A transformers CLIP-family model with the interface of `loaded.LoadedModel` (torch backend)."""

    kind = "transformers"
    folder: Path = Path()
    settings = None

    @property
    def family(self) -> str:
        return self.model.config.model_type

    @property
    def image_size(self) -> int:
        from .preprocess import NaFlexImageTransform

        if isinstance(self.preprocess, NaFlexImageTransform):  # packed patches: its size is no image size
            return self.preprocess.image_size
        return int(min(self.preprocess.size))

    @functools.cached_property
    def embed_dim(self) -> int:
        return int(self.encode_texts(["x"]).shape[1])

    def files(self) -> list[str]:
        return sorted(str(p) for p in self.folder.iterdir() if p.is_file())

    def encode_texts(self, texts, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        import torch

        from .hf_text import batch_rows, prompt_lengths

        texts = list(texts)
        out = np.empty((len(texts), 0), dtype=np.float32)
        if not texts:
            return out
        tokens = self.tokenizer(texts)
        order = np.argsort(prompt_lengths(tokens), kind="stable")
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), TEXT_BATCH):
                rows = order[start:start + TEXT_BATCH]
                inputs = {k: torch.from_numpy(v).to(self.device) for k, v in
                          batch_rows(tokens, rows, self.settings).items()}
                features = pooled_features(self.model.get_text_features(**inputs)).float()
                chunks.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
                if progress is not None:
                    progress(min(start + TEXT_BATCH, len(texts)), len(texts))
        encoded = np.concatenate(chunks)
        out = np.empty_like(encoded)
        out[order] = encoded
        return out

    def image_batches(self, paths, batch_size: int, workers: int | None, decode):
        from .batches import thread_batches

        return thread_batches(paths, self.preprocess, batch_size, workers, decode)

    def encode_pixels(self, pixels):
        import torch

        with torch.inference_mode():
            pixels = torch.as_tensor(np.asarray(pixels) if not isinstance(pixels, torch.Tensor) else pixels)
            inputs = image_inputs(self.model, pixels.to(device=self.device, dtype=self.cast_dtype))
            features = pooled_features(self.model.get_image_features(**inputs))
            return torch.nn.functional.normalize(features.float(), dim=-1)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' loading notes and progress bars are not the user's concern (errors still raise)."""
    from transformers.utils import logging as tf_logging

    verbosity, bars = tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled()
    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        tf_logging.set_verbosity(verbosity)
        if bars:
            tf_logging.enable_progress_bar()


def _resolve_folder(source: str, weights_dir: str | None, display: str) -> Path:
    """The local folder holding the checkpoint: the folder itself, a cached hub snapshot, or a fresh download."""
    folder = Path(source)
    if folder.exists() and not folder.is_dir():
        raise ModelLoadError(f"{display}: {source} is a file, not a folder (a transformers model is the folder that "
                             "save_pretrained writes)")
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"{display}: config.json is missing (a transformers model folder is what "
                                 "save_pretrained writes)")
        return folder
    if source.count("/") != 1 or source.startswith(("/", ".", "~")) or not _is_repo_id(source):
        raise ModelLoadError(f"{display}: folder not found (and not a hub id ORG/NAME)")
    snapshot = _cached_snapshot(source, weights_dir)
    if snapshot is not None and any(p.name.endswith(WEIGHT_SUFFIXES) for p in snapshot.iterdir()):
        return snapshot
    from huggingface_hub import constants

    from .hub import hub_reachable

    if constants.HF_HUB_OFFLINE or not hub_reachable(constants.ENDPOINT):
        why = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise ModelLoadError(f"{source} is not in the Hugging Face cache at {weights_dir or constants.HF_HUB_CACHE} "
                             f"and could not be downloaded{why}; run once with network access, or use a local "
                             "folder: --model local-dir:DIR")
    from huggingface_hub import list_repo_files, snapshot_download

    try:  # config, tokenizer and processor files, and one weights format (safetensors where the repo has them)
        files = list_repo_files(source)
        weights = ["*.safetensors"] if any(name.endswith(".safetensors") for name in files) else ["*.bin"]
        return Path(snapshot_download(source, cache_dir=weights_dir,
                                      allow_patterns=["*.json", "*.txt", "*.model", *weights]))
    except Exception as exc:  # noqa: BLE001  (hub errors come in many types)
        raise ModelLoadError(f"cannot download {source}: {first_text_line(str(exc))}") from None


def load_transformers_model(spec: ModelSpec, source: str, device, precision: str,
                            weights_dir: str | None = None) -> HFModel:
    """Load a transformers CLIP-family checkpoint for inference (device and precision already resolved)."""
    _require_transformers()
    folder = _resolve_folder(source, weights_dir, spec.display_name)
    config = read_json_object(folder / "config.json", spec.display_name)
    family = config.get("model_type")
    if family not in FAMILIES:
        raise ModelLoadError(f"{spec.display_name}: model type {family!r} is not a CLIP-family model clipcli runs; "
                             f"supported: {', '.join(sorted(FAMILIES))}")
    check_tokenizer_files(folder, spec.display_name)
    identity = {"model": "transformers", "family": family, **checkpoint_identity(folder), "precision": precision}
    transform = image_transform(folder)
    import torch
    import transformers

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    try:
        with _quiet_transformers():
            # Shapes that do not fit config.json are told here, in one line (transformers would raise pointing at a
            # report it logs, which is not shown)
            net, info = getattr(transformers, FAMILIES[family]).from_pretrained(
                str(folder), dtype=dtype, ignore_mismatched_sizes=True, output_loading_info=True)
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # noqa: BLE001  (a corrupt or mismatched checkpoint surfaces as many error types)
        raise ModelLoadError(f"cannot load {spec.display_name}: {checkpoint_error(exc)}") from None
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda row: row[0])  # the same one named each time
    if mismatched:
        key, stored, wanted = mismatched[0]
        raise ModelLoadError(f"cannot load {spec.display_name}: its weights do not fit config.json ({len(mismatched)} "
                             f"tensor(s), e.g. {key}: {tuple(stored)} in the weights, {tuple(wanted)} in the config); "
                             "use the config.json saved with these weights")
    check_tokenizer(tokenizer, spec.display_name)
    net = net.to(device).eval()
    from .hf_text import TransformersTokenizer

    settings = text_settings(net, tokenizer)
    identity.update({"preprocess": transform.to_config(), "text": settings.to_dict(),
                     "context_length": settings.max_length, "tokenizer": type(tokenizer).__name__})
    loaded = HFModel(net, transform, TransformersTokenizer(tokenizer, settings), spec, device, precision, identity)
    loaded.folder = folder
    loaded.settings = settings
    return loaded
