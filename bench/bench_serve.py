"""`clip serve` (issue 27): the three speed figures, side by side in one run.

    HF_HUB_OFFLINE=1 python bench/bench_serve.py [--images 64] [--rounds 3] [--repeats 20] [--requests 5000]

1. one image over HTTP to a warm service (labels cached): median latency of sequential requests, as a ratio to
   `clip classify one.jpg` from process start (same model, image and labels; target <= 0.2x) and to the model's
   own single-image encode time, measured in this process on the same preprocessed image (the floor; target
   <= 1.5x).
2. 16 concurrent clients each posting single images: total images/s, as a ratio to `clip classify DIR` on the
   same images (whole command; target >= 0.8x) and to the same service with batching off (--max-batch 1;
   target >= 3x); interleaved rounds, medians.
3. memory: the service's RSS after 5,000 requests against its RSS after 500 (target within 10%).

1 and 2 use ViT-B-32 with seeded random weights (bench/common.py; speed does not depend on the weights) on the
default backend, 1-2 use drawn shapes saved as 512 px JPEGs; 3 uses the demo model (many requests quickly).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, clip_command, machine, vit_b32_dir  # noqa: E402

LABELS = "red circle,blue square,green star,yellow triangle,purple heart"
CLIENTS = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`clip serve` in a child process, ready when /health answers."""

    def __init__(self, model: str, env: dict, *args: str) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([*clip_command(), "serve", "-m", model, "--port", str(self.port), "-q", *args],
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(3000):
            if self.process.poll() is not None:
                raise SystemExit(f"clip serve failed: {self.process.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise SystemExit("clip serve did not start")

    def rss_mb(self) -> float:
        """Resident memory of the server process (the `clip` script runs it in-process)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def post(client, path: Path, labels: str = LABELS) -> dict:
    response = client.post("/v1/classify", files=[("image", (path.name, path.read_bytes()))], data={"labels": labels})
    if response.status_code != 200:
        raise SystemExit(f"{response.status_code}: {response.text}")
    return response.json()


def images(count: int) -> list[Path]:
    from clipcli.demo import shapes

    folder = DATA / f"serve-shapes-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    names = shapes.seen_labels()
    paths = []
    for i in range(count):
        colour, shape = names[i % len(names)].split(" ", 1)
        path = folder / f"{i:03d}.jpg"
        if not path.exists():
            shapes.draw_pil(colour, shape, size=512, seed=7000 + i).save(path, quality=90)
        paths.append(path)
    return paths


def wall(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def latency(model: str, env: dict, one: Path, repeats: int) -> None:
    """Interleaved, so the three see the same load on a shared machine: per round, the model's own encode of the
    preprocessed image in this process (the floor), decode + preprocess + encode, and one HTTP request; every
    fourth round also `clip classify one.jpg` from process start."""
    import httpx
    import numpy as np

    from clipcli.embeddings import load_model_for
    from clipcli.images import read_image
    from clipcli.options import ModelOptions

    clip = clip_command()
    classify = [*clip, "classify", str(one), "-m", model, "-l", LABELS, "-f", "json"]
    wall(classify, env)  # export made, labels cached
    loaded = load_model_for(ModelOptions(model))
    pixels = np.asarray(loaded.preprocess(read_image(str(one))[0]), dtype=np.float32)[None]
    for _ in range(3):
        loaded.encode_pixels(pixels)
    server = Server(model, env)
    times: dict[str, list[float]] = {"cli": [], "encode": [], "whole": [], "http": []}
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            post(client, one)  # labels encoded and cached
            for round_ in range(repeats):
                start = time.perf_counter()
                loaded.encode_pixels(pixels)
                times["encode"].append(time.perf_counter() - start)
                start = time.perf_counter()
                loaded.encode_pixels(np.asarray(loaded.preprocess(read_image(str(one))[0]), dtype=np.float32)[None])
                times["whole"].append(time.perf_counter() - start)
                start = time.perf_counter()
                post(client, one)
                times["http"].append(time.perf_counter() - start)
                if round_ % 4 == 0:
                    times["cli"].append(wall(classify, env))
    finally:
        server.close()
    cli, encode, whole, http = (statistics.median(times[k]) for k in ("cli", "encode", "whole", "http"))
    print(f"\n1. one image, medians of {repeats} interleaved rounds (clip classify: {len(times['cli'])}); "
          f"ViT-B-32, {one.name}, 512 px JPEG")
    print(f"   clip classify one.jpg from process start: {cli * 1000:.0f} ms")
    print(f"   model's own single-image encode (the floor): {encode * 1000:.1f} ms "
          f"(with decoding and preprocessing: {whole * 1000:.1f} ms)")
    print(f"   HTTP to the warm service (labels cached): {http * 1000:.1f} ms = {http / cli:.3f}x clip classify "
          f"(target <= 0.2x), {http / encode:.2f}x the encode floor (target <= 1.5x; "
          f"{http / whole:.2f}x decode + preprocess + encode)")
    low = {k: min(v) for k, v in times.items()}
    print(f"   fastest of each (less sensitive to a shared machine's load): clip classify {low['cli'] * 1000:.0f} ms, "
          f"encode {low['encode'] * 1000:.1f} ms, HTTP {low['http'] * 1000:.1f} ms = "
          f"{low['http'] / low['cli']:.3f}x clip classify, {low['http'] / low['encode']:.2f}x the floor")


def batching_ceiling(model: str, rounds: int) -> tuple[float, float]:
    """What batching can give at most on this machine: the model alone, 16 single-image calls against one call
    of 16 (random pixels), interleaved rounds; medians of (seconds for 16 x batch 1, seconds for batch 16)."""
    import numpy as np

    from clipcli.embeddings import load_model_for
    from clipcli.options import ModelOptions

    loaded = load_model_for(ModelOptions(model))
    size = loaded.image_size
    pixels = np.random.default_rng(0).random((CLIENTS, 3, size, size), dtype=np.float32)
    loaded.encode_pixels(pixels[:1])
    loaded.encode_pixels(pixels)
    singles, batches = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(CLIENTS):
            loaded.encode_pixels(pixels[i:i + 1])
        singles.append(time.perf_counter() - start)
        start = time.perf_counter()
        loaded.encode_pixels(pixels)
        batches.append(time.perf_counter() - start)
    return statistics.median(singles), statistics.median(batches)


def throughput(model: str, env: dict, paths: list[Path], rounds: int) -> None:
    """Interleaved rounds of `clip classify DIR`, the batching service and the service with batching off (both
    services up the whole time), so that all three see the same load on a shared machine; medians."""
    import httpx

    folder = paths[0].parent
    clip = clip_command()
    classify = [*clip, "classify", str(folder), "-m", model, "-l", LABELS, "-f", "jsonl"]
    servers = {"on": Server(model, env), "off": Server(model, env, "--max-batch", "1")}
    times: dict[str, list[float]] = {"cli": [], "on": [], "off": []}
    calls: dict[str, list[int]] = {"on": [], "off": []}

    def model_calls(server: Server) -> int:
        metrics = httpx.get(server.url + "/metrics").text
        return int(next(float(line.split()[-1]) for line in metrics.splitlines()
                        if line.startswith("clipcli_batch_images_count")))

    def load(server: Server) -> float:
        def client(index: int) -> int:
            done = 0
            with httpx.Client(base_url=server.url, timeout=600) as http:
                for path in paths[index::CLIENTS]:
                    done += "predictions" in post(http, path)["results"][0]
            return done

        start = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            done = sum(pool.map(client, range(CLIENTS)))
        assert done == len(paths), f"{done} of {len(paths)} answered"
        return time.perf_counter() - start

    try:
        for server in servers.values():
            with httpx.Client(base_url=server.url, timeout=300) as warm:
                post(warm, paths[0])  # labels cached
        for _ in range(rounds):
            times["cli"].append(wall(classify, env))
            for name, server in servers.items():
                before = model_calls(server)
                times[name].append(load(server))
                calls[name].append(model_calls(server) - before)
    finally:
        for server in servers.values():
            server.close()
    n = len(paths)
    cli, on, off = (statistics.median(times[k]) for k in ("cli", "on", "off"))
    print(f"\n2. {n} images (ViT-B-32, 512 px JPEGs), {CLIENTS} concurrent clients posting one image each; "
          f"medians of {rounds} interleaved rounds")
    print(f"   clip classify DIR (whole command): {cli:.2f} s = {n / cli:.2f} images/s")
    print(f"   service, batching on (--max-batch 32): {on:.2f} s = {n / on:.2f} images/s, model calls per round "
          f"{calls['on']} = {cli / on:.2f}x clip classify DIR (target >= 0.8x)")
    print(f"   service, batching off (--max-batch 1): {off:.2f} s = {n / off:.2f} images/s, model calls per round "
          f"{calls['off']}; batching on is {off / on:.2f}x faster (target >= 3x)")
    single, batch = batching_ceiling(model, max(3, rounds))
    print(f"   the model alone: {CLIENTS} calls of 1 image {single:.2f} s, one call of {CLIENTS} {batch:.2f} s: "
          f"batching can give at most {single / batch:.2f}x here")
    print("   rounds (s): " + "; ".join(f"{k} " + ", ".join(f"{t:.1f}" for t in v) for k, v in times.items()))


def memory(env: dict, requests: int, paths: list[Path]) -> None:
    import httpx

    server = Server("demo", env)
    label_sets = [LABELS, "red circle,blue square", "green star,yellow triangle,pink ring", "white cross,orange star"]
    marks = {}
    try:
        def client(index: int) -> None:
            with httpx.Client(base_url=server.url, timeout=120) as http:
                for i in range(index, requests // 10, 4):
                    post(http, paths[i % len(paths)], label_sets[i % len(label_sets)])

        for stage in range(10):  # 10 stages of requests/10, 4 clients each
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(client, range(4)))
            marks[(stage + 1) * requests // 10] = server.rss_mb()
    finally:
        server.close()
    early, late = marks[requests // 10], marks[requests]
    print(f"\n3. memory of the service (demo model), 4 clients, {len(label_sets)} label lists, "
          f"{len(paths)} different images")
    print("   RSS after " + ", ".join(f"{n}: {mb:.0f} MB" for n, mb in marks.items()))
    print(f"   after {requests} / after {requests // 10}: {late / early:.3f} (target within 10%)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    print(machine())
    os.environ.update({"CLIPCLI_CACHE_DIR": str(DATA / "backend-cache"), "HF_HUB_OFFLINE": "1"})
    env = dict(os.environ)  # the floor (in this process) uses the same ONNX export as the commands
    model = f"local-dir:{vit_b32_dir()}"
    paths = images(args.images)
    started = time.perf_counter()
    latency(model, env, paths[0], args.repeats)
    throughput(model, env, paths, args.rounds)
    memory(env, args.requests, paths)
    print(f"\nbench finished in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
