"""Issue 30: `clip fit --method logistic` against scikit-learn's LogisticRegressionCV, side by side in one run.

Same features for both: scikit-learn's digits (tools/digits_dataset.py: 896 training / 901 test images) through
the demo model, as the test `tests/test_fewshot_logistic.py` makes them.  For all training digits and for 16
shots per class (drawn with seed 0): our probe's fit (`clipcli.fewshot.fit_head(..., "logistic")`: the C search
by 5-fold cross-validation and the final fit) and `LogisticRegressionCV(max_iter=1000)` (its defaults: 10 C
values 1e-4 ... 1e4, 5 folds), fit time, test accuracy and the chosen C, and the ratio of the times.

Both fits run twice: with the BLAS libraries' default threads (what a user gets), then with one thread each
(threadpoolctl; on a busy machine the threads of scipy's BLAS, which L-BFGS-B calls every iteration, cost more
than the arithmetic).  Each time is the median of --repeats fits.

    python bench/bench_logistic.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from common import DATA, machine  # noqa: E402


def features() -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    """Demo-model features of the digits, cached in bench/data/logistic-digits.npz."""
    cache = DATA / "logistic-digits.npz"
    if not cache.is_file():
        from digits_dataset import demo_features

        (x, y), (test_x, test_y) = demo_features(DATA / "digits")
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, x=x, y=np.asarray(y), test_x=test_x, test_y=np.asarray(test_y))
    saved = np.load(cache)
    return saved["x"], saved["y"].tolist(), saved["test_x"], saved["test_y"].tolist()


def ours(x, y, test_x, test_y) -> tuple[float, float, float]:
    from clipcli import fewshot

    text = np.eye(10, x.shape[1], dtype=np.float32)  # unused by the probe
    start = time.perf_counter()
    head = fewshot.fit_head(x, y, [str(i) for i in range(10)], text, 100.0, "logistic")
    seconds = time.perf_counter() - start
    return seconds, fewshot.accuracy(head, test_x, test_y), head.params["C"]


def theirs(x, y, test_x, test_y) -> tuple[float, float, float]:
    from sklearn.linear_model import LogisticRegressionCV

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's notices of its own API changes
        reference = LogisticRegressionCV(max_iter=1000).fit(x, y)
    seconds = time.perf_counter() - start
    return seconds, reference.score(test_x, test_y), float(reference.C_[0])


def compare(label: str, x, y, test_x, test_y, repeats: int) -> None:
    runs = {"ours": [], "LogisticRegressionCV": []}
    for _ in range(repeats):  # alternating, so that both see the same load
        runs["ours"].append(ours(x, y, test_x, test_y))
        runs["LogisticRegressionCV"].append(theirs(x, y, test_x, test_y))
    times = {name: statistics.median(r[0] for r in rows) for name, rows in runs.items()}
    for name, rows in runs.items():
        _, accuracy, c = rows[-1]
        print(f"   {label:24s} {name:21s} {times[name]:7.2f} s  test {accuracy:.2%}  C={c:.3g}  "
              f"(times: {', '.join(f'{r[0]:.2f}' for r in rows)})")
    gap = 100 * (runs["ours"][-1][1] - runs["LogisticRegressionCV"][-1][1])
    print(f"   {label:24s} ours / LogisticRegressionCV: time {times['ours'] / times['LogisticRegressionCV']:.2f}x, "
          f"accuracy {gap:+.2f} points")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import scipy.optimize  # noqa: F401 (its BLAS loaded, so that threadpoolctl sees and limits it)
    import sklearn.linear_model  # noqa: F401
    from threadpoolctl import threadpool_info, threadpool_limits

    from clipcli import fewshot

    x, y, test_x, test_y = features()
    chosen = fewshot.sample_shots(y, 16, seed=0)
    sets = [("all training digits", x, y), ("16 shots per class", x[chosen], [y[i] for i in chosen])]
    print(machine())
    print("BLAS: " + ", ".join(f"{i['internal_api']} {i['version']} ({i['num_threads']} threads, {Path(i['filepath']).name})"
                              for i in threadpool_info() if i["user_api"] == "blas"))
    print(f"digits, demo-model features: {len(y)} train / {len(test_y)} test, {x.shape[1]}-d; "
          f"median of {args.repeats} fits each")
    for threads in (None, 1):
        print(f"\n{'default BLAS threads' if threads is None else 'one BLAS thread (threadpoolctl)'}")
        with threadpool_limits(threads):
            for label, xs, ys in sets:
                compare(label, xs, ys, test_x, test_y, args.repeats)


if __name__ == "__main__":
    main()
