"""The CLIP tokenizer: clipcli's pure-Python BPE (clipcli/tokenizer.py) against the same tokenizer rebuilt on
Hugging Face `tokenizers` (bench/hf_tokenizer.py), side by side in one run.

1. Equality with open_clip's tokenizer (`open_clip.get_tokenizer("ViT-B-32")`, the reference): token ids
   compared exactly, on hand-picked hard cases, seeded random texts, the 80 ImageNet templates x 1000 class
   names (77-token rows), and every Unicode code point (16 to a text, in five contexts; untruncated ids).
2. Start-up: import + construct + tokenize one prompt, in fresh processes, interleaved, medians.
3. Throughput: the 80 templates x 1000 labels in one call, fresh process each, medians; `tokenizers` with
   its thread pool (the default) and with TOKENIZERS_PARALLELISM=false; text cleaning (ftfy, shared by both)
   measured on its own.

    python bench/bench_tokenizer.py [--random 20000] [--repeats 15] [--step 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

from common import REPO, machine  # noqa: E402

TOKENIZERS = {"python": "clipcli.tokenizer", "tokenizers": "hf_tokenizer"}

STARTUP = """import time
t0 = time.perf_counter()
from {module} import ClipTokenizer
t1 = time.perf_counter()
tokenizer = ClipTokenizer(77)
t2 = time.perf_counter()
tokenizer("a photo of a wonton.")
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, t3 - t0)
"""

THROUGHPUT = """import json, time
texts = json.load(open({prompts!r}))
from {module} import ClipTokenizer
tokenizer = ClipTokenizer(77)
tokenizer("warm up")
if {clean_only}:
    run = lambda: [tokenizer.clean(text) for text in texts]
else:
    run = lambda: tokenizer(texts)
wall, cpu = time.perf_counter(), time.process_time()
run()
print(len(texts), time.perf_counter() - wall, time.process_time() - cpu)
"""


def environment(parallel: bool = True) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(REPO), str(BENCH), os.environ.get("PYTHONPATH", "")]))
    env.pop("TOKENIZERS_PARALLELISM", None)  # open_clip sets it to false when imported (here, for part 1)
    if not parallel:
        env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def child(code: str, env: dict) -> tuple[list[float], float, float]:
    """The numbers a fresh process prints, its wall time from outside, and its CPU time (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return [float(x) for x in out.split()], wall, cpu


def smallest(texts: list[str], differs) -> str:
    """The shortest differing text, or the shortest of its space-separated pieces that differs on its own."""
    text = min(texts, key=len)
    pieces = [piece for piece in text.split() if differs(piece)]
    return min(pieces, key=len) if pieces else text


def equality(random_count: int, step: int) -> None:
    import numpy as np
    import open_clip
    import tokenizer_samples as samples

    from clipcli.tokenizer import ClipTokenizer as PythonTokenizer
    from hf_tokenizer import ClipTokenizer as RustTokenizer

    reference = open_clip.get_tokenizer("ViT-B-32")
    ours = {"python": PythonTokenizer(77), "tokenizers": RustTokenizer(77)}
    rows = {"hard cases": samples.HARD_CASES, "random texts (seed 0)": samples.random_texts(random_count),
            "ImageNet 80 templates x 1000 labels": samples.imagenet_prompts()}
    every = samples.every_code_point(step=step)
    print("1. token ids equal to open_clip's (texts that differ / texts)")
    print(f"   {'sample':<40} {'python':>16} {'tokenizers':>16}")
    found = {name: [] for name in ours}
    for label, texts in rows.items():
        want = reference(texts).numpy()
        wanted = [reference.encode(text) for text in texts] if len(texts) < 50000 else None
        cells = []
        for name, tokenizer in ours.items():
            got = tokenizer(texts)
            bad = [t for t, a, b in zip(texts, got, want) if not np.array_equal(a, b)]
            if wanted is not None:  # untruncated ids too
                seen = set(bad)
                bad += [t for t, w in zip(texts, wanted) if tokenizer.encode(t) != w and t not in seen]
            found[name] += bad
            cells.append(f"{len(bad)} / {len(texts)}")
        print(f"   {label:<40} {cells[0]:>16} {cells[1]:>16}")
    want = [reference.encode(text) for text in every]
    cells = []
    for name, tokenizer in ours.items():
        bad = [t for t, w in zip(every, want) if tokenizer.encode(t) != w]
        found[name] += bad
        cells.append(f"{len(bad)} / {len(every)}")
    label = "every code point" + (f" (every {step}th)" if step > 1 else "")
    print(f"   {label:<40} {cells[0]:>16} {cells[1]:>16}")
    for name, bad in found.items():
        if bad:
            example = smallest(bad, lambda t, tokenizer=ours[name]: tokenizer.encode(t) != reference.encode(t))
            print(f"   {name}: e.g. {ascii(example)}:")
            print(f"     open_clip {reference.encode(example)}")
            print(f"     {name:<9} {ours[name].encode(example)}")


def startup(repeats: int) -> None:
    results = {name: [] for name in TOKENIZERS}
    for _ in range(repeats):
        for name, module in TOKENIZERS.items():  # interleaved, so that load on the machine hits both alike
            inside, wall, cpu = child(STARTUP.format(module=module), environment())
            results[name].append([*inside, wall, cpu])
    print(f"2. start-up, median of {repeats} fresh processes (ms)")
    print(f"   {'':<40} {'python':>10} {'tokenizers':>10} {'ratio':>7}")
    columns = ["import", "construct", "first prompt", "import + construct + first prompt", "whole process (wall)",
               "whole process (CPU)"]
    for i, column in enumerate(columns):
        a, b = (statistics.median(row[i] for row in results[name]) * 1000 for name in TOKENIZERS)
        print(f"   {column:<40} {a:>10.0f} {b:>10.0f} {b / a:>6.2f}x")


def throughput(repeats: int) -> None:
    import json
    import tempfile

    import tokenizer_samples as samples

    prompts = Path(tempfile.mkdtemp()) / "prompts.json"  # made here: open_clip, imported for the class names,
    prompts.write_text(json.dumps(samples.imagenet_prompts()))  # would set TOKENIZERS_PARALLELISM=false
    runs = {"python": ("clipcli.tokenizer", True, False), "tokenizers": ("hf_tokenizer", True, False),
            "tokenizers, TOKENIZERS_PARALLELISM=false": ("hf_tokenizer", False, False),
            "text cleaning alone (ftfy, shared)": ("clipcli.tokenizer", True, True)}
    print(f"3. throughput, 80 ImageNet templates x 1000 labels in one call, median of {repeats} fresh processes")
    base = None
    for label, (module, parallel, clean_only) in runs.items():
        measured = [child(THROUGHPUT.format(prompts=str(prompts), module=module, clean_only=clean_only),
                          environment(parallel))[0] for _ in range(repeats)]
        count = measured[0][0]
        wall = statistics.median(m[1] for m in measured)
        cpu = statistics.median(m[2] for m in measured)
        base = base or wall
        print(f"   {label:<42} {wall:6.2f} s ({count / wall:7.0f} prompts/s, {base / wall:4.2f}x), CPU {cpu:5.2f} s")
    prompts.unlink()
    prompts.parent.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--random", type=int, default=20000, help="seeded random texts in the equality sample")
    parser.add_argument("--step", type=int, default=1, help="take every step-th code point")
    parser.add_argument("--repeats", type=int, default=15, help="fresh processes per start-up measurement")
    parser.add_argument("--throughput-repeats", type=int, default=3)
    args = parser.parse_args()
    import tokenizers

    print(f"machine: {machine()}, tokenizers {tokenizers.__version__}")
    equality(args.random, args.step)
    startup(args.repeats)
    throughput(args.throughput_repeats)


if __name__ == "__main__":
    main()
