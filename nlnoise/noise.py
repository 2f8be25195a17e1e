"""Label-noise transition matrices, their validation, and deterministic label corruption.

Convention used everywhere in nlnoise (the paper's, and cleanlab's ``noise_matrix``):

    q[j, i] = p(noisy = j | true = i)

so ``q`` has shape ``[K_noisy, K_true]`` and every **column** sums to 1. Several PyTorch
codebases use the transpose (a row-stochastic ``T`` applied as ``probs @ T``); pass ``T.T``.

All constructors return float64 numpy arrays that pass :func:`validate_transition`.

The matrices, their checks and the flips drawn through them stay in one module (a little over
the usual 400 lines): they share one convention, and a reader checking which way a flip goes
should find the matrix, its validation and the draw side by side.
"""

from __future__ import annotations

import numpy as np

# Column sums may be off by this much (absolute). Float32 projections of K=1000 columns stay
# within ~1e-5, so 1e-4 accepts them while rejecting any real normalisation mistake.
COLUMN_SUM_ATOL = 1e-4


class NoiseMatrixError(ValueError):
    """A transition matrix (or an argument used to build one) is invalid."""


def validate_transition(
    q,
    num_classes: int | tuple[int, int] | None = None,
    *,
    name: str = "q",
    atol: float = COLUMN_SUM_ATOL,
) -> np.ndarray:
    """Checks that ``q`` is a column-stochastic ``[K_noisy, K_true]`` matrix and returns it.

    Args:
      q: array-like, ``q[j, i] = p(noisy=j | true=i)``.
      num_classes: expected shape: ``K`` for a square ``K x K`` matrix, or ``(K_noisy, K_true)``.
      name: the field name used in error messages (e.g. ``"noise.q"``).
      atol: absolute tolerance on every column sum and on negative entries.

    Returns:
      ``q`` as a float64 numpy array.

    Raises:
      NoiseMatrixError: naming the field, the problem and its location.
    """
    try:
        arr = np.asarray(q, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise NoiseMatrixError(f"{name}: not a numeric matrix ({e}).") from None
    if arr.ndim != 2:
        raise NoiseMatrixError(
            f"{name}: expected a 2-D matrix [K_noisy, K_true], got shape {arr.shape}."
        )
    if num_classes is not None:
        want = (num_classes, num_classes) if np.ndim(num_classes) == 0 else tuple(num_classes)
        if arr.shape != want:
            raise NoiseMatrixError(
                f"{name}: expected shape {want} for this dataset/model, got {arr.shape}. "
                "Build the matrix for the right number of classes (K+1 for the outlier model)."
            )
    if arr.size == 0:
        raise NoiseMatrixError(f"{name}: empty matrix (shape {arr.shape}).")
    bad = ~np.isfinite(arr)
    if bad.any():
        j, i = np.argwhere(bad)[0]
        raise NoiseMatrixError(
            f"{name}: {int(bad.sum())} non-finite entries (NaN/inf), first at [{j}, {i}]."
        )
    if (arr < -atol).any():
        j, i = np.argwhere(arr < -atol)[0]
        raise NoiseMatrixError(
            f"{name}: negative entry {arr[j, i]:.4g} at [{j}, {i}]; probabilities must be >= 0."
        )
    sums = arr.sum(axis=0)
    off = np.abs(sums - 1.0) > atol
    if off.any():
        i = int(np.argmax(off))
        row_sums = arr.sum(axis=1)
        hint = (
            " Its rows sum to 1: it looks row-stochastic (p(noisy|true) as T[true, noisy]);"
            " pass its transpose."
            if np.allclose(row_sums, 1.0, atol=atol)
            else ""
        )
        raise NoiseMatrixError(
            f"{name}: column {i} sums to {sums[i]:.6g}, not 1 (tolerance {atol:g}); "
            f"{int(off.sum())} of {arr.shape[1]} columns are off. Columns are true classes and "
            f"must each be a distribution over noisy labels.{hint}"
        )
    return arr


def _check_level(level: float, name: str = "level") -> float:
    if not np.isscalar(level) or not np.isfinite(level) or not 0.0 <= float(level) <= 1.0:
        raise NoiseMatrixError(f"{name}: noise level must be a number in [0, 1], got {level!r}.")
    return float(level)


def _check_k(num_classes: int, minimum: int = 1) -> int:
    if int(num_classes) != num_classes or num_classes < minimum:
        raise NoiseMatrixError(
            f"num_classes: must be an integer >= {minimum}, got {num_classes!r}."
        )
    return int(num_classes)


def identity(num_classes: int) -> np.ndarray:
    """The noise-free ``K x K`` transition (the learned-Q model's initial value)."""
    return np.eye(_check_k(num_classes))


def symmetric(num_classes: int, level: float) -> np.ndarray:
    """Symmetric flips: with probability ``level`` a label moves to one of the *other* classes.

    Definition used: ``q[i, i] = 1 - level``, ``q[j, i] = level / (K - 1)`` for ``j != i``, so
    ``level`` is exactly the probability that a label changes (the realized flip rate).

    The other common definition mixes with the uniform distribution over all K classes (a label
    is resampled uniformly with probability ``p``, so only ``p (K-1) / K`` change). This matrix
    equals that one with ``p = level * K / (K - 1)``; :func:`symmetric_rates` reports both.
    """
    k = _check_k(num_classes, 2)
    level = _check_level(level)
    q = np.full((k, k), level / (k - 1))
    np.fill_diagonal(q, 1.0 - level)
    return q


def symmetric_rates(num_classes: int, level: float) -> dict[str, float]:
    """Both conventions' numbers for :func:`symmetric`: the flip rate and the uniform-mix rate."""
    k = _check_k(num_classes, 2)
    level = _check_level(level)
    return {"flip_rate": level, "uniform_mix_rate": level * k / (k - 1)}


def pair_flip(num_classes: int, level: float) -> np.ndarray:
    """Pair flips: class ``i`` keeps ``1 - level`` and sends ``level`` to class ``(i+1) mod K``."""
    k = _check_k(num_classes, 2)
    level = _check_level(level)
    q = np.eye(k) * (1.0 - level)
    q[(np.arange(k) + 1) % k, np.arange(k)] += level
    return q


def block(num_classes: int, level: float, groups) -> np.ndarray:
    """Flips within groups of similar classes: class ``i`` of a group of ``g`` keeps
    ``1 - level`` and sends ``level / (g - 1)`` to each other class of its group.

    ``groups`` is a sequence of disjoint tuples of class ids (e.g. Fashion-MNIST's tops
    ``(0, 2, 3, 4, 6)`` and shoes ``(5, 7, 9)``); a class in no group, or alone in one, keeps its
    label. Human annotators confuse similar classes, so this is closer to real label noise than
    flips spread over every class. nlnoise's construction (the paper has no such family).
    """
    k = _check_k(num_classes, 2)
    level = _check_level(level)
    try:
        groups = [tuple(int(c) for c in g) for g in groups]
    except (TypeError, ValueError):
        raise NoiseMatrixError(f"groups: expected tuples of class ids, got {groups!r}.") from None
    members = [c for g in groups for c in g]
    if len(set(members)) != len(members):
        raise NoiseMatrixError(f"groups: a class appears in two groups: {groups!r}.")
    bad = [c for c in members if not 0 <= c < k]
    if bad:
        raise NoiseMatrixError(f"groups: class ids {bad} outside [0, {k}).")
    q = np.eye(k)
    for g in groups:
        if len(g) < 2:
            continue
        for i in g:
            q[list(g), i] = level / (len(g) - 1)
            q[i, i] = 1.0 - level
    return q


def paper_random(num_classes: int, level: float, seed: int = 0) -> np.ndarray:
    """The paper's random ``Q*`` (Fig. 3c): diagonal ``1 - level``, the rest spread non-uniformly.

    Each column's off-diagonal mass ``level`` is split over the other classes in shares drawn
    once from ``seed`` as ``Dirichlet(2, ..., 2)``: visibly non-uniform (for K=10 the largest
    share is typically about 0.35) but without one confusion taking all the mass, which would
    make two classes indistinguishable. The shares do not depend on ``level``: changing the
    level rescales the same pattern, as the paper does to sweep noise levels.

    The paper fixes only the diagonal; the Dirichlet(2) shares are nlnoise's reading.
    """
    k = _check_k(num_classes, 2)
    level = _check_level(level)
    rng = np.random.default_rng(np.random.SeedSequence([seed, k, 0x3C]))
    shares = rng.dirichlet(np.full(k - 1, 2.0), size=k)  # [true class, other classes]
    q = np.zeros((k, k))
    for i in range(k):
        q[np.arange(k) != i, i] = level * shares[i]
        q[i, i] = 1.0 - level
    return q


def sparse_random(num_classes: int, level: float, m: int = 10, seed: int = 0) -> np.ndarray:
    """Each class keeps ``1 - level``; ``level`` is split equally over ``m`` random other classes.

    The paper's ImageNet "random" noise is ``sparse_random(1000, 0.5, m=10)`` (about 10k non-zero
    off-diagonal entries). The paper does not say how the 50% is shared among the 10 classes;
    equal shares are nlnoise's reading.
    """
    k = _check_k(num_classes, 2)
    level = _check_level(level)
    if int(m) != m or not 1 <= m <= k - 1:
        raise NoiseMatrixError(f"m: must be an integer in [1, K-1] = [1, {k - 1}], got {m!r}.")
    rng = np.random.default_rng(np.random.SeedSequence([seed, k, int(m), 0x5E]))
    q = np.eye(k) * (1.0 - level)
    for i in range(k):
        others = np.delete(np.arange(k), i)
        targets = rng.choice(others, size=int(m), replace=False)
        q[targets, i] += level / m
    return q


def adversarial(confusion, level: float, m: int = 3) -> np.ndarray:
    """Flips toward the classes a model confuses with the true one (the paper's Table 1b).

    Args:
      confusion: ``[K, K]`` non-negative confusion counts or rates in nlnoise's orientation,
        ``confusion[pred, true]`` (columns are true classes). scikit-learn's
        ``confusion_matrix(y_true, y_pred)`` is ``[true, pred]``: pass its transpose.
      level: probability that a label is flipped.
      m: each class sends its ``level`` to its ``m`` most-confused other classes, in proportion
        to their confusion. A class with fewer than ``m`` confused classes uses those it has; one
        with none spreads ``level`` uniformly over all other classes.

    The paper says only that 40% of each class is flipped toward the classes a clean model
    confuses it with; ``m = 3`` and the shares in proportion to the confusion are nlnoise's
    reading.
    """
    c = np.asarray(confusion, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise NoiseMatrixError(f"confusion: expected a square [K, K] matrix, got {c.shape}.")
    if not np.isfinite(c).all() or (c < 0).any():
        raise NoiseMatrixError("confusion: entries must be finite and non-negative.")
    k = _check_k(c.shape[0], 2)
    level = _check_level(level)
    if int(m) != m or not 1 <= m <= k - 1:
        raise NoiseMatrixError(f"m: must be an integer in [1, K-1] = [1, {k - 1}], got {m!r}.")
    q = np.eye(k) * (1.0 - level)
    for i in range(k):
        off = c[:, i].copy()  # copy: never write into the caller's matrix
        off[i] = 0.0
        order = np.argsort(-off, kind="stable")[: int(m)]
        w = np.zeros(k)
        w[order] = off[order]
        if w.sum() <= 0:
            w = np.ones(k)
            w[i] = 0.0
        q[:, i] += level * w / w.sum()
    return q


def outlier_eqn8(num_classes: int) -> np.ndarray:
    """Eqn 8: ``(K+1) x (K+1)``; outliers (true class K) get a uniform label among the K classes.

    Its last row is zero (no example is labelled "outlier"), so it is singular: the model
    cannot tell an outlier from a uniform prediction. Prefer :func:`outlier_eqn9`.
    """
    k = _check_k(num_classes)
    q = np.zeros((k + 1, k + 1))
    q[:k, :k] = np.eye(k)
    q[:k, k] = 1.0 / k
    return q


def outlier_eqn9(num_classes: int, alpha: float) -> np.ndarray:
    """Eqn 9: as Eqn 8, but a fraction ``alpha`` of outliers carries the outlier label K.

    ``alpha = (# outliers labelled K) / (# all outliers)``; see :func:`outlier_alpha`.
    """
    k = _check_k(num_classes)
    alpha = _check_level(alpha, "alpha")
    q = np.zeros((k + 1, k + 1))
    q[:k, :k] = np.eye(k)
    q[:k, k] = (1.0 - alpha) / k
    q[k, k] = alpha
    return q


def outlier_alpha(num_known: int, num_unlabelled_outliers: int) -> float:
    """Eqn 9's alpha from the counts: known outliers (label K) over all outliers."""
    if num_known < 0 or num_unlabelled_outliers < 0 or num_known + num_unlabelled_outliers == 0:
        raise NoiseMatrixError(
            "outlier counts: need num_known >= 0, num_unlabelled_outliers >= 0 and at least one "
            f"outlier, got {num_known} and {num_unlabelled_outliers}."
        )
    return num_known / (num_known + num_unlabelled_outliers)


def flip_rate(q, class_prior=None) -> float:
    """Probability that a label differs from the true one: ``1 - sum_i prior_i q[i, i]``.

    Only defined for square matrices. ``class_prior`` defaults to uniform.
    """
    q = validate_transition(q)
    if q.shape[0] != q.shape[1]:
        raise NoiseMatrixError(f"q: flip rate needs a square matrix, got {q.shape}.")
    k = q.shape[1]
    prior = np.full(k, 1.0 / k) if class_prior is None else np.asarray(class_prior)
    return float(1.0 - np.sum(prior * np.diag(q)))


def _uniforms(seed: int, indices: np.ndarray) -> np.ndarray:
    """One ``Uniform[0, 1)`` per example, a pure function of ``(seed, index)``.

    A counter-based hash (SplitMix64 finaliser) rather than a sequential generator, so any
    subset of examples (a host's shard, a batch, a resumed run) gets the same numbers.
    """
    with np.errstate(over="ignore"):
        z = indices.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z ^= np.uint64((int(seed) * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019) % 2**64)
        for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            z ^= z >> np.uint64(shift)
            z *= np.uint64(mult)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def check_labels(labels, num_classes: int, name: str = "labels", *,
                 error: type[Exception] = ValueError, integral_floats: bool = True,
                 hint: str = "Check the dataset's num_classes.") -> np.ndarray:
    """Returns ``labels`` as an int64 vector, or raises if any lies outside ``[0, num_classes)``.

    ``error`` is the exception raised (its message names ``name`` and ends with ``hint``);
    ``integral_floats`` accepts floats that are whole numbers (e.g. labels from a CSV).
    """
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise error(f"{name}: expected a 1-D vector of class indices, got shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not integral_floats or not np.all(np.equal(np.mod(arr, 1), 0)):
            raise error(f"{name}: class indices must be integers, got dtype {arr.dtype}.")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= num_classes)
    if bad.any():
        n = int(np.argmax(bad))
        raise error(f"{name}: {int(bad.sum())} labels outside [0, {num_classes}); first is "
                    f"{arr[n]} at index {n}. {hint}")
    return arr


def corrupt_labels(labels, q, seed: int, indices=None) -> np.ndarray:
    """Samples noisy labels: example ``n`` with true label ``i`` gets ``j`` with prob ``q[j, i]``.

    Deterministic per example: the draw for example ``n`` depends only on ``(seed, indices[n],
    labels[n], q)``, so the same seed gives the same noisy labels whatever the process count,
    batch size, shard or order of calls.

    Args:
      labels: ``[N]`` true labels in ``[0, K_true)``.
      q: ``[K_noisy, K_true]`` column-stochastic matrix.
      seed: integer seed.
      indices: ``[N]`` global example indices (default ``arange(N)``); pass them when corrupting
        a shard so that it agrees with corrupting the whole dataset at once.

    Returns:
      ``[N]`` int64 noisy labels in ``[0, K_noisy)``.
    """
    q = validate_transition(q)
    labels = check_labels(labels, q.shape[1])
    idx = np.arange(labels.size) if indices is None else np.asarray(indices)
    if idx.shape != labels.shape:
        raise ValueError(f"indices: shape {idx.shape} must match labels {labels.shape}.")
    u = _uniforms(seed, idx)
    cdf = np.cumsum(q, axis=0)
    # Normalised so that the last entry is exactly 1 > u; with side="right" a class with zero
    # probability (a cdf plateau) is never drawn.
    cdf /= cdf[-1:]
    out = np.empty_like(labels)
    for i in np.unique(labels):
        sel = labels == i
        out[sel] = np.searchsorted(cdf[:, i], u[sel], side="right")
    return out


def realized_transition(clean, noisy, num_classes: int, num_noisy_classes: int | None = None):
    """The empirical transition: ``counts[noisy, clean] / counts[clean]``, ``[K_noisy, K_true]``.

    A true class with no examples gets a NaN column (there is nothing to estimate it from).
    """
    kn = num_classes if num_noisy_classes is None else num_noisy_classes
    clean = check_labels(clean, num_classes, "clean")
    noisy = check_labels(noisy, kn, "noisy")
    if clean.shape != noisy.shape:
        raise ValueError(f"clean {clean.shape} and noisy {noisy.shape} must have equal shapes.")
    counts = np.zeros((kn, num_classes))
    np.add.at(counts, (noisy, clean), 1.0)
    totals = counts.sum(axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.where(totals > 0, totals, 1.0), np.nan)


def relative_l1(q, q_true) -> float:
    """``sum |Q - Q*| / sum |Q*|``: the Q error reported by training and experiments."""
    q = np.asarray(q, dtype=np.float64)
    q_true = np.asarray(q_true, dtype=np.float64)
    if q.shape != q_true.shape:
        raise ValueError(f"q {q.shape} and q_true {q_true.shape} must have equal shapes.")
    return float(np.abs(q - q_true).sum() / np.abs(q_true).sum())


def make(kind: str, num_classes: int, level: float = 0.0, *, seed: int = 0, **kwargs):
    """Builds a matrix by family name (the config's ``corruption.kind``).

    Kinds: ``identity``, ``symmetric``, ``pair``, ``block`` (``groups``), ``paper_random``,
    ``sparse_random`` (``m``), ``adversarial`` (``confusion``, ``m``).
    """
    if kind == "identity":
        return identity(num_classes)
    if kind == "symmetric":
        return symmetric(num_classes, level)
    if kind == "pair":
        return pair_flip(num_classes, level)
    if kind == "block":
        if kwargs.get("groups") is None:
            raise NoiseMatrixError("corruption.kind=block needs corruption.groups.")
        return block(num_classes, level, kwargs["groups"])
    if kind == "paper_random":
        return paper_random(num_classes, level, seed=seed)
    if kind == "sparse_random":
        return sparse_random(num_classes, level, seed=seed, **kwargs)
    if kind == "adversarial":
        if kwargs.get("confusion") is None:
            raise NoiseMatrixError(
                "corruption.kind=adversarial needs a confusion matrix (corruption.confusion_path): "
                "train a "
                "clean model first and save its confusion[pred, true]."
            )
        return adversarial(level=level, **kwargs)
    raise NoiseMatrixError(
        f"corruption.kind: unknown matrix family {kind!r}; choose one of {KINDS}.")


KINDS = ("identity", "symmetric", "pair", "block", "paper_random", "sparse_random", "adversarial")
