"""The Ray engine: decoding in Ray Data tasks, encoding in an actor pool, results back in input order.

Ray Data's batch-inference pattern: the input list becomes a dataset; `map_batches` with a plain
function decodes and preprocesses (CPU tasks, `batches.decode_one`, the local engine's own decode
step); `map_batches` with a callable class encodes, each actor loading the model once in its
constructor (`backends.load_backend_model`, the same backend and files as the driver; `num_gpus` per
actor with `--gpus-per-worker`).  The driver iterates the result with order preserved and gets the
same (items, features) batches as the local engine, so scoring, writing records and writing the
store are the local code paths unchanged.  Ray retries a task or restarts an actor whose worker
died; every input index is checked to arrive exactly once.

Inputs are local paths readable from every node (shared storage; `file://` URIs are read as paths by
`images.discover`), or object-storage URIs (s3://, gs://): the driver lists them and each decode task
reads its objects through pyarrow's filesystems (`remote`), with the credentials of its node.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from ..batches import BatchItem, DecodeLimits, decode_one
from ..errors import EngineError, UsageError, first_line


@dataclass(frozen=True)
class RaySettings:
    address: str | None = None  # None: start a local Ray with this machine's cores; "auto": join a running cluster
    workers: int | None = None  # encoder actors (default 1)
    gpus_per_worker: float = 0.0


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError("--engine ray needs Ray: pip install 'ray[data]>=2.9' (in a clipcli checkout: pip install "
                         "'.[ray]')") from None
    return ray


def _reachable(address: str, timeout: float = 3.0) -> bool:
    import socket

    host, _, port = address.rpartition(":")
    host = host.split("://")[-1]
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
        return True
    except (OSError, ValueError):
        return False


def cluster_address(settings: RaySettings) -> tuple[str | None, str]:
    """The cluster this run joins and how the user named it: --ray-address, $RAY_ADDRESS (a Ray job, a KubeRay
    pod), or the cluster that `ray start` started on this machine; (None, "") to start a local Ray."""
    if settings.address:
        return settings.address, f"--ray-address {settings.address}"
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}"
    try:  # where Ray itself looks (ray.init() joins that cluster rather than start one)
        from ray._private.services import find_bootstrap_address

        found = find_bootstrap_address(None)
    except Exception:  # noqa: BLE001  (a private helper of Ray's: without it, a local Ray is started)
        found = None
    return (found, f"the Ray cluster running on this machine ({found})") if found else (None, "")


def _auth_failure(exc: BaseException) -> bool:
    """Whether a failed connection was refused for want of the cluster's token (Ray says so only deep in the
    exception's causes)."""
    seen = 0
    while exc is not None and seen < 10:
        if type(exc).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def start_ray(settings: RaySettings) -> bool:
    """Connect to (or start) Ray; False when this process was connected already (nothing started here).  An existing
    cluster (see cluster_address) is joined with its own resources; only a Ray started here is sized to this
    machine's cores."""
    import importlib.util
    import logging

    ray = require_ray()
    if ray.is_initialized():
        return False
    address, named = cluster_address(settings)
    if address and address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise UsageError(f"{named}: a ray:// address needs Ray Client: pip install 'ray[client]' (or run on a node "
                         "of the cluster and give its GCS address, HOST:6379)")
    if address and address != "auto" and not address.startswith("ray://") and not _reachable(address):
        raise EngineError(f"cannot reach a Ray cluster at {named}; start one with `ray start --head`, "
                          "or leave the option out to start a local Ray")
    quiet = logging.getLogger().getEffectiveLevel() > logging.INFO  # no --verbose: Ray's log lines stay off stderr
    if quiet:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        for name in ("ray", "ray.data"):  # a fault that ends the run is told in one line of our own
            logging.getLogger(name).setLevel(logging.CRITICAL)
    saved = os.dup(2) if quiet else None
    try:
        if quiet:  # the core prints a line about its own log level while it starts
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        if address:  # the cluster found on this machine: Ray finds it again itself (and then uses its token)
            ray.init(address=None if named.startswith("the Ray cluster running") else address, log_to_driver=False,
                     configure_logging=False)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
    except (ConnectionError, RuntimeError) as exc:
        if _auth_failure(exc):
            raise EngineError(f"the Ray cluster at {named} uses token authentication and this process gave no valid "
                              "token: set RAY_AUTH_MODE=token, and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the "
                              "cluster's token (`ray get-auth-token` on its head node)") from None
        raise EngineError(f"cannot reach the Ray cluster at {named}: {first_line(exc)}") from None
    except ValueError as exc:
        if "ray[client]" in str(exc):
            raise UsageError(f"{named}: a ray:// address needs Ray Client: pip install 'ray[client]'") from None
        raise
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
    return True


def decode_rows(batch: dict, preprocess, options: DecodeLimits, shape: tuple[int, ...]) -> dict:
    """Ray task: decode and preprocess one batch of paths (bad files become error rows; the videos the task
    opened are closed at its end: a worker outlives the run)."""
    from ..frames import close_readers

    try:
        rows = [decode_one(str(path), preprocess, options) for path in batch["path"]]
    finally:
        close_readers()
    pixels = np.zeros((len(rows), *shape), dtype=np.float32)
    for i, row in enumerate(rows):
        if row[1] is not None:
            pixels[i] = np.asarray(row[1], dtype=np.float32)
    return {"index": batch["index"], "path": batch["path"], "pixels": pixels,
            "ok": np.array([row[1] is not None for row in rows], dtype=bool),
            "error_kind": np.array([row[2][0] if row[2] else "" for row in rows], dtype=object),
            "error_message": np.array([row[2][1] if row[2] else "" for row in rows], dtype=object),
            "width": np.array([row[3][0] if row[3] else -1 for row in rows], dtype=np.int64),
            "height": np.array([row[3][1] if row[3] else -1 for row in rows], dtype=np.int64)}


class ActorEncoder:
    """Ray actor: the model, loaded once; encodes the decoded rows of each batch."""

    def __init__(self, load_args: dict) -> None:
        from ..backends import load_backend_model

        self.model = load_backend_model(**load_args)

    def __call__(self, batch: dict) -> dict:
        from ..vectors import as_array

        ok = batch["ok"]
        features = np.zeros((len(ok), self.model.embed_dim), dtype=np.float32)
        if ok.any():
            features[ok] = as_array(self.model.encode_pixels(batch["pixels"][ok]))
        out = {key: value for key, value in batch.items() if key != "pixels"}
        out["embedding"] = features
        return out


def bound_encoder(load_args: dict) -> type:
    """The ActorEncoder with its load arguments in the class itself: Ray ships the class with the function, and no
    constructor arguments sit in the object store (where a restarted actor could lose them)."""

    class BoundEncoder(ActorEncoder):
        def __init__(self) -> None:
            super().__init__(load_args)

    return BoundEncoder


def worker_load_args(loaded) -> dict:
    args = dict(loaded.load_args or {})
    if not args:
        raise UsageError("--engine ray needs a model loaded with clipcli.backends.load_backend_model")
    args["backend"] = loaded.backend  # the backend the driver resolved: every worker runs the same one
    return args


class _Notices:
    """Where Ray's driver notices go while a run is in flight: stderr, without colour codes unless stderr is a
    terminal (see _ray_notices_to_stderr)."""

    ANSI = __import__("re").compile(r"\x1b\[[0-9;]*[A-Za-z]")

    def write(self, text: str) -> int:
        target = sys.stderr
        isatty = getattr(target, "isatty", None)
        target.write(text if isatty is not None and isatty() else self.ANSI.sub("", text))
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def _ray_notices_to_stderr():
    """Ray's driver prints its notices (a task retried after a worker died, a node that died, ...) to sys.stdout,
    where the records go: while a run is in flight, sys.stdout points at stderr (colour codes stripped when stderr
    is not a terminal).  Without --verbose they are not printed at all: a fault that stops the run is told in one
    line of our own (see ClusterWatch), and a retried task changes nothing in the results.  Callers that write
    records hold the real stdout object already (the CLI opens its sink before the run).  A notice can arrive after
    the last batch, so a Ray that the run started is shut down before sys.stdout is given back."""
    import logging

    saved = sys.stdout
    sys.stdout = _Notices()
    worker = None
    if logging.getLogger().getEffectiveLevel() > logging.INFO:  # no --verbose
        try:
            import ray._private.worker as worker  # the switch Ray's own debugger uses to mute worker output
        except ImportError:
            worker = None
    muted = getattr(worker, "_worker_logs_enabled", None)
    if muted is not None:
        worker._worker_logs_enabled = False
    try:
        yield
    finally:
        if not FAILURE:  # after a failed cluster, Ray's threads may still print as the process ends: not to stdout
            sys.stdout = saved
            if muted is not None:
                worker._worker_logs_enabled = muted


FAILURE: list[str] = []  # why the cluster was given up on mid-run (see ClusterWatch); read by the CLI on Ctrl-C
_REPORTER: list[str] = []  # who tells the user: the main thread (an exception) or the watch (last resort)
_REPORTER_LOCK = __import__("threading").Lock()


def _claim(who: str, wait: float = 0.0) -> bool:
    """Whether `who` is the one to report the failure (the first to claim it, the watch only after `wait` s)."""
    import time

    deadline = time.monotonic() + wait
    while who == "watch" and time.monotonic() < deadline and not _REPORTER:
        time.sleep(0.05)
    with _REPORTER_LOCK:
        if not _REPORTER:
            _REPORTER.append(who)
        return _REPORTER[0] == who


def cluster_failure() -> str | None:
    """The one-line cause when a run was stopped because its Ray cluster failed (and this thread is the one to
    say so), else None."""
    return FAILURE[-1] if FAILURE and _claim("main") else None


def _pidfd(node) -> int | None:
    """A pidfd on the raylet when this process started it (a child of this process, so its pid is not reused
    while it is a zombie); None for a raylet started elsewhere, or where pidfds do not exist (not Linux 5.3+)."""
    try:
        pid = node.all_processes["raylet"][0].process.pid
        return os.pidfd_open(pid)
    except (AttributeError, KeyError, IndexError, OSError):
        return None


def _give_up(failure: str) -> None:
    """End the process now with the failure's line and EngineError's code: from the watch thread, so the
    `finally` blocks of the main thread do not run; the temporary files of the writes in progress are removed
    here instead (what was renamed into place and what the store committed stay)."""
    from ..fsutil import remove_temp_files

    remove_temp_files()
    os.write(2, f"error: {failure}\n".encode("utf-8", "replace"))
    os._exit(EngineError.exit_code)


class ClusterWatch:
    """Watches, while a run is in flight, the two Ray processes it cannot go on without: the GCS (the cluster's
    head) and the raylet of this node.  Ray itself ends the driver's process when they go, with exit code 1,
    this tool's code for "some images failed", and nothing on stderr: after 60 s of silence for the GCS
    (`gcs_rpc_server_reconnect_timeout_s`); for the raylet, at the first request its core worker makes to the
    raylet's object store after the raylet died (plasma's "connection to the plasma store is failed. Terminate
    the process": `_Exit(1)` in C++, no setting turns it off, and no Python code runs after it), which can come
    at once (a failed task's error object) or only when the GCS marks the node dead (15 s).  Instead, once
    either goes, the run is stopped here with one line naming the cause and EngineError's exit code; records and
    store rows committed so far are kept, and a rerun resumes.

    The raylet: a raylet this process started is watched through a pidfd, which wakes the watch the moment it
    exits (a raylet started elsewhere is polled, and given up on after FATAL_MISSES refused connections); the
    watch then ends the process itself at once (_give_up): interrupting the main thread and waiting for it, as
    for the GCS, would leave Ray time to end the process first.  The GCS: the main thread is interrupted (as
    Ctrl-C does) and ends the run itself (the store committed); the watch ends it after HANDOVER s if the main
    thread cannot.  The GCS of a Ray this run started is fatal at once; the GCS of an existing cluster may come
    back (GCS fault tolerance), so the run waits for it, with a warning, for 3/4 of Ray's reconnect timeout."""

    INTERVAL = 0.5
    FATAL_MISSES = 3
    HANDOVER = 2.0  # seconds the main thread has to end the run itself once interrupted

    def __init__(self, ray) -> None:
        import threading

        self._stop = threading.Event()
        self._thread = None
        try:
            node = ray._private.worker.global_worker.node
            self.gcs = str(node.gcs_address)
            self.raylet = f"{node.node_ip_address}:{int(node.node_manager_port)}"
            self.local = bool(getattr(node, "head", False))
            # Ray's setting, as Ray reads it (its environment variable; 60 s unless set)
            grace = float(os.environ.get("RAY_gcs_rpc_server_reconnect_timeout_s") or 60) * 0.75
        except Exception:  # noqa: BLE001  (Ray's internals moved: run without the watch, as before)
            return
        self.gcs_grace = 0.0 if self.local else grace
        self._pidfd = _pidfd(node)
        FAILURE.clear()
        _REPORTER.clear()
        self._thread = threading.Thread(target=self._watch, name="clipcli-ray-watch", daemon=True)
        self._thread.start()

    def _raylet_died(self, misses: int) -> tuple[bool, int]:
        """Wait INTERVAL s (less when the raylet exits meanwhile); whether the raylet is gone, and the misses."""
        if self._pidfd is not None:
            import select

            poller = select.poll()
            poller.register(self._pidfd, select.POLLIN)  # readable once the process has exited
            return bool(poller.poll(self.INTERVAL * 1000)), 0
        self._stop.wait(self.INTERVAL)
        misses = 0 if _reachable(self.raylet, timeout=1.0) else misses + 1
        return misses >= self.FATAL_MISSES, misses

    def _watch(self) -> None:
        try:
            self._watch_until_stopped()
        finally:
            if self._pidfd is not None:
                os.close(self._pidfd)

    def _watch_until_stopped(self) -> None:
        import _thread
        import signal
        import threading
        import time
        import warnings

        from ..errors import ClipCliWarning

        raylet_misses = gcs_misses = 0
        gcs_lost_at = None
        while True:
            raylet_died, raylet_misses = self._raylet_died(raylet_misses)
            if self._stop.is_set():  # the run is over (and a Ray it started is being shut down)
                return
            if raylet_died:
                FAILURE.append(f"the Ray raylet of this node ({self.raylet}) died mid-run (killed, or out of "
                               "memory); what was done is kept: rerun to finish")
                if _claim("watch"):
                    _give_up(FAILURE[-1])
                return
            gcs_misses = 0 if _reachable(self.gcs, timeout=1.0) else gcs_misses + 1
            if gcs_misses < self.FATAL_MISSES:
                gcs_lost_at = None if gcs_misses == 0 else gcs_lost_at
                continue
            now = time.monotonic()
            if gcs_lost_at is None and self.gcs_grace > 0:
                gcs_lost_at = now
                warnings.warn(f"the Ray cluster's GCS at {self.gcs} stopped answering; waiting up to "
                              f"{self.gcs_grace:.0f} s for it to come back", ClipCliWarning, stacklevel=1)
            if gcs_lost_at is not None and now - gcs_lost_at < self.gcs_grace:
                continue
            FAILURE.append(f"the Ray cluster's GCS at {self.gcs} died mid-run (the head of the cluster); what was "
                           "done is kept: rerun to finish")
            # The main thread waits in Ray: a SIGINT ends the run as Ctrl-C does, when Ray lets it; Ray holds on
            # for 60 s without its GCS, time enough.  If Ray holds the main thread in a call that never looks at
            # signals, the line and the exit code are given here after HANDOVER s.
            try:
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            except (OSError, ValueError, AttributeError):
                _thread.interrupt_main()
            if _claim("watch", self.HANDOVER):
                _give_up(FAILURE[-1])
            return

    def stop(self) -> None:
        self._stop.set()  # the thread sees it within INTERVAL s, or at once when the raylet is shut down

    @property
    def failure(self) -> str | None:
        return cluster_failure()


def ray_batches(loaded, paths: Sequence[str], batch_size: int, decode: DecodeLimits, settings: RaySettings,
                progress: Callable[[int, int], None] | None = None) -> Iterator[tuple[list[BatchItem], np.ndarray | None]]:
    """(items, L2-normalised float32 features of the decoded items) per batch, in input order."""
    if not paths:
        return
    with _ray_notices_to_stderr():
        yield from _ray_batches(loaded, paths, batch_size, decode, settings, progress)


def _ray_batches(loaded, paths, batch_size, decode, settings, progress):
    ray = require_ray()
    started = start_ray(settings)
    watch = ClusterWatch(ray)
    try:
        yield from _run(ray, loaded, paths, batch_size, decode, settings, progress)
    except KeyboardInterrupt:
        if watch.failure is not None:
            raise EngineError(watch.failure) from None
        raise
    finally:
        watch.stop()
        if FAILURE:  # a Ray shut down at exit with its raylet or GCS dead ends the process itself, with exit 1
            import atexit

            atexit.unregister(ray.shutdown)  # (a Ray started here is ended by its reaper when this process ends)
            atexit.unregister(getattr(ray._private.worker, "shutdown", ray.shutdown))
        elif started:  # its notices (a retried task, ...) stop here, while they still go to stderr
            ray.shutdown()


def _run(ray, loaded, paths, batch_size, decode, settings, progress):
    from PIL import Image

    shape = tuple(np.asarray(loaded.preprocess(Image.new("RGB", (8, 8)))).shape)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    dataset = ray.data.from_items([{"index": i, "path": path} for i, path in enumerate(paths)])
    # Decoding asks for half a CPU: with the same request as the encoder, Ray Data fuses both maps into the
    # actor, which then decodes and encodes in turn; as separate tasks they decode while the actor encodes
    # (measured: 0.60x the local engine fused, 1.01x apart; bench/RESULTS.md).
    dataset = dataset.map_batches(decode_rows, fn_kwargs={"preprocess": loaded.preprocess, "options": decode,
                                                          "shape": shape},
                                  batch_size=batch_size, batch_format="numpy", num_cpus=0.5)
    dataset = dataset.map_batches(bound_encoder(worker_load_args(loaded)), batch_size=batch_size, batch_format="numpy", concurrency=settings.workers or 1,
                                  num_gpus=settings.gpus_per_worker or None, num_cpus=1)
    seen = np.zeros(len(paths), dtype=bool)
    done = 0
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2):
        items, rows = [], []
        for j, index in enumerate(batch["index"]):
            index = int(index)
            if seen[index]:
                continue  # a retried task's duplicate: each input once
            seen[index] = True
            path = paths[index]
            if batch["ok"][j]:
                items.append(BatchItem(path, None, (int(batch["width"][j]), int(batch["height"][j]))))
                rows.append(batch["embedding"][j])
            else:
                items.append(BatchItem(path, (str(batch["error_kind"][j]), str(batch["error_message"][j]))))
        done += len(items)
        if items:
            yield items, (np.stack(rows).astype(np.float32, copy=False) if rows else None)
        if progress is not None:
            progress(done, len(paths))
    if not seen.all():
        raise EngineError(f"the Ray run lost {int((~seen).sum())} of {len(paths)} inputs")
