"""Few-shot heads on frozen CLIP image embeddings: fit from a handful of labelled images per class.

Every head is a scorer like the zero-shot classifier: L2-normalised image features in, scores out.
Hyper-parameters are chosen by k-fold cross-validation on the training shots alone.

Methods (features x, zero-shot class embeddings t_c, the model's logit scale s):
- `gda` (default): Gaussian discriminant analysis on the features (class means, one shared covariance
  shrunk towards a multiple of the identity), added to the zero-shot logits:
  logits = s x.t_c + alpha (x.W_c + b_c), W = P mu, b = -1/2 mu.P mu.  Closed form, so cross-validating
  alpha (0 = zero-shot) and the shrinkage costs milliseconds.  Training-free baseline of Wang et al.,
  "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation" (ICLR 2024).
- `logistic`: the CLIP paper's linear probe: multinomial logistic regression on the features, L2 penalty,
  L-BFGS, C by cross-validation (scikit-learn's LogisticRegressionCV objective), searched as the paper did:
  a coarse sweep over 1e-6 ... 1e6 (decades; past C = 1 it stops two decades after its peak), then a finer
  one (quarter decades) around the best.
- `tip-adapter`: Tip-Adapter (Zhang et al., 2022), training-free: a cache of the shots' features,
  logits = s x.t_c + alpha exp(-beta (1 - x.K)) L, alpha and beta by cross-validation.
- `zero-shot`: the text embeddings alone (for curves: the 0-shot point).

numpy throughout (scipy's L-BFGS-B for the logistic probe, imported when it fits), never torch: fitting a head
and scoring with one stay on the torch-free path.  Shots and folds are drawn exactly as torch.randperm drew them
(the same Mersenne Twister, seeded the same way), so a seed picks the same images as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import UsageError
from .heads import METHODS, FewShotHead, accuracy, check_head_model, load_head, save_head  # noqa: F401 (API)
from .vectors import as_array, unit_rows

DEFAULT_METHOD = "gda"
C_GRID = tuple(float(10.0 ** k) for k in range(-6, 7))  # 1e-6 ... 1e6, decades: the coarse sweep
C_FINE = (-0.5, -0.25, 0.25, 0.5)  # then these steps (in decades) around the best coarse C
C_PATIENCE = 2  # from C = 1 on, the coarse sweep stops after this many C values in a row below its best
LOGISTIC_MAX_ITER = 1000  # L-BFGS iterations (scikit-learn's 100 stop short of the optimum at large C)
GDA_SHRINKAGE = (0.01, 0.05, 0.2, 0.5, 0.8, 0.95)
GDA_ALPHA = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 1000.0)  # times zero-shot / GDA logit spread
TIP_ALPHA = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0)
TIP_BETA = (1.0, 3.0, 5.5, 8.0, 12.0)
MAX_FOLDS = 5


def _permutations(seed: int):
    """torch.randperm(n, generator=torch.Generator().manual_seed(seed)) one call after another, without torch:
    the same MT19937 stream (numpy's legacy seeding is torch's) and the same Fisher-Yates draws."""
    bits = np.random.RandomState(int(seed) % 2 ** 32)._bit_generator

    def randperm(n: int) -> list[int]:
        order = list(range(n))
        if n > 1:
            for i, draw in enumerate(bits.random_raw(n - 1).tolist()):
                j = i + draw % (n - i)
                order[i], order[j] = order[j], order[i]
        return order

    return randperm


def sample_shots(targets: Sequence[int], shots: int | None, seed: int = 0) -> list[int]:
    """Indexes of `shots` examples per class, drawn with `seed` (all examples when shots is None), in order."""
    if shots is None:
        return list(range(len(targets)))
    if shots < 0:
        raise UsageError("--shots takes whole numbers >= 0")
    by_class: dict[int, list[int]] = {}
    for index, target in enumerate(targets):
        by_class.setdefault(target, []).append(index)
    randperm = _permutations(seed)
    chosen = []
    for members in by_class.values():
        order = randperm(len(members))
        chosen += [members[i] for i in order[:shots]]
    return sorted(chosen)


# --- folds ------------------------------------------------------------------------------------------------

def make_folds(targets: Sequence[int], seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Stratified k-fold splits (k = min(5, smallest class count)); with one shot per class, k-fold over all
    examples (a held-out image's class is then absent from training: the head must fall back on its text)."""
    by_class: dict[int, list[int]] = {}
    for index, target in enumerate(targets):
        by_class.setdefault(target, []).append(index)
    smallest = min(len(v) for v in by_class.values())
    randperm = _permutations(seed)
    fold_of = [0] * len(targets)
    if smallest >= 2:
        k = min(MAX_FOLDS, smallest)
        for members in by_class.values():
            order = [members[i] for i in randperm(len(members))]
            for rank, index in enumerate(order):
                fold_of[index] = rank % k
    else:
        k = min(MAX_FOLDS, len(targets))
        if k < 2:
            return []
        for rank, index in enumerate(randperm(len(targets))):
            fold_of[index] = rank % k
    folds = []
    for fold in range(k):
        held = [i for i in range(len(targets)) if fold_of[i] == fold]
        kept = [i for i in range(len(targets)) if fold_of[i] != fold]
        folds.append((kept, held))
    return folds


# --- GDA ----------------------------------------------------------------------------------------------

def _gda_parts(x: np.ndarray, y: np.ndarray, text: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """(weight [C, d], bias [C]).  A class with no example (a cross-validation fold at one shot per class) gets
    a stand-in mean: its text embedding moved by the modality gap (mean image mean - mean text embedding of
    the classes that have examples), so the fold still measures all classes."""
    x = np.asarray(x, dtype=np.float64)
    text = np.asarray(text, dtype=np.float64)
    classes, d = text.shape
    present = np.zeros(classes, dtype=bool)
    means = np.zeros((classes, d), dtype=np.float64)
    for c in np.unique(y).tolist():
        means[c] = x[y == c].mean(axis=0)
        present[c] = True
    centred = x - means[y]
    if not present.all():
        gap = means[present].mean(axis=0) - text[present].mean(axis=0)
        means[~present] = text[~present] + gap
    covariance = centred.T @ centred / max(1, len(x))
    level = float(np.trace(covariance)) / d
    level = level if level > 1e-8 else 1.0 / d  # one shot per class: no spread to measure
    covariance = (1 - shrinkage) * covariance + shrinkage * level * np.eye(d, dtype=np.float64)
    weight = np.linalg.solve(covariance, means.T).T  # means @ covariance^-1 (symmetric), without the inverse
    bias = -0.5 * (weight * means).sum(axis=1)
    return weight.astype(np.float32), bias.astype(np.float32)


def _spread_ratio(zero_shot: np.ndarray, other: np.ndarray) -> float:
    spread = float(np.std(other, ddof=1, dtype=np.float64))  # torch's std: unbiased
    return float(np.std(zero_shot, ddof=1, dtype=np.float64)) / spread if spread > 0 else 1.0


def _smallest_fitting_alpha(x, y, text, zero_shot, shrinkage) -> float:
    """The smallest alpha (the closest to zero-shot) that classifies the shots themselves as well as any
    alpha does.  Where zero-shot already gets them right, that is zero-shot; where it does not, the head
    moves just far enough to.  For one or two shots per class (see fit_gda)."""
    weight, bias = _gda_parts(x, y, text, shrinkage)
    part = x @ weight.T + bias
    ratio = _spread_ratio(zero_shot, part)
    hits = [int(((zero_shot + a * ratio * part).argmax(axis=1) == y).sum()) for a in GDA_ALPHA]
    return GDA_ALPHA[hits.index(max(hits))]


def fit_gda(x, y, text, scale, folds) -> tuple[dict, dict, float | None]:
    zero_shot = scale * x @ text.T
    shots = int(np.bincount(y).min())
    if shots < 2:
        folds = []
    held_out: dict[tuple[float, float], int] = {}  # (shrinkage, alpha) -> held-out shots classified right
    for shrinkage in GDA_SHRINKAGE if folds else ():
        for kept, held in folds:
            weight, bias = _gda_parts(x[kept], y[kept], text, shrinkage)
            part = x[held] @ weight.T + bias
            ratio = _spread_ratio(zero_shot[kept], x[kept] @ weight.T + bias)
            for alpha in GDA_ALPHA:
                predicted = (zero_shot[held] + alpha * ratio * part).argmax(axis=1)
                held_out[(shrinkage, alpha)] = held_out.get((shrinkage, alpha), 0) + int((predicted == y[held]).sum())
    cv = None
    if shots <= 2:
        # Folds that leave one shot per class (or none) measure a head unlike the final one, so they cannot
        # choose the weight: the head fits the shots, as little as it must.  At two shots they can still veto
        # it: when the held-out shots fare worse than with zero-shot, the shots are not telling the classes
        # apart (noisy images), and the head stays zero-shot (bench/RESULTS.md, issue 11).
        shrinkage, alpha = 0.5, _smallest_fitting_alpha(x, y, text, zero_shot, 0.5)
        if held_out and held_out[(shrinkage, alpha)] < held_out[(shrinkage, 0.0)]:
            alpha = 0.0
    else:
        shrinkage, alpha = max(held_out, key=lambda k: (held_out[k], -k[1], k[0]))  # ties: closer to zero-shot
        cv = held_out[(shrinkage, alpha)] / len(y)
    weight, bias = _gda_parts(x, y, text, shrinkage)
    ratio = _spread_ratio(zero_shot, x @ weight.T + bias)
    return ({"alpha": alpha * ratio, "alpha_relative": alpha, "shrinkage": shrinkage},
            {"weight": weight, "bias": bias}, cv)


# --- logistic regression (the paper's probe) ---------------------------------------------------------------

def _logistic(x: np.ndarray, y: np.ndarray, classes: int, c: float, start=None,
              max_iter: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """argmin sum_i CE(x_i W^T + b, y_i) + ||W||^2 / (2C): scikit-learn's multinomial objective (bias free),
    divided by n (same minimiser, a gradient tolerance that does not grow with n), warm-started along the C
    path.  Float64, the analytic gradient, scipy's L-BFGS-B (no bounds): max |gradient| <= 1e-6 or at most
    1.25 max_iter evaluations.  (With scikit-learn's 100 iterations the probe stopped short at large C:
    80.8% on the digits where LogisticRegressionCV reaches 84.2%; issue 20.)"""
    from scipy.optimize import minimize

    max_iter = max_iter or LOGISTIC_MAX_ITER
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    n, d = x.shape
    rows = np.arange(n)
    size = classes * d
    if start is None:
        theta = np.zeros(size + classes, dtype=np.float64)
    else:
        theta = np.concatenate([np.asarray(start[0], dtype=np.float64).ravel(), np.asarray(start[1], dtype=np.float64)])

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        weight, bias = theta[:size].reshape(classes, d), theta[size:]
        z = x @ weight.T + bias
        z -= z.max(axis=1, keepdims=True)
        exp = np.exp(z)
        total = exp.sum(axis=1)
        loss = (np.log(total) - z[rows, y]).mean() + (weight * weight).sum() / (2 * c * n)
        residual = exp / total[:, None]  # softmax
        residual[rows, y] -= 1
        residual /= n
        gradient = np.concatenate([(residual.T @ x + weight / (c * n)).ravel(), residual.sum(axis=0)])
        return float(loss), gradient

    # torch.optim.LBFGS(max_iter=100, tolerance_grad=1e-6, tolerance_change=1e-12, history_size=10,
    # line_search_fn="strong_wolfe") before: the same limits (its max_eval was 1.25 max_iter)
    result = minimize(objective, theta, jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iter, "maxfun": max_iter * 5 // 4, "gtol": 1e-6, "ftol": 1e-12,
                               "maxcor": 10, "maxls": 25})
    return result.x[:size].reshape(classes, d).copy(), result.x[size:].copy()


def _cv_correct(x, y, classes: int, folds, grid: Sequence[float], patience: int | None = None) -> list[int]:
    """Held-out images classified right, per C of the grid (summed over the folds; each fold warm-starts along
    the grid).  With `patience`, the sweep stops at C >= 1 once that many C values in a row score below the
    best so far (the rest count 0): larger C costs the most iterations and, past the peak, is not chosen
    anyway.  Below C = 1 it never stops: the curve can dip there and rise again (16 shots of digits: 134
    held-out right at 1e-6, 128 at 1e-3, 143 at 1e3)."""
    correct: list[int] = []
    starts = [None] * len(folds)
    below = 0  # C values in a row that scored under the best before them
    for c in grid:
        total = 0
        for f, (kept, held) in enumerate(folds):
            starts[f] = _logistic(x[kept], y[kept], classes, c, starts[f])
            weight, bias = starts[f]
            total += int(((x[held].astype(np.float64) @ weight.T + bias).argmax(axis=1) == y[held]).sum())
        below = below + 1 if correct and total < max(correct) else 0
        correct.append(total)
        if patience is not None and below >= patience and c >= 1:
            break
    return correct + [0] * (len(grid) - len(correct))


def fit_logistic(x, y, text, scale, folds, grid: Sequence[float] = C_GRID,
                 fine: Sequence[float] = C_FINE, patience: int | None = C_PATIENCE) -> tuple[dict, dict, float | None]:
    """C by cross-validation, coarse to fine (the CLIP paper's search): the grid, then `fine` steps in decades
    around its best C.  Ties go to the larger C: at the smallest C values every weight is tiny and the probe
    is the nearest-class-mean rule, which can tie a better probe on a few held-out shots (16 shots of
    digits: 88.8% at C = 3e-7 against 92.1% at C = 1e3)."""
    classes = text.shape[0]
    if not folds:
        c, score = 1.0, None
    else:
        correct = _cv_correct(x, y, classes, folds, grid, patience)
        best = max(range(len(grid)), key=lambda i: (correct[i], i))
        refined = sorted(grid[best] * 10.0 ** step for step in fine)
        scores = dict(zip(grid, correct)) | dict(zip(refined, _cv_correct(x, y, classes, folds, refined)))
        c = max(scores, key=lambda value: (scores[value], value))
        score = scores[c] / len(y)
    weight, bias = _logistic(x, y, classes, c)
    return ({"C": c}, {"weight": weight.astype(np.float32), "bias": bias.astype(np.float32)}, score)


# --- Tip-Adapter ----------------------------------------------------------------------------------------

def fit_tip_adapter(x, y, text, scale, folds) -> tuple[dict, dict, float | None]:
    classes = text.shape[0]
    zero_shot = scale * x @ text.T
    values = np.eye(classes, dtype=np.float32)[y]
    correct: dict[tuple[float, float], int] = {}
    for kept, held in folds:
        affinity = x[held] @ x[kept].T
        for beta in TIP_BETA:
            cache = np.exp(-beta * (1 - affinity)) @ values[kept]
            for alpha in TIP_ALPHA:
                predicted = (zero_shot[held] + alpha * cache).argmax(axis=1)
                correct[(alpha, beta)] = correct.get((alpha, beta), 0) + int((predicted == y[held]).sum())
    if folds:
        alpha, beta = max(correct, key=lambda k: (correct[k], -k[0], -k[1]))
    else:
        alpha, beta = 1.0, 5.5  # the paper's defaults
    return ({"alpha": alpha, "beta": beta}, {"keys": x.copy(), "values": values},
            correct[(alpha, beta)] / len(y) if folds else None)


FITTERS = {"gda": fit_gda, "logistic": fit_logistic, "tip-adapter": fit_tip_adapter}


def fit_head(features, targets: Sequence[int], labels: Sequence[str], text,
             logit_scale: float, method: str = DEFAULT_METHOD, seed: int = 0, meta: dict | None = None) -> FewShotHead:
    """Fit a head on L2-normalised features [n, d] with class indexes; hyper-parameters by cross-validation.
    Features and text embeddings: numpy (or torch tensors, converted)."""
    if method not in METHODS:
        raise UsageError(f"unknown --method {method!r}; use one of {', '.join(METHODS)}")
    x = unit_rows(as_array(features))
    y = np.asarray([int(t) for t in targets], dtype=np.int64)
    text = as_array(text)
    if method == "zero-shot":
        params, tensors, cv = {}, {}, None
    else:
        if len(y) == 0:
            raise UsageError("no training image could be read")
        params, tensors, cv = FITTERS[method](x, y, text, logit_scale, make_folds(y.tolist(), seed))
    meta = {**(meta or {}), "method": method, "cv_accuracy": cv, "seed": seed, "train_images": len(y)}
    return FewShotHead(list(labels), method, text, logit_scale, params, tensors, meta)


# --- head files ------------------------------------------------------------------------------------------

# --- jobs: fit a head on a dataset, measure the few-shot curve ---------------------------------------------

@dataclass(frozen=True)
class ShotPlan:
    """Which heads to fit on how many shots: one head, or a curve (shots 0 = zero-shot)."""

    methods: tuple[str, ...] = (DEFAULT_METHOD,)
    shots: tuple[int | None, ...] = (None,)  # None: every training image
    repeats: int = 3  # samples of the shots per point of a curve (seed, seed + 1, ...)
    seed: int = 0


def head_metadata(model, templates, shots: int | None, train: str) -> dict:
    from . import __version__
    from .embeddings import store_model

    stored = store_model(model)
    return {"model": stored.display(), "model_key": stored.key, "templates_name": templates.name,
            "templates": list(templates.templates), "shots_per_class": shots, "train": train,
            "clipcli_version": __version__}


def fit(encoder, dataset, classifier, templates, plan: ShotPlan = ShotPlan(), progress=None,
        train_name: str = "") -> tuple[FewShotHead, list[dict]]:
    """Fit a head (plan.methods[0]) on plan.shots[0] images per class of the dataset (all when None), starting
    from the zero-shot classifier; only the sampled images are encoded.  Returns the head and the error
    records of images that could not be read."""
    from .evaluate import encode_dataset

    shots = plan.shots[0]
    chosen = sample_shots(dataset.targets, shots, plan.seed)
    kept, features, errors = encode_dataset(encoder, [dataset.paths[i] for i in chosen], progress)
    if features is None:
        raise UsageError("no training image could be read")
    targets = [dataset.targets[chosen[i]] for i in kept]
    head = fit_head(features, targets, classifier.labels, classifier.label_embeddings, classifier.logit_scale,
                    plan.methods[0], plan.seed, head_metadata(encoder.model, templates, shots, train_name))
    return head, errors


def few_shot_curve(encoder, train, test, classifier, plan: ShotPlan,
                   progress=None) -> tuple[list[dict], list[dict]]:
    """Test accuracy per method and shot count (0: zero-shot), mean and spread over `plan.repeats` samples of
    the shots.  Every image is encoded once; each repeat samples other shots with seed + repeat."""
    import statistics
    import time

    from .evaluate import encode_dataset

    if train.class_names != test.class_names:
        raise UsageError("the training and test sets must have the same classes (the same folder names)")
    kept, features, errors = encode_dataset(encoder, train.paths + test.paths, progress)
    if features is None:
        raise UsageError("no image could be read")
    split = sum(1 for i in kept if i < len(train.paths))
    train_x, test_x = features[:split], features[split:]
    train_y = [train.targets[i] for i in kept[:split]]
    test_y = [test.targets[i - len(train.paths)] for i in kept[split:]]
    rows = []
    for k in plan.shots:
        for method in (["zero-shot"] if k == 0 else plan.methods):
            runs, seconds = [], []
            for repeat in range(1 if k == 0 else plan.repeats):
                chosen = sample_shots(train_y, k, plan.seed + repeat) if k else []
                start = time.perf_counter()
                head = fit_head(train_x[chosen], [train_y[i] for i in chosen], classifier.labels,
                                classifier.label_embeddings, classifier.logit_scale, method, plan.seed + repeat)
                seconds.append(time.perf_counter() - start)
                runs.append(accuracy(head, test_x, test_y))
            rows.append({"method": method, "shots": k, "mean": statistics.fmean(runs),
                         "std": statistics.pstdev(runs), "runs": runs, "fit_seconds": statistics.fmean(seconds)})
    return rows, errors
