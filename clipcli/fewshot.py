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
  Newton-CG (scipy's trust-ncg, preconditioned), C by cross-validation (scikit-learn's LogisticRegressionCV
  objective), searched as the paper did: a coarse sweep over 1e-6 ... 1e6 (decades; past C = 1 it stops two
  decades after its peak), then a finer one (quarter decades) around the best.
- `tip-adapter`: Tip-Adapter (Zhang et al., 2022), training-free: a cache of the shots' features,
  logits = s x.t_c + alpha exp(-beta (1 - x.K)) L, alpha and beta by cross-validation.
- `zero-shot`: the text embeddings alone (for curves: the 0-shot point).

numpy throughout (scipy's trust-ncg for the logistic probe, imported when it fits), never torch: fitting a head
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
LOGISTIC_MAX_ITER = 1000  # Newton steps at most (a fit takes tens)
LOGISTIC_GTOL = 1e-6  # a fit stops when its gradient's norm is below this (looser moved the chosen C: issue 30)
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

class _SoftmaxLoss:
    """sum_i CE(W x_i + b, y_i) / n + sum_j penalty_j ||W_j||^2 / (2 C n), W_j a feature's column: with penalty 1,
    scikit-learn's multinomial objective (bias free) divided by n (the same minimiser; a gradient tolerance
    that does not grow with n).  Its value and gradient, and products of its Hessian with a vector at the last
    point whose gradient was taken (what a Newton-CG step needs, at the cost of about one gradient each).
    Activations are kept class-major ([classes, n]), so the per-image max, sum and normalisation run across
    rows, not along rows of ten numbers."""

    def __init__(self, x: np.ndarray, y: np.ndarray, classes: int, c: float, penalty: np.ndarray):
        self.x = np.ascontiguousarray(x, dtype=np.float64)  # [n, d]
        self.xt = np.ascontiguousarray(self.x.T)  # [d, n]
        self.n, self.d = self.x.shape
        self.y, self.rows, self.classes, self.size = y, np.arange(self.n), classes, classes * self.d
        self.penalty = penalty / (c * self.n)  # [d]
        self.class_sums = np.zeros((classes, self.d))  # onehot(y)^T x: the label part of the gradient, once
        np.add.at(self.class_sums, y, self.x)
        self.counts = np.bincount(y, minlength=classes).astype(np.float64)
        self.at: np.ndarray | None = None
        self.prob = np.empty((classes, self.n))

    def value_and_gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        weight, bias = theta[:self.size].reshape(self.classes, self.d), theta[self.size:]
        z = weight @ self.xt
        z += bias[:, None]
        z -= z.max(axis=0)
        prob = np.exp(z, out=self.prob)
        total = prob.sum(axis=0)
        shrink = weight * self.penalty
        loss = (float(np.log(total).sum()) - float(z[self.y, self.rows].sum())) / self.n \
            + float((shrink * weight).sum()) / 2
        prob /= total  # softmax, kept for the Hessian products at this point
        self.at = theta.copy()
        gradient = np.empty_like(theta)
        gradient[:self.size] = ((prob @ self.x - self.class_sums) / self.n + shrink).ravel()
        gradient[self.size:] = (prob.sum(axis=1) - self.counts) / self.n
        return loss, gradient

    def hessian_product(self, theta: np.ndarray, vector: np.ndarray) -> np.ndarray:
        if self.at is None or not np.array_equal(theta, self.at):
            self.value_and_gradient(theta)
        prob = self.prob
        step = vector[:self.size].reshape(self.classes, self.d)
        change = step @ self.xt
        change += vector[self.size:, None]
        change *= prob
        change -= prob * change.sum(axis=0)  # (diag(p) - p p^T) per image
        product = np.empty_like(vector)
        product[:self.size] = (change @ self.x / self.n + step * self.penalty).ravel()
        product[self.size:] = change.sum(axis=1) / self.n
        return product


def _principal_axes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, variances, axes) of the rows: the eigen-decomposition of their covariance, once per set of rows
    (a LAPACK call: on a busy machine its threads cost more than the sum)."""
    x = np.asarray(x, dtype=np.float64)
    centre = x.mean(axis=0)
    centred = x - centre
    variance, axes = np.linalg.eigh(centred.T @ centred / len(x))
    return centre, np.maximum(variance, 0.0), axes


def _logistic(x: np.ndarray, y: np.ndarray, classes: int, c: float, start=None,
              max_iter: int | None = None, gtol: float | None = None, basis=None) -> tuple[np.ndarray, np.ndarray]:
    """argmin sum_i CE(x_i W^T + b, y_i) + ||W||^2 / (2C), warm-started along the C path: Newton steps in a
    trust region, each solved by conjugate gradients on exact Hessian-vector products (scipy's trust-ncg), until
    the gradient's norm (in the coordinates below) is under `gtol` (LOGISTIC_GTOL) or after `max_iter` Newton
    steps.  Float64.  `basis`: _principal_axes(x), when the caller fits the same rows at several C.

    The problem is solved in other coordinates, with the same minimiser: the features centred (the bias takes
    the shift up), turned onto the principal axes of their covariance (the penalty does not change) and each
    axis scaled by 1 / sqrt(its variance + classes / (C n)), the weights scaled back: the Hessian's weight
    block, about (softmax spread / classes) x covariance + 1 / (C n), comes out near flat, and conjugate
    gradients need about half the steps.  At large C the problem is badly conditioned: L-BFGS spent its
    1,000 iterations per fold at C >= 1e4 on the digits (bench/RESULTS.md, issue 30)."""
    from scipy.optimize import minimize

    y = np.asarray(y, dtype=np.int64)
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    centre, variance, axes = basis or _principal_axes(x)
    scale = 1.0 / np.sqrt(variance + classes / (c * n))
    loss = _SoftmaxLoss((x - centre) @ axes * scale, y, classes, c, scale ** 2)
    theta = np.zeros(loss.size + classes, dtype=np.float64)
    if start is not None:
        weight = np.asarray(start[0], dtype=np.float64)
        theta[:loss.size] = (weight @ axes / scale).ravel()
        theta[loss.size:] = np.asarray(start[1], dtype=np.float64) + weight @ centre
    result = minimize(loss.value_and_gradient, theta, jac=True, hessp=loss.hessian_product, method="trust-ncg",
                      options={"maxiter": max_iter or LOGISTIC_MAX_ITER, "gtol": gtol or LOGISTIC_GTOL})
    weight = (result.x[:loss.size].reshape(classes, loss.d) * scale) @ axes.T
    return weight, result.x[loss.size:] - weight @ centre


def _cv_sweep(x, y, classes: int, folds, grid: Sequence[float], patience: int | None = None, starts=None,
              gtol: float | None = None, bases=None) -> tuple[list[int], list]:
    """Held-out images classified right, per C of the grid (summed over the folds; each fold warm-starts along
    the grid, from `starts` if given), and the folds' solutions at the best C (the larger one on ties).  With
    `patience`, the sweep stops at C >= 1 once that many C values in a row score below the best so far (the
    rest count 0): larger C costs the most iterations and, past the peak, is not chosen anyway.  Below C = 1
    it never stops: the curve can dip there and rise again (16 shots of digit pixels: 140 held-out right at
    C = 1, 139 at 10, 143 at 1e3)."""
    correct: list[int] = []
    starts = list(starts) if starts is not None else [None] * len(folds)
    bases = bases or [_principal_axes(x[kept]) for kept, _ in folds]
    best_starts = starts
    below = 0  # C values in a row that scored under the best before them
    for c in grid:
        total = 0
        for f, (kept, held) in enumerate(folds):
            starts[f] = _logistic(x[kept], y[kept], classes, c, starts[f], gtol, basis=bases[f])
            weight, bias = starts[f]
            total += int(((x[held].astype(np.float64) @ weight.T + bias).argmax(axis=1) == y[held]).sum())
        below = below + 1 if correct and total < max(correct) else 0
        if not correct or total >= max(correct):
            best_starts = list(starts)
        correct.append(total)
        if patience is not None and below >= patience and c >= 1:
            break
    return correct + [0] * (len(grid) - len(correct)), best_starts


def fit_logistic(x, y, text, scale, folds, grid: Sequence[float] = C_GRID,
                 fine: Sequence[float] = C_FINE, patience: int | None = C_PATIENCE) -> tuple[dict, dict, float | None]:
    """C by cross-validation, coarse to fine (the CLIP paper's search): the grid, then `fine` steps in decades
    around its best C, each side swept outwards from the best C's solutions.  Ties go to the larger C: at the
    smallest C values every weight is tiny and the probe is the nearest-class-mean rule, which can tie a better
    probe on a few held-out shots (16 shots of digits: 88.8% at C = 3e-7 against 92.1% at C = 1e3)."""
    classes = text.shape[0]
    if not folds:
        c, score = 1.0, None
    else:
        bases = [_principal_axes(x[kept]) for kept, _ in folds]
        correct, best_starts = _cv_sweep(x, y, classes, folds, grid, patience, bases=bases)
        best = max(range(len(grid)), key=lambda i: (correct[i], i))
        scores = dict(zip(grid, correct))
        for side in (sorted((s for s in fine if s < 0), reverse=True), sorted(s for s in fine if s > 0)):
            refined = [grid[best] * 10.0 ** step for step in side]
            swept = _cv_sweep(x, y, classes, folds, refined, starts=best_starts, bases=bases)[0]
            scores |= dict(zip(refined, swept))
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
