"""Backends: one model interface on torch (`models.LoadedModel`) or ONNX Runtime (`backends.onnx.OnnxModel`).

`load_backend_model` picks one.  `auto` runs ONNX Runtime on the CPU when the model's towers export (the
export happens once per model identity, into the cache), and torch otherwise: on CUDA or MPS, in fp16
or bf16, or when the export failed (remembered, not retried).  A warm ONNX run imports neither torch,
torchvision nor open_clip.  `--precision int8` always runs ONNX Runtime (its image tower quantised), with
no torch fallback.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
from pathlib import Path

from ..errors import UsageError

BACKENDS = ("auto", "torch", "onnx")
ENV_BACKEND = "CLIPCLI_BACKEND"
log = logging.getLogger("clipcli")


def default_backend() -> str:
    return os.environ.get(ENV_BACKEND) or "auto"


def accelerator_present() -> bool:
    """An NVIDIA GPU or Apple silicon, judged without importing torch."""
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return True
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def wants_onnx(backend: str, device: str, precision: str) -> bool:
    if backend not in BACKENDS:
        raise UsageError(f"unknown --backend {backend!r}; use auto, torch or onnx")
    if precision == "int8":  # quantised image tower: ONNX Runtime on the CPU, whatever the accelerator
        if backend == "torch" or device not in ("auto", "cpu"):
            raise UsageError("--precision int8 runs on ONNX Runtime on the CPU; use --backend onnx (or auto) and "
                             "--device cpu, or another --precision")
        if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
            raise UsageError("--precision int8 needs ONNX Runtime: pip install onnxruntime onnx")
        return True
    if backend == "torch":
        return False
    on_cpu = device == "cpu" or (device == "auto" and not accelerator_present())
    if backend == "onnx":
        if device not in ("auto", "cpu"):
            raise UsageError(f"--backend onnx runs on the CPU; use --backend torch for --device {device}")
        if precision not in ("auto", "fp32"):
            raise UsageError(f"--backend onnx runs in fp32; use --backend torch for --precision {precision}")
        if importlib.util.find_spec("onnxruntime") is None:
            raise UsageError("--backend onnx needs ONNX Runtime: pip install onnxruntime onnx")
        return True
    return on_cpu and precision in ("auto", "fp32") and importlib.util.find_spec("onnxruntime") is not None \
        and importlib.util.find_spec("onnx") is not None


def model_files(loaded) -> list[str]:
    """The files a loaded model came from (watched: an export is stale when one changes)."""
    spec = loaded.spec
    if loaded.kind == "transformers":
        return loaded.files()
    if spec.schema == "local-dir":
        folder = Path(spec.name[len("local-dir:"):])
        return sorted(str(p) for p in folder.iterdir() if p.is_file())
    if spec.pretrained and os.path.isfile(spec.pretrained):
        return [os.path.abspath(spec.pretrained)]
    return []  # a hub tag names fixed weights


def load_backend_model(model: str, pretrained: str | None = None, device: str = "auto", precision: str = "auto",
                       weights_dir: str | None = None, backend: str = "auto", cache_root: Path | None = None):
    """The model on the chosen backend (see the module doc)."""
    from .. import config
    from ..models import parse_model_spec

    root = config.cache_dir(cache_root)
    args = {"model": model, "pretrained": pretrained, "device": device, "precision": precision,
            "weights_dir": weights_dir, "backend": backend, "cache_root": str(root)}
    chosen = _load(parse_model_spec(model, pretrained), root, args)
    chosen.load_args = args  # how a Ray worker loads the same model
    return chosen


def _load(spec, root: Path, args: dict):
    from ..errors import ExportError
    from ..models import load_model

    backend, weights_dir = args["backend"], args["weights_dir"]
    use_onnx = wants_onnx(backend, args["device"], args["precision"])
    int8 = args["precision"] == "int8"  # exported from the fp32 model on the CPU, then quantised
    required = backend == "onnx" or int8  # no torch fallback then
    if use_onnx:
        from .onnx import OnnxModel, cache_unwritable, export_damage, find_export, set_aside

        found = find_export(root, spec, weights_dir)
        if found is not None and found.directory is not None:
            damage = export_damage(found.directory)
            if damage is None:
                return OnnxModel(found.directory, spec, args)
            _warn_cache(f"the ONNX export of {spec.display_name} in {found.directory} was damaged ({damage}); "
                        "rebuilding it")
            set_aside(found.directory)
            found = None
        if found is not None and found.failed:
            if required:
                instead = "--precision fp32" if int8 else "--backend torch"
                raise ExportError(f"{spec.display_name} cannot run on ONNX Runtime ({found.failed}); use {instead} "
                                  "(`clip cache clear` forgets the failure and tries again)")
            log.info("%s runs on torch: its ONNX export failed before (%s)", spec.display_name, found.failed)
            use_onnx = False
        unwritable = cache_unwritable(root) if use_onnx else None
        if unwritable is not None:  # no export can be made or kept: run as --backend torch does, without the cache
            if required:
                raise ExportError(f"cannot write the ONNX export to the cache folder ({unwritable}); use a writable "
                                  "--cache-dir (or $CLIPCLI_CACHE_DIR)" + ("" if int8 else ", or --backend torch"))
            _warn_cache(f"cache folder {root} cannot be written ({unwritable}); running on torch without the ONNX "
                        "export")
            use_onnx = False
    loaded = load_model(args["model"], args["pretrained"], device="cpu" if int8 else args["device"],
                        precision="fp32" if int8 else args["precision"], weights_dir=weights_dir)
    if not use_onnx:
        return loaded
    from .export import export_model
    from .onnx import OnnxModel, exports_root

    try:
        directory = export_model(loaded, exports_root(root))
    except ExportError as exc:
        _remember(root, spec, weights_dir, model_files(loaded), None, str(exc))
        log.info("%s runs on torch: %s", spec.display_name, exc)
        if required:
            raise
        return loaded
    _remember(root, spec, weights_dir, model_files(loaded), loaded.identity_key())
    return OnnxModel(directory, spec, args, torch_model=loaded)  # the text fallback (if any) needs no second load


def _remember(root: Path, *args) -> None:
    """Remember an export (or its failure) for the next run; a cache that cannot be written only costs that."""
    from .onnx import remember

    try:
        remember(root, *args)
    except OSError as exc:
        _warn_cache(f"cannot write to the cache folder {root} ({exc.strerror or exc}); the next run exports again")


def _warn_cache(message: str) -> None:
    import warnings

    from ..errors import CacheWarning

    warnings.warn(message, CacheWarning, stacklevel=3)
