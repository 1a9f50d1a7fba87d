"""Resolving and loading CLIP backbones through open_clip's own loaders.

A model spec is anything open_clip takes: an architecture name with a
pretrained tag or checkpoint file, `hf-hub:org/repo`, or `local-dir:/path`;
plus the alias `demo` for the small model shipped inside this package.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from .errors import DeviceError, ModelLoadError, UsageError
from .hub import checkpoint_error, fingerprint_file, hf_repo_cached, hub_reachable
from .loaded import LoadedModel, ModelSpec  # noqa: F401 (models.LoadedModel: API)

DEMO_ALIAS = "demo"
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")  # int8: ONNX Runtime only (see backends)


def demo_model_dir() -> Path:
    return Path(__file__).resolve().parent / "demo" / "model"


HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def parse_model_spec(model: str, pretrained: str | None = None) -> ModelSpec:
    """`demo`, `local-dir:DIR`, `hf-hub:org/repo`, `transformers:DIR_OR_ORG/NAME`, `ARCH` (+ pretrained), or
    `ARCH:TAG` shorthand."""
    if model == DEMO_ALIAS:
        return ModelSpec(f"local-dir:{demo_model_dir()}", None, alias=DEMO_ALIAS)
    if model.startswith("hf-hub:") and not HUB_ID.fullmatch(model[len("hf-hub:"):]):
        raise UsageError(f"--model {model}: a hub id is ORG/NAME (letters, digits, '-', '_', '.'), e.g. "
                         "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    if model.startswith(("hf-hub:", "local-dir:", "transformers:")):
        return ModelSpec(model, None)
    if pretrained is None and ":" in model:
        arch, _, tag = model.partition(":")
        return ModelSpec(arch, tag or None)
    return ModelSpec(model, pretrained)


def resolve_device(device: str = "auto"):
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda: no CUDA GPU is available here (use --device auto or cpu)")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError("--device mps: Apple MPS is not available here (use --device auto or cpu)")
    if kind not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unknown --device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    return torch.device(device)


def resolve_precision(precision: str, device) -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "int8":
        raise UsageError("--precision int8 runs on ONNX Runtime only; use --backend onnx (or auto) on the CPU")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    return precision


def _local_dir_identity(directory: Path) -> dict:
    from open_clip.factory import _find_checkpoint_in_dir

    config = (directory / "open_clip_config.json").read_text(encoding="utf-8")
    weights = _find_checkpoint_in_dir(directory)
    return {"config": hashlib.sha256(config.encode()).hexdigest()[:24],
            "weights": fingerprint_file(weights) if weights else None}


def _check_architecture(spec: ModelSpec) -> None:
    import open_clip

    known = open_clip.list_models()
    if spec.name.replace("/", "-") in known:
        return
    close = difflib.get_close_matches(spec.name, known, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `clip models` lists them"
    raise ModelLoadError(f"unknown model architecture {spec.name!r}{hint}")


def _tag_config(spec: ModelSpec) -> dict:
    """open_clip's config for a pretrained tag; {} when `pretrained` is a file path."""
    import open_clip

    if spec.pretrained is None:
        raise ModelLoadError(
            f"model {spec.name!r} needs weights: pass --pretrained TAG or a checkpoint file "
            f"(tags: {', '.join(open_clip.list_pretrained_tags_by_model(spec.name)) or 'none'})")
    cfg = open_clip.get_pretrained_cfg(spec.name, spec.pretrained)
    if cfg:
        return cfg
    if os.path.isfile(spec.pretrained):
        return {}
    tags = open_clip.list_pretrained_tags_by_model(spec.name)
    known = f"known tags for {spec.name}: {', '.join(tags)}" if tags else f"open_clip knows no tags for {spec.name}"
    raise ModelLoadError(f"pretrained {spec.pretrained!r} is neither a tag for {spec.name} nor a file; {known}")


def _check_local_dir(spec: ModelSpec) -> Path:
    directory = Path(spec.name[len("local-dir:"):])
    if directory.exists() and not directory.is_dir():
        raise ModelLoadError(f"{spec.name}: {directory} is a file, not a folder (local-dir: names the folder that "
                             "holds open_clip_config.json and the weights, or a transformers config.json)")
    if not directory.is_dir():
        raise ModelLoadError(f"{spec.name}: folder not found")
    if not (directory / "open_clip_config.json").is_file():
        raise ModelLoadError(f"{spec.name}: open_clip_config.json is missing (a local-dir: model needs "
                             "open_clip_config.json and a weights file, or a transformers config.json)")
    return directory


def _weights_hint(spec: ModelSpec, weights_dir: str | None, source: str = "") -> str:
    from huggingface_hub import constants

    location = weights_dir or constants.HF_HUB_CACHE
    if constants.HF_HUB_OFFLINE:
        why = " (HF_HUB_OFFLINE is set)"
    elif source:
        why = f" (cannot reach {urlparse(source).hostname})"
    else:
        why = ""
    return (f"weights for {spec.display_name}{'/' + spec.pretrained if spec.pretrained else ''} are not in "
            f"the cache at {location} and could not be downloaded{why}; run once with network access, "
            "or use local files: --model local-dir:DIR or --pretrained /path/to/checkpoint")


HF_WEIGHT_FILES = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]  # open_clip's preference order


def _weights_location(spec: ModelSpec, tag_cfg: dict, weights_dir: str | None) -> tuple[bool, str] | None:
    """(already cached?, where a download would come from), or None when no download is involved."""
    from huggingface_hub import constants

    if spec.schema == "hf-hub":
        repo = spec.name[len("hf-hub:"):]
        cached = hf_repo_cached(repo, ["open_clip_config.json"], weights_dir) and \
            hf_repo_cached(repo, HF_WEIGHT_FILES, weights_dir)
        return cached, constants.ENDPOINT
    if spec.schema is None and tag_cfg:
        return _is_cached(tag_cfg, weights_dir), constants.ENDPOINT if tag_cfg.get("hf_hub") else tag_cfg.get("url", "")
    return None


@contextmanager
def _hub_offline(enabled: bool) -> Iterator[None]:
    """Hugging Face Hub offline mode for this block: cached weights load with no network request at all."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or enabled
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


@contextmanager
def _no_random_init() -> Iterator[None]:
    """torch.nn.init's functions as no-ops while the model is built: open_clip then loads the whole checkpoint
    with strict=True, which overwrites every parameter, so drawing random weights first is wasted time
    (see bench/RESULTS.md).  Only used when a full checkpoint is loaded."""
    import torch

    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {name: getattr(torch.nn.init, name) for name in names}
    for name in names:
        setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def _plan_download(spec: ModelSpec, tag_cfg: dict, weights_dir: str | None) -> bool:
    """True to load offline (weights cached); raises ModelLoadError when they are neither cached nor reachable."""
    from huggingface_hub import constants

    location = _weights_location(spec, tag_cfg, weights_dir)
    if location is None:
        return False
    cached, source = location
    if cached:
        return True
    if constants.HF_HUB_OFFLINE or not hub_reachable(source):
        raise ModelLoadError(_weights_hint(spec, weights_dir, source))
    return False


def load_model(model: str, pretrained: str | None = None, device: str = "auto", precision: str = "auto",
               weights_dir: str | None = None) -> LoadedModel:
    """Load a model for inference (eval mode) with its preprocess and tokenizer: open_clip's, or a Hugging Face
    transformers CLIP-family model (see hf_models)."""
    spec = parse_model_spec(model, pretrained)
    torch_device = resolve_device(device)
    precision = resolve_precision(precision, torch_device)
    from .hf_models import load_transformers_model, transformers_source

    source = transformers_source(spec, weights_dir)
    if source is not None:
        loaded = load_transformers_model(spec, source, torch_device, precision, weights_dir)
        loaded.load_args = {"model": model, "pretrained": pretrained, "device": device, "precision": precision,
                            "weights_dir": weights_dir, "backend": "torch"}
        return loaded
    import open_clip

    # A local folder is known by its files' contents, never by where it is (a copied package or store still fits).
    known_as = spec.alias or ("local-dir" if spec.schema == "local-dir" else spec.name)
    identity: dict = {"model": known_as, "pretrained": spec.pretrained, "precision": precision}
    kwargs: dict = {}
    tag_cfg: dict = {}

    if spec.schema == "local-dir":
        identity.update(_local_dir_identity(_check_local_dir(spec)))
    elif spec.schema is None:
        _check_architecture(spec)
        tag_cfg = _tag_config(spec)
        # The QuickGELU trap: OpenAI's weights were trained with QuickGELU; an `openai` tag on a plain
        # architecture silently gives worse embeddings unless the activation is switched on.
        if tag_cfg.get("quick_gelu"):
            kwargs["force_quick_gelu"] = True
        if not tag_cfg:
            identity["weights"] = fingerprint_file(spec.pretrained)
    offline = _plan_download(spec, tag_cfg, weights_dir)

    try:
        with _hub_offline(offline), _no_random_init():
            net, preprocess = open_clip.create_model_from_pretrained(
                spec.name, spec.pretrained, precision=precision, device=torch_device, cache_dir=weights_dir, **kwargs)
            tokenizer = open_clip.get_tokenizer(spec.name, cache_dir=weights_dir)
    except ModelLoadError:
        raise
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        text = str(exc)
        if "download" in text.lower() or "offline" in text.lower() or "hub" in text.lower():
            raise ModelLoadError(_weights_hint(spec, weights_dir)) from None
        raise ModelLoadError(f"cannot load {spec.display_name}: {checkpoint_error(exc)}") from None
    except Exception as exc:  # a corrupt or mismatched checkpoint surfaces as many error types
        raise ModelLoadError(f"cannot load weights for {spec.display_name}: {checkpoint_error(exc)}") from None

    net.eval()
    if spec.schema == "hf-hub":
        identity["weights"] = _hf_weights_fingerprint(spec, weights_dir)
    identity["context_length"] = getattr(tokenizer, "context_length", None)
    identity["tokenizer"] = type(tokenizer).__name__
    loaded = LoadedModel(net, preprocess, tokenizer, spec, torch_device, precision, identity)
    loaded.load_args = {"model": model, "pretrained": pretrained, "device": device, "precision": precision,
                        "weights_dir": weights_dir, "backend": "torch"}
    return loaded


def _hf_weights_fingerprint(spec: ModelSpec, weights_dir: str | None) -> str | None:
    """Fingerprint of the weights file the load above put in (or found in) the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    for name in HF_WEIGHT_FILES:
        path = try_to_load_from_cache(spec.name[len("hf-hub:"):], name, cache_dir=weights_dir)
        if isinstance(path, str):
            return fingerprint_file(path)
    return None


def _is_cached(cfg: dict, weights_dir: str | None) -> bool:
    """Whether a pretrained tag's weights are already on disk (no network is used)."""
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)  # "org/repo/file" or "org/repo/", as open_clip reads it
        return hf_repo_cached(repo, [filename] if filename else HF_WEIGHT_FILES, weights_dir)
    url = cfg.get("url", "")
    return bool(url) and os.path.isfile(os.path.join(weights_dir or os.path.expanduser("~/.cache/clip"),
                                                     os.path.basename(url)))


def _pretrained_table():
    """open_clip's table of pretrained tags (its `pretrained` module), read without importing open_clip's package,
    whose __init__ builds every model class and imports torch (6 s here for `clip models`).  Falls back to the
    real import if the module cannot be read on its own."""
    import importlib.util
    import sys
    import types

    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    try:
        spec = importlib.util.find_spec("open_clip")
        folder = list(spec.submodule_search_locations)[0]
        package = types.ModuleType("_clipcli_open_clip")  # a stand-in parent: `.constants` resolve beside it
        package.__path__ = [folder]
        sys.modules[package.__name__] = package
        module_spec = importlib.util.spec_from_file_location(f"{package.__name__}.pretrained",
                                                             os.path.join(folder, "pretrained.py"))
        module = importlib.util.module_from_spec(module_spec)
        saved = sys.modules.get("safetensors.torch", False)
        sys.modules["safetensors.torch"] = None  # its optional torch import: not needed to read the table
        try:
            module_spec.loader.exec_module(module)
        finally:
            if saved is False:
                sys.modules.pop("safetensors.torch", None)
            else:
                sys.modules["safetensors.torch"] = saved
        return module
    except Exception:  # noqa: BLE001  (any surprise: the slow, sure way)
        import open_clip

        return open_clip


def list_pretrained(filter_text: str | None = None, weights_dir: str | None = None) -> list[dict]:
    """open_clip's (architecture, tag) pairs, filtered by a case-insensitive substring, with cache status."""
    table = _pretrained_table()
    rows = []
    for arch, tag in table.list_pretrained():
        if filter_text and filter_text.lower() not in f"{arch}:{tag}".lower():
            continue
        cfg = table.get_pretrained_cfg(arch, tag)
        rows.append({"architecture": arch, "pretrained": tag, "cached": _is_cached(cfg, weights_dir)})
    return rows
