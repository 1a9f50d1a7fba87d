"""What checking scan copies costs a store search: each copy's rows, shape and XXH3 hash are checked against what its
shard records before it is used (issue 30: a scan copy is a cache, never trusted).

Side by side in one process, on one synthetic store of random unit 512-d float16 embeddings (page cache warm,
medians of interleaved runs): `search_store` with copies checked (what clipcli does), with copies trusted
unchecked (what it did before), and from Parquet alone (no copies).  Prints times and ratios.

    python bench/bench_scan_check.py [--rows 262144] [--shard-rows 65536] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def build(folder: Path, rows: int, shard_rows: int) -> Path:
    from clipcli.store import StoreModel, open_for_writing

    store = folder / "store"
    rng = np.random.default_rng(0)
    with open_for_writing(store, StoreModel("bench", None, "bench-key"), 512, "float16", shard_rows) as writer:
        for start in range(0, rows, 65536):
            n = min(65536, rows - start)
            vectors = rng.standard_normal((n, 512), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            for i in range(n):
                writer.add(f"/photos/img_{start + i:07d}.jpg", (100_000, 1_700_000_000 + i), (640, 480), vectors[i],
                           None)
    return store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=262144)
    parser.add_argument("--shard-rows", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import clipcli.store as store_module
    from clipcli.search import search_store
    from clipcli.store import open_store

    folder = Path(tempfile.mkdtemp(prefix="bench-scan-check-"))
    try:
        start = time.perf_counter()
        store = open_store(build(folder, args.rows, args.shard_rows))
        print(f"{cpu()}; {args.rows:,} rows in {len(store.shard_names())} shards (built in "
              f"{time.perf_counter() - start:.1f} s)")
        query = np.random.default_rng(1).standard_normal(512).astype(np.float32)
        query /= np.linalg.norm(query)
        checked_load, checked_copy = store_module.load_scan_copy, store_module.ImageStore._scan_copy
        variants = {
            "copies checked (rows, shape, XXH3 hash)": (checked_load, checked_copy),
            "copies trusted unchecked (before)": (lambda path, rows, dim, crc: checked_load(path, rows, dim, None),
                                                  checked_copy),
            "Parquet alone (no copies)": (checked_load, lambda self, name, st=None, shard=None: None),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        want = None
        for _ in range(args.repeats):
            for name, (load, copy) in variants.items():
                store_module.load_scan_copy, store_module.ImageStore._scan_copy = load, copy
                start = time.perf_counter()
                hits = search_store(store, query, k=10)
                times[name].append(time.perf_counter() - start)
                assert want is None or hits == want or name.startswith("Parquet"), name
                want = want or hits
        store_module.load_scan_copy, store_module.ImageStore._scan_copy = checked_load, checked_copy
        base = statistics.median(times["copies trusted unchecked (before)"])
        for name, values in times.items():
            median = statistics.median(values)
            print(f"   {name}: {median:.3f} s = {median / base:.2f}x unchecked (median of {args.repeats})")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
