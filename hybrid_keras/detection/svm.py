"""R-CNN's solvers on fixed features, in NumPy: linear SVMs with hard-negative mining, and
the class-specific ridge box regressors.

:func:`train_linear_svm` solves the L2-regularised, L1-loss (hinge) linear SVM

    min_w  1/2 |w|^2 + sum_i C_i max(0, 1 - y_i w . x_i)

by dual coordinate descent (Hsieh, Chang, Lin, Keerthi & Sundararajan, "A Dual Coordinate
Descent Method for Large-scale Linear SVM", ICML 2008; liblinear's ``-s 3`` solver): the dual
``min 1/2 a^T Q a - sum a_i`` over ``0 <= a_i <= C_i`` with ``Q_ij = y_i y_j x_i . x_j`` is
minimised one coordinate at a time, in a random order each pass, keeping ``w = sum a_i y_i x_i``
up to date, until the projected gradient's spread (max - min) falls under ``tolerance``
(liblinear's stopping rule and its default for this solver, 0.1, which R-CNN's code kept; no
shrinking).
The bias is learned as liblinear does: every row gets an extra constant feature
``bias_scale``, whose weight (regularised like the others) times ``bias_scale`` is the bias.
Positives get ``C_i = C * positive_weight`` (R-CNN's class weighting), negatives ``C``.

:func:`mine_hard_negatives` and :func:`train_svm_hard_negatives` are R-CNN's training loop
(Girshick et al., CVPR 2014, section 2.3; Felzenszwalb et al.'s data mining): train on a first
set of negatives, add every negative that the current SVM scores above ``-1`` (inside or on the
wrong side of the margin) and retrain, for a few rounds or until no negative violates it.

:func:`fit_ridge` is the box regressors' solver (R-CNN appendix C): ridge regression with an
unregularised intercept.

R-CNN's defaults: features scaled so that their mean L2 norm is 20, ``C = 0.001``,
``positive_weight = 2``, ``bias_scale = 10``, ridge ``lambda = 1000`` (the authors' code).
"""

from __future__ import annotations

import dataclasses

import numpy as np

MARGIN = -1.0


@dataclasses.dataclass
class LinearSVM:
    """A trained linear SVM: ``score(x) = x . weights + bias``."""

    weights: np.ndarray  # [F]
    bias: float
    dual: np.ndarray  # [N] the dual variables (alphas), in the training rows' order
    epochs: int
    converged: bool

    def decision_function(self, features) -> np.ndarray:
        return np.asarray(features, np.float32) @ self.weights.astype(np.float32) + np.float32(self.bias)


def _labels_pm1(labels, count: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (count,):
        raise ValueError(f"labels must be [N] with one label per feature row ({count}). Received: shape {labels.shape}")
    if labels.dtype == bool:
        return np.where(labels, 1.0, -1.0)
    values = set(np.unique(labels).tolist())
    if not values <= {-1, 1}:
        raise ValueError("labels must be +1 (positive) or -1 (negative), or booleans. Received: values "
                         f"{sorted(values)}")
    return labels.astype(np.float64)


def primal_objective(features, labels, weights, bias, *, C: float = 1e-3, positive_weight: float = 2.0,
                     bias_scale: float = 10.0) -> float:
    """The objective :func:`train_linear_svm` minimises, at ``(weights, bias)`` (the bias's
    weight ``bias / bias_scale`` is regularised with the rest)."""
    x = np.asarray(features, np.float64)
    y = _labels_pm1(labels, len(x))
    cost = np.where(y > 0, C * positive_weight, C)
    margins = 1.0 - y * (x @ weights + bias)
    w_bias = bias / bias_scale
    return float(0.5 * (weights @ weights + w_bias * w_bias) + np.sum(cost * np.maximum(margins, 0.0)))


def train_linear_svm(features, labels, *, C: float = 1e-3, positive_weight: float = 2.0, bias_scale: float = 10.0,
                     tolerance: float = 0.1, max_epochs: int = 1000, seed: int = 0, dual=None) -> LinearSVM:
    """Train an L2-regularised hinge-loss linear SVM by dual coordinate descent (see the module).

    Args:
        features: ``[N, F]`` rows.
        labels: ``[N]`` +1 / -1 (or booleans).
        C: the cost of a unit of hinge loss on a negative; ``positive_weight`` times it on a positive.
        bias_scale: the constant feature that carries the bias (0 for no bias).
        tolerance: stop when the projected gradient's max - min is below it (liblinear's rule
            and default).
        max_epochs: passes over the data at most.
        seed: the coordinate order's random generator.
        dual: optional starting alphas ``[N]`` (a warm start; clipped to the box).

    Returns:
        :class:`LinearSVM`.
    """
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"features must be a non-empty [N, F] array. Received: shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features must be finite. Received: NaN or infinite values")
    y = _labels_pm1(labels, len(x))
    for name, value in (("C", C), ("positive_weight", positive_weight), ("tolerance", tolerance)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0. Received: {name}={value!r}")
    if bias_scale < 0:
        raise ValueError(f"bias_scale must be >= 0. Received: bias_scale={bias_scale!r}")
    if bias_scale:
        x = np.concatenate([x, np.full((len(x), 1), float(bias_scale))], axis=1)
    upper = np.where(y > 0, C * positive_weight, C)
    diagonal = np.einsum("ij,ij->i", x, x)
    alpha = np.zeros(len(x)) if dual is None else np.clip(np.asarray(dual, np.float64), 0.0, upper)
    w = (alpha * y) @ x
    rng = np.random.default_rng(seed)
    converged = False
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        low, high = np.inf, -np.inf
        for i in rng.permutation(len(x)):
            gradient = y[i] * (x[i] @ w) - 1.0
            if alpha[i] <= 0.0:
                projected = min(gradient, 0.0)
            elif alpha[i] >= upper[i]:
                projected = max(gradient, 0.0)
            else:
                projected = gradient
            low, high = min(low, projected), max(high, projected)
            if projected != 0.0 and diagonal[i] > 0.0:
                old = alpha[i]
                alpha[i] = min(max(old - gradient / diagonal[i], 0.0), upper[i])
                w += (alpha[i] - old) * y[i] * x[i]
        if high - low < tolerance:
            converged = True
            break
    bias = float(w[-1] * bias_scale) if bias_scale else 0.0
    weights = w[:-1] if bias_scale else w
    return LinearSVM(weights=weights.astype(np.float32), bias=bias, dual=alpha, epochs=epoch, converged=converged)


def mine_hard_negatives(svm: LinearSVM, negatives, *, exclude=(), threshold: float = MARGIN) -> np.ndarray:
    """Indices (sorted, int64) of the rows of ``negatives`` that ``svm`` scores above
    ``threshold`` (the margin, -1), leaving out those in ``exclude`` (already in the cache)."""
    scores = svm.decision_function(negatives)
    violators = np.flatnonzero(scores > threshold)
    return np.setdiff1d(violators, np.asarray(list(exclude), np.int64)).astype(np.int64)


def train_svm_hard_negatives(positives, negatives, *, rounds: int = 3, initial_negatives: int = 1000,
                             seed: int = 0, **svm_options):
    """R-CNN's SVM training with hard-negative mining (see the module).

    ``positives [P, F]``, ``negatives [N, F]`` (the pool). Round 0 trains on the positives and
    ``initial_negatives`` negatives drawn at random; each later round adds every negative the
    current SVM scores above -1 that is not in the cache yet and retrains (warm-started from the
    previous alphas), stopping early when none is added. Returns ``(svm, cache, history)``:
    the final :class:`LinearSVM`, the sorted indices of the negatives it was trained on, and
    per round ``{"negatives": cache size, "added": violators added after it}``.
    """
    positives = np.asarray(positives, np.float32)
    negatives = np.asarray(negatives, np.float32)
    if positives.ndim != 2 or not len(positives):
        raise ValueError(f"positives must be a non-empty [P, F] array. Received: shape {positives.shape}")
    if negatives.ndim != 2 or not len(negatives) or negatives.shape[1] != positives.shape[1]:
        raise ValueError(f"negatives must be a non-empty [N, {positives.shape[1]}] array. Received: shape "
                         f"{negatives.shape}")
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int. Received: rounds={rounds!r}")
    rng = np.random.default_rng(seed)
    cache = np.sort(rng.choice(len(negatives), min(initial_negatives, len(negatives)), replace=False)).astype(np.int64)
    history = []
    svm = None
    for round_index in range(rounds):
        labels = np.concatenate([np.ones(len(positives)), -np.ones(len(cache))])
        start = None
        if svm is not None:  # warm start: the previous alphas, 0 for the rows just added
            previous = dict(zip(previous_cache.tolist(), svm.dual[len(positives):]))
            start = np.concatenate([svm.dual[:len(positives)], [previous.get(j, 0.0) for j in cache.tolist()]])
        svm = train_linear_svm(np.concatenate([positives, negatives[cache]]), labels, seed=seed + round_index,
                               dual=start, **svm_options)
        previous_cache = cache
        last = round_index + 1 == rounds
        added = np.zeros(0, np.int64) if last else mine_hard_negatives(svm, negatives, exclude=cache)
        history.append({"negatives": int(len(cache)), "added": int(len(added)), "epochs": svm.epochs,
                        "converged": svm.converged})
        if not len(added):
            break
        cache = np.union1d(cache, added).astype(np.int64)
    return svm, cache, history


def fit_ridge(features, targets, *, lam: float = 1000.0):
    """Ridge regression ``targets [N, T] ~ features [N, F] @ W + b`` minimising
    ``|X W + b - T|^2 + lam |W|^2`` (the intercept ``b`` not penalised). Returns ``(W [F, T], b [T])``."""
    x = np.asarray(features, np.float64)
    t = np.asarray(targets, np.float64)
    if x.ndim != 2 or t.ndim != 2 or len(x) != len(t) or not len(x):
        raise ValueError(f"features [N, F] and targets [N, T] must be non-empty with the same N. Received: shapes "
                         f"{x.shape} and {t.shape}")
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0. Received: lam={lam!r}")
    x_mean, t_mean = x.mean(axis=0), t.mean(axis=0)
    xc, tc = x - x_mean, t - t_mean
    gram = xc.T @ xc + lam * np.eye(x.shape[1])
    weights = np.linalg.solve(gram, xc.T @ tc)
    return weights.astype(np.float32), (t_mean - x_mean @ weights).astype(np.float32)
