"""The ONNX Runtime backend: the model interface of `models.LoadedModel`, without torch.

An export (see `export`) is found through a small record per model spec:
    <cache>/onnx/specs/<spec digest>.json   {"key": identity key, "watch": [[file, size, mtime_ns]...],
                                             "failed": null or why the export failed}
The watched files are the model's own (local folder, checkpoint file, cached hub weights): when one
changes, the record is stale and the model is loaded with torch and exported again.  A failed export
is remembered the same way, so it is not retried on every run.  Nothing here imports torch,
torchvision or open_clip; a model whose text tower was not exported encodes label text with torch
(loaded only then).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..batches import DecodeLimits, thread_batches
from ..errors import ExportError, first_line
from ..fsutil import atomic_write_bytes, temp_beside, umask_mode
from ..loaded import ModelSpec
from ..preprocess import transform_from_config
from ..vectors import l2_normalize

TEXT_BATCH = 256
INT8_IMAGE = "image.int8-w7.onnx"  # 7-bit weights (see quantized_image); the 8-bit "image.int8.onnx" is never read
INT8_MIN_COSINE = 0.99  # a quantised image tower must keep every probe's features at least this close
# A run of at most this many images (prompts) starts its session without pre-packing the weights, from a graph
# optimised once beforehand.  ViT-B-32 on 2 cores (bench/bench_search.py): the session starts in 0.04 instead of
# 0.64 s and encodes 15.9 instead of 16.8 images/s, so the quick session is ahead up to about 170 images.
QUICK_IMAGES = 128
QUICK_TEXTS = 256  # text tower: starts in 0.07-0.13 instead of 0.31-0.44 s, 118-135 vs 145-158 prompts/s
EXTERNAL_MIN_BYTES = 16 << 20  # towers larger than this keep their weights in a side file (see external_weights)


def exports_root(cache_root: Path) -> Path:
    return Path(cache_root) / "onnx"


# Bumped when what a model's identity holds changes (2: no install paths or mtimes), so that exports remembered by
# an older clipcli, whose identity is of the old kind, are made again instead of reused.
IDENTITY_SCHEME = 2


def _spec_path(cache_root: Path, spec: ModelSpec, weights_dir: str | None) -> Path:
    blob = json.dumps([IDENTITY_SCHEME, spec.name, spec.pretrained, weights_dir or ""]).encode()
    return exports_root(cache_root) / "specs" / (hashlib.sha256(blob).hexdigest()[:24] + ".json")


def file_states(paths: Sequence[str]) -> list[list]:
    states = []
    for path in paths:
        try:
            st = os.stat(path)
            states.append([path, st.st_size, st.st_mtime_ns])
        except OSError:
            states.append([path, None, None])
    return states


@dataclass
class ExportRecord:
    key: str | None
    failed: str | None
    directory: Path | None


def find_export(cache_root: Path, spec: ModelSpec, weights_dir: str | None) -> ExportRecord | None:
    """The export (or the remembered failure) for this spec, when its model files are unchanged; else None."""
    try:
        record = json.loads(_spec_path(cache_root, spec, weights_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    watch = record.get("watch") or []
    if file_states([w[0] for w in watch]) != watch:
        return None  # the model's files changed (or went away): load it again
    if record.get("failed"):
        return ExportRecord(None, record["failed"], None)
    directory = exports_root(cache_root) / str(record.get("key"))
    if not (directory / "model.json").is_file() or not (directory / "image.onnx").is_file():
        return None
    return ExportRecord(record["key"], None, directory)


def _sizes_path(directory: Path) -> Path:
    return Path(directory).parent / "sizes" / (Path(directory).name + ".json")


def record_sizes(directory: Path) -> None:
    """Write down the export folder's files and their sizes, after every change the tool makes in it (in
    <cache>/onnx/sizes/<key>.json, beside the folder), so a truncated or emptied file is found before ONNX Runtime
    trips over it.  A cache that cannot be written is left as it is (its exports are then checked less closely)."""
    directory = Path(directory)
    try:
        sizes = {p.name: p.stat().st_size for p in sorted(directory.iterdir())
                 if p.is_file() and not p.name.startswith(".")}
        target = _sizes_path(directory)
        target.parent.mkdir(exist_ok=True)
        atomic_write_bytes(target, json.dumps(sizes, indent=1).encode(), durable=False)
    except OSError:
        pass


def export_damage(directory: Path) -> str | None:
    """Why a cached export cannot be used as it is (a file emptied, truncated or gone), or None when it is whole."""
    directory = Path(directory)
    try:
        try:
            facts = json.loads((directory / "model.json").read_text(encoding="utf-8"))
        except ValueError:
            facts = None
        if not isinstance(facts, dict) or "key" not in facts or "identity" not in facts:
            return "model.json is incomplete"
        try:
            sizes = json.loads(_sizes_path(directory).read_text(encoding="utf-8"))
        except FileNotFoundError:  # an export made before the list was kept: its towers at least hold something
            sizes = {name: None for name in ("image.onnx", *(("text.onnx",) if facts.get("text") else ()))}
        if not isinstance(sizes, dict):
            sizes = {name: None for name in ("image.onnx", *(("text.onnx",) if facts.get("text") else ()))}
        for name, size in sizes.items():
            path = directory / str(name)
            actual = path.stat().st_size if path.is_file() else None
            if actual is None:
                return f"{name} is missing"
            if (size is None and actual == 0) or (size is not None and actual != size):
                return f"{name} has {actual} bytes" + (f" instead of {size}" if size is not None else "")
    except (OSError, ValueError) as exc:
        return first_line(exc)
    return None


def set_aside(directory: Path) -> None:
    """Remove a damaged export of ours: renamed first (a run that is using it keeps its open files), then deleted.
    Only a folder inside the exports folder, and never through a symlink."""
    import shutil
    import tempfile

    directory = Path(directory)
    if directory.is_symlink() or not directory.is_dir():
        return
    try:
        aside = Path(tempfile.mkdtemp(prefix=f".damaged-{directory.name}-", dir=directory.parent))
        os.replace(directory, aside / directory.name)
        shutil.rmtree(aside, ignore_errors=True)
    except OSError:
        pass


def cache_unwritable(cache_root: Path) -> str | None:
    """Why an export cannot be written under the cache folder (a file where the folder should be, no permission, a
    read-only or special filesystem), or None when it can."""
    import tempfile

    folder = exports_root(cache_root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"{exc.filename or folder}: {exc.strerror or first_line(exc)}"
    return None


def remember(cache_root: Path, spec: ModelSpec, weights_dir: str | None, watch: Sequence[str], key: str | None,
             failed: str | None = None) -> None:
    path = _spec_path(cache_root, spec, weights_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"spec": [spec.name, spec.pretrained, weights_dir], "key": key, "watch": file_states(watch),
              "failed": failed}
    atomic_write_bytes(path, json.dumps(record, indent=1).encode(), durable=False)


def _made_beside(path: Path, prefix: str, make: Callable[[Path], None], names: Sequence[str]) -> bool:
    """make(work) writes files in a hidden folder beside `path`; they are then renamed into place in the order
    named (a side file before the model that names it), so a concurrent run sees the old or the new state
    whole.  Folders of runs killed meanwhile (over an hour old) are removed first.  False when make fails."""
    import shutil
    import tempfile
    import time

    for left in path.parent.glob(prefix + "*"):
        try:
            if time.time() - left.stat().st_mtime > 3600:
                shutil.rmtree(left, ignore_errors=True)
        except OSError:
            pass
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    try:
        make(work)
        for name in names:
            os.chmod(work / name, umask_mode())
        for name in names:
            os.replace(work / name, path.parent / name)
        return True
    except Exception:  # noqa: BLE001  (onnx and ONNX Runtime fail in many ways; each means: not made)
        return False
    finally:
        shutil.rmtree(work, ignore_errors=True)


def external_weights(path: Path) -> Path:
    """The tower, with its weights moved (once, in place) into a side file `<name>.data`: ONNX Runtime maps such
    weights instead of copying them out of the protobuf, so a session starts several times faster.  A failure
    leaves the tower as it was (slower to start, nothing else)."""
    data = path.with_name(path.name + ".data")
    try:
        if data.is_file() or path.stat().st_size < EXTERNAL_MIN_BYTES:
            return path
    except OSError:
        return path

    def make(work: Path) -> None:
        import onnx
        from onnx.external_data_helper import convert_model_to_external_data

        model = onnx.load(str(path))
        convert_model_to_external_data(model, all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
        onnx.save_model(model, str(work / path.name))

    if _made_beside(path, ".external-", make, [data.name, path.name]):
        record_sizes(path.parent)
    return path


def optimized(path: Path) -> Path | None:
    """The tower (with external weights) with ONNX Runtime's portable graph optimisations applied, saved once
    beside it (`<stem>.opt.onnx` and its `.data`): a quick session loads it with optimisation off, which starts
    faster again.  None for a small tower, or when it cannot be made."""
    target = path.with_name(path.stem + ".opt.onnx")
    if target.is_file():
        return target
    if not path.with_name(path.name + ".data").is_file():
        return None  # a small tower: its session starts fast as it is

    def make(work: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(work / target.name)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         target.name + ".data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    if not _made_beside(path, ".optimize-", make, [target.name + ".data", target.name]):
        return None
    record_sizes(path.parent)
    return target


def ort_session(path: Path, threads: int | None = None, quick: bool = False):
    """An ONNX Runtime session on the CPU; quick: the weights are not pre-packed and a graph optimised once
    beforehand is loaded as it is (starts several times faster, runs a few per cent slower: for short runs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # ORT's worker threads spin between calls by default; here they share the cores with the decoding threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if quick:
        options.add_session_config_entry("session.disable_prepacking", "1")
        ready = optimized(path)
        if ready is not None:
            path = ready
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def quantized_image(directory: Path, size: tuple[int, int], input_name: str = "pixels") -> Path:
    """The image tower with int8 weights (ONNX Runtime's dynamic quantisation), made once beside the fp32
    one, atomically, and checked on probe inputs of the tower's input size (height, width); ExportError when
    it fails or strays too far.

    Weights are quantised per output channel to 7 bits (`reduce_range`), so the answer does not depend on
    the CPU: x86 kernels without VNNI (AVX2, AVX-512 without VNNI) multiply uint8 activations by int8 weights
    with VPMADDUBSW, whose int16 pair sums saturate for 8-bit weights (2 x 255 x 127 > 32767) but never for
    7-bit ones (2 x 255 x 64 = 32640); VNNI and ARM kernels accumulate in int32 either way.  Per-channel
    scales win back the precision the eighth bit gave."""
    target = Path(directory) / INT8_IMAGE
    if target.is_file():
        return target
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fd, temporary = temp_beside(target, ".onnx")
    os.close(fd)
    try:
        quiet = logging.NullHandler()  # the quantiser's advice goes to the root logger, and would otherwise
        logging.getLogger().addHandler(quiet)  # make logging print it (or configure the root logger for good)
        try:
            quantize_dynamic(Path(directory) / "image.onnx", temporary, weight_type=QuantType.QInt8,
                             per_channel=True, reduce_range=True)
        except Exception as exc:  # noqa: BLE001  (the quantiser fails in many ways; each means: no int8 here)
            raise ExportError(f"int8 quantisation failed: {first_line(exc)}") from None
        finally:
            logging.getLogger().removeHandler(quiet)
        probe = np.random.default_rng(0).standard_normal((4, 3, *size)).astype(np.float32)
        fp32 = ort_session(Path(directory) / "image.onnx").run(None, {input_name: probe})[0]
        int8 = ort_session(Path(temporary)).run(None, {input_name: probe})[0]
        cosine = float(np.min(np.sum(l2_normalize(fp32) * l2_normalize(int8), axis=1)))
        if not cosine >= INT8_MIN_COSINE:
            raise ExportError(f"int8 quantisation moves this model's image features too far (cosine {cosine:.3f} "
                              f"< {INT8_MIN_COSINE})")
        os.replace(temporary, target)
        record_sizes(Path(directory))
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target


class OnnxModel:
    """A model on ONNX Runtime (CPU) with the interface the pipeline, classifier and store use.

    precision "int8" (load_args) runs the image tower quantised (made on first use, see quantized_image);
    label text always runs in fp32, so the class-embedding cache is shared with fp32 runs."""

    backend = "onnx"
    device = "cpu"

    def __init__(self, directory: Path, spec: ModelSpec, load_args: dict | None = None, threads: int | None = None,
                 torch_model=None) -> None:
        self.directory = Path(directory)
        self.facts = json.loads((self.directory / "model.json").read_text(encoding="utf-8"))
        self.spec = spec
        self.load_args = load_args or {}
        self.precision = "int8" if self.load_args.get("precision") == "int8" else "fp32"
        self.identity = {**self.facts["identity"], "precision": self.precision}
        self.preprocess = transform_from_config(self.facts["preprocess"])
        self._image_input = self.facts.get("image_input", "pixels")
        self._image_path = (quantized_image(self.directory, self.preprocess.size, self._image_input)
                            if self.precision == "int8"
                            else self.directory / "image.onnx")
        self._threads = threads
        self._tokenizer = None
        self._sessions: dict = {}  # tower ("image", "text") -> its ONNX Runtime session
        self._opening: dict = {}  # tower -> (thread, result) of a session being made in the background
        self._torch = torch_model  # loaded only when label text needs the torch text tower

    # --- what the model is ---------------------------------------------------------------------------------
    def identity_key(self) -> str:
        return self.facts["key"]

    @property
    def logit_scale(self) -> float:
        return float(self.facts["logit_scale"])

    @property
    def logit_bias(self) -> float | None:
        bias = self.facts.get("logit_bias")
        return None if bias is None else float(bias)

    @property
    def image_size(self) -> int:
        return int(self.facts["image_size"])

    @property
    def embed_dim(self) -> int:
        return int(self.facts["embed_dim"])

    def describe(self) -> dict:
        return {"name": self.spec.display_name, "pretrained": self.spec.pretrained, "backend": self.backend,
                "precision": self.precision}

    # --- images --------------------------------------------------------------------------------------------
    def image_batches(self, paths: Sequence[str], batch_size: int, workers: int | None, decode: DecodeLimits):
        return thread_batches(paths, self.preprocess, batch_size, workers, decode)

    def expect_images(self, count: int) -> None:
        """How many images this run will encode: the image session starts now, in the background (ONNX Runtime
        lets go of the GIL meanwhile, so labels load and images decode alongside), and quick for a short run."""
        self._start("image", self._image_path, count <= QUICK_IMAGES)

    def _start(self, tower: str, path: Path, quick: bool) -> None:
        """Make the tower's session in a background thread, unless it is made or being made."""
        if self._sessions.get(tower) is not None or tower in self._opening:
            return
        made: dict = {}

        def make() -> None:
            try:
                made["session"] = ort_session(external_weights(path), self._threads, quick)
            except BaseException as exc:  # noqa: BLE001  (handed to the thread that needs the session)
                made["error"] = exc

        thread = threading.Thread(target=make, name=f"clipcli-{tower}-session")  # not a daemon: never cut at exit
        thread.start()
        self._opening[tower] = (thread, made)

    def _session(self, tower: str, path: Path, quick: bool = False):
        """The tower's session: the one being made in the background, or one made now."""
        if self._sessions.get(tower) is None:
            if tower not in self._opening:
                self._sessions[tower] = ort_session(external_weights(path), self._threads, quick)
            else:
                thread, made = self._opening.pop(tower)
                thread.join()
                if "error" in made:
                    raise made["error"]
                self._sessions[tower] = made["session"]
        return self._sessions[tower]

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        session = self._session("image", self._image_path)
        return session.run(None, {self._image_input: np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    # --- text ----------------------------------------------------------------------------------------------
    @property
    def text_on_onnx(self) -> bool:
        return bool(self.facts.get("text")) and (self.directory / "text.onnx").is_file()

    def _torch_model(self):
        if self._torch is None:
            from ..models import load_model

            args = self.load_args
            self._torch = load_model(args.get("model", self.spec.name), args.get("pretrained", self.spec.pretrained),
                                     device="cpu", precision="fp32", weights_dir=args.get("weights_dir"))
        return self._torch

    @property
    def tokenizer(self):
        if not self.text_on_onnx:
            return self._torch_model().tokenizer
        if self._tokenizer is None and self.facts["text"].get("mode") == "transformers":
            from ..hf_text import FastTokenizer, TextSettings

            self._tokenizer = FastTokenizer(str(self.directory / "tokenizer.json"),
                                            TextSettings.from_dict(self.facts["text"]["settings"]))
        elif self._tokenizer is None:
            from ..tokenizer import ClipTokenizer

            self._tokenizer = ClipTokenizer(int(self.facts["text"]["context_length"]))
        return self._tokenizer

    def expect_texts(self, count: int) -> None:
        """How many prompts are about to be encoded: the text session starts now, in the background (while the
        tokenizer loads), quick for a few."""
        if self.text_on_onnx:
            self._start("text", self.directory / "text.onnx", count <= QUICK_TEXTS)

    def _encode_transformers_texts(self, texts: Sequence[str], progress) -> np.ndarray:
        """A transformers text tower: the tokenizer's inputs, batches of similar length padded to their longest."""
        from ..hf_text import batch_rows, prompt_lengths

        tokens = self.tokenizer(list(texts))
        order = np.argsort(prompt_lengths(tokens), kind="stable")
        out = np.empty((len(texts), self.embed_dim), dtype=np.float32)
        for start in range(0, len(texts), TEXT_BATCH):
            rows = order[start:start + TEXT_BATCH]
            out[rows] = self._text.run(None, batch_rows(tokens, rows, self.tokenizer.settings))[0]
            if progress is not None:
                progress(min(start + TEXT_BATCH, len(texts)), len(texts))
        return out

    def encode_texts(self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """L2-normalised float32 [len(texts), dim]: each batch runs at its own length (trimmed, exact)."""
        if not self.text_on_onnx:
            return self._torch_model().encode_texts(texts, progress)
        self._text = self._session("text", self.directory / "text.onnx", quick=len(texts) <= QUICK_TEXTS)
        text = self.facts["text"]
        if text.get("mode") == "transformers":
            return self._encode_transformers_texts(texts, progress)
        tokens = self.tokenizer(list(texts))
        if text.get("mode") == "full":  # a tower that is not classic CLIP runs at its full context, as in torch
            ends = np.full(len(texts), tokens.shape[1] - 1)
        elif text["pool"] == "argmax":
            ends = tokens.argmax(axis=1)
        else:
            ends = (tokens == text["eos_id"]).argmax(axis=1)
        order = np.argsort(ends, kind="stable")
        out = np.empty((len(texts), self.embed_dim), dtype=np.float32)
        for start in range(0, len(texts), TEXT_BATCH):
            rows = order[start:start + TEXT_BATCH]
            length = int(ends[rows].max()) + 1
            out[rows] = self._text.run(None, {"tokens": tokens[rows, :length]})[0]
            if progress is not None:
                progress(min(start + TEXT_BATCH, len(texts)), len(texts))
        return out
