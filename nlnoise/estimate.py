"""Checks on ``(noisy_labels, pred_probs, q)``, the posterior, and noise-matrix estimates.

Plain numpy on ``(noisy_labels [N], pred_probs [N, K])``, where ``pred_probs`` is the softmax of
a model of the *clean* label (nlnoise's network with the noise layer removed, or any model
trained elsewhere), rows summing to 1; plus ``q`` where it is known (nlnoise's learned Q):
``q[j, i] = p(noisy = j | true = i)``, ``[K_noisy, K_true]``, every column sums to 1, the same
orientation as cleanlab's ``noise_matrix``. A row-stochastic ``T[true, noisy]`` is rejected
with a hint to pass ``T.T`` unless it is doubly stochastic, where the two readings cannot be
told apart: check the orientation where the matrix comes from.

The paper's model read backwards gives ``p(true = i | x, noisy = j) ∝ q[j, i] p(i | x)``
(:func:`posterior`). Without a q, :func:`estimate_q` estimates one from the predictions.
:mod:`nlnoise.audit` builds label scores, flagged labels and a summary on top.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from nlnoise import noise

# Rows of pred_probs may miss 1 by this much: float16/float32 softmax outputs written to disk
# stay well within it, while logits or unnormalised scores miss by far more.
PROB_SUM_ATOL = 1e-3
# Rows per block when a [N, K] temporary is needed, so ImageNet-sized inputs (N ~ 1.3M,
# K = 1000) never hold more than a few hundred MB of float64 at once.
CHUNK = 1 << 15
ESTIMATE_METHODS = ("confident_joint", "mle", "soft_confusion", "confusion")


class AuditInputError(ValueError):
    """Bad input to an audit function; the message names the argument and the fix."""


# --- validation ---------------------------------------------------------------------------------


def check_inputs(noisy_labels, pred_probs, q=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validates and returns ``(labels int64 [N], pred_probs [N, K], q [K_noisy, K] or None)``.

    ``pred_probs`` keeps a floating dtype and is never written to (the caller's array is safe).
    """
    try:
        p = np.asarray(pred_probs)
        if not np.issubdtype(p.dtype, np.floating):
            p = p.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise AuditInputError(f"pred_probs: not a numeric array ({e}).") from None
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise AuditInputError(
            f"pred_probs: expected [N, K] class probabilities with N >= 1 and K >= 2, got shape "
            f"{p.shape}.")
    if not np.isfinite(p).all():
        raise AuditInputError("pred_probs: contains NaN or inf; pass finite softmax outputs.")
    sums = p.sum(axis=1, dtype=np.float64)
    bad = (np.abs(sums - 1.0) > PROB_SUM_ATOL) | (p < -PROB_SUM_ATOL).any(axis=1)
    if bad.any():
        n = int(np.argmax(bad))
        raise AuditInputError(
            f"pred_probs: row {n} sums to {sums[n]:.6g} (min {p[n].min():.3g}); "
            f"{int(bad.sum())} of {p.shape[0]} rows are not probability vectors (tolerance "
            f"{PROB_SUM_ATOL:g}). Pass softmax outputs, e.g. "
            "scipy.special.softmax(logits, axis=1).")
    k = p.shape[1]
    if q is not None:
        q = noise.validate_transition(q, name="q")
        if q.shape[1] != k:
            raise AuditInputError(
                f"q: has {q.shape[1]} columns (true classes) but pred_probs has {k} classes; "
                f"q is [K_noisy, K_true] with q[j, i] = p(noisy=j | true=i).")
    kn = k if q is None else q.shape[0]
    labels = noise.check_labels(
        noisy_labels, kn, "noisy_labels", error=AuditInputError,
        hint="Labels index pred_probs' columns (and q's rows).")
    if labels.shape[0] != p.shape[0]:
        raise AuditInputError(
            f"noisy_labels: {labels.shape[0]} labels for {p.shape[0]} rows of pred_probs; pass one "
            "label per row, in the same order.")
    return labels, p, q


def _chunks(n: int) -> Iterator[slice]:
    for s in range(0, n, CHUNK):
        yield slice(s, min(s + CHUNK, n))


# --- posterior --------------------------------------------------------------------------------


def _posterior(p: np.ndarray, q: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Validated inputs, one block: ``[n, K]`` posterior in float64, computed in log space."""
    # Rows within PROB_SUM_ATOL of the simplex are put on it, so log() sees no negative entry.
    p = np.clip(p.astype(np.float64), 0.0, None)
    p /= p.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        a = np.log(q[labels]) + np.log(p)
    m = a.max(axis=1, keepdims=True)
    ok = np.isfinite(m[:, 0])
    out = p.copy()
    e = np.exp(a[ok] - m[ok])
    out[ok] = e / e.sum(axis=1, keepdims=True)
    return out


def posterior(pred_probs, q, noisy_labels) -> np.ndarray:
    """``p(true = i | x, noisy)``, proportional to ``q[noisy, i] * pred_probs[n, i]``: ``[N, K]``.

    Args:
      pred_probs: ``[N, K_true]`` clean-label softmax, rows sum to 1.
      q: ``[K_noisy, K_true]``, ``q[j, i] = p(noisy=j | true=i)``, columns sum to 1.
      noisy_labels: ``[N]`` given labels in ``[0, K_noisy)``.

    Computed in log space, so zero entries of ``q`` or ``pred_probs`` and tiny products are
    exact. Where no class is possible under both (a zero row of ``q``, or ``pred_probs`` zero
    wherever ``q[noisy]`` is not) there is nothing to update with, and the row is
    ``pred_probs``, as in :func:`nlnoise.losses.posterior`.
    """
    labels, p, q = check_inputs(noisy_labels, pred_probs, q)
    out = np.empty(p.shape, np.float64)
    for s in _chunks(len(labels)):
        out[s] = _posterior(p[s], q, labels[s])
    return out


def given_and_argmax(p, q, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated inputs (:func:`check_inputs`): the posterior of the given label, the
    posterior's argmax and its value, each ``[N]``, computed block by block."""
    given, best, best_p = (np.empty(len(labels)), np.empty(len(labels), np.int64),
                           np.empty(len(labels)))
    for s in _chunks(len(labels)):
        post = _posterior(p[s], q, labels[s])
        given[s] = post[np.arange(post.shape[0]), labels[s]]
        best[s] = post.argmax(axis=1)
        best_p[s] = post[np.arange(post.shape[0]), best[s]]
    return given, best, best_p


def posterior_joint(p, q, labels) -> np.ndarray:
    """Validated inputs: expected counts ``c[j, i] = sum_{n: noisy_n = j} posterior[n, i]`` of
    (given label j, true class i), ``[K_noisy, K]``; rows sum to the given label counts."""
    c = np.zeros(q.shape)
    for s in _chunks(len(labels)):
        np.add.at(c, labels[s], _posterior(p[s], q, labels[s]))
    return c


# --- noise-matrix estimates ---------------------------------------------------------------------


def _columns(counts: np.ndarray) -> np.ndarray:
    """Column-normalised ``counts[noisy, true]``; a true class with no mass gets an identity
    column (no evidence of noise for a class the predictions never pick)."""
    tot = counts.sum(axis=0, keepdims=True)
    eye = np.eye(*counts.shape)
    return np.where(tot > 0, counts / np.where(tot > 0, tot, 1.0), eye)


def confident_joint(noisy_labels, pred_probs, *, calibrate: bool = True) -> np.ndarray:
    """Confident-learning counts ``c[noisy j, true i]`` (cleanlab's ``confident_joint[given,
    true]``, Northcutt et al. 2021, Eqn 2-3), ``[K, K]``.

    Class ``i``'s threshold is its mean self-confidence, the mean of ``pred_probs[:, i]`` over
    examples labelled ``i``. An example counts towards true class ``i`` when ``i`` is the most
    probable of the classes whose probability reaches their threshold (examples reaching none
    are not counted). Every diagonal entry is at least 1: a zero would give the class a zero
    diagonal in the estimated q, and every example labelled with it would look wrong.
    ``calibrate`` rescales each row to the number of examples with that given label (rows then
    sum to the observed noisy label counts, the total to N), which makes the counts an estimate
    of the joint of given and true labels (cleanlab's ``calibrate_confident_joint``, without its
    rounding to integers).
    """
    labels, p, _ = check_inputs(noisy_labels, pred_probs)
    k = p.shape[1]
    n_given = np.bincount(labels, minlength=k).astype(np.float64)
    thresholds = np.full(k, np.inf)  # a class nobody is labelled with is never "confident"
    sums = np.zeros(k)
    np.add.at(sums, labels, p[np.arange(len(labels)), labels])
    thresholds[n_given > 0] = sums[n_given > 0] / n_given[n_given > 0]
    counts = np.zeros((k, k))
    for s in _chunks(len(labels)):
        block = p[s].astype(np.float64)
        # 1e-6 slack: an example exactly at a threshold that float rounding put below it counts.
        masked = np.where(block >= thresholds - 1e-6, block, -1.0)
        guess, any_conf = masked.argmax(axis=1), (masked >= 0).any(axis=1)
        np.add.at(counts, (labels[s][any_conf], guess[any_conf]), 1.0)
    np.fill_diagonal(counts, np.maximum(np.diag(counts), 1.0))
    if calibrate:
        rows = counts.sum(axis=1, keepdims=True)
        counts = counts * (n_given[:, None] / rows)
    return counts


def estimate_q(noisy_labels, pred_probs, method: str = "confident_joint", *,
               max_iter: int = 500, tol: float = 1e-7) -> np.ndarray:
    """A noise matrix ``q[j, i] = p(noisy=j | true=i)`` (``[K, K]``, columns sum to 1) from
    predictions alone, for models trained elsewhere.

    Methods (``counts[noisy, true]``, then each column normalised):
      - ``"confident_joint"``: calibrated confident-learning counts (:func:`confident_joint`),
        the estimate cleanlab's ``estimate_latent`` derives its ``noise_matrix`` from.
      - ``"mle"``: the Q that maximises the likelihood of the noisy labels under ``Q
        pred_probs`` with the predictions held fixed (the paper's objective for Q alone,
        concave in Q), found by EM (``counts`` = summed posteriors) from the confident-joint
        estimate, to ``tol`` in max abs change or ``max_iter`` iterations. Consistent when
        ``pred_probs`` are calibrated clean-label probabilities; it trusts them most, so
        predictions that learned some of the noisy labels pull it toward the identity more
        than they pull the confident joint.
      - ``"soft_confusion"``: ``counts[j, i] = sum_{n: noisy_n = j} pred_probs[n, i]``.
      - ``"confusion"``: ``counts[j, i] = #{n: noisy_n = j, argmax pred_probs[n] = i}``.
    The last two are the plain baselines. They estimate ``Q C`` rather than ``Q``, with ``C``
    the predictions' own confusion between true classes, so uncertain predictions make them
    overstate the noise (lower the diagonal).
    """
    if method not in ESTIMATE_METHODS:
        raise AuditInputError(f"method: unknown estimate {method!r}; choose one of "
                              f"{ESTIMATE_METHODS}.")
    labels, p, _ = check_inputs(noisy_labels, pred_probs)
    k = p.shape[1]
    if method == "confident_joint":
        return _columns(confident_joint(labels, p))
    if method == "mle":
        q = _columns(confident_joint(labels, p))
        for _ in range(int(max_iter)):
            q_new = _columns(posterior_joint(p, q, labels))
            done = np.abs(q_new - q).max() < tol
            q = q_new
            if done:
                break
        return q
    counts = np.zeros((k, k))
    for s in _chunks(len(labels)):
        if method == "soft_confusion":
            np.add.at(counts, labels[s], p[s].astype(np.float64))
        else:
            np.add.at(counts, (labels[s], p[s].argmax(axis=1)), 1.0)
    return _columns(counts)
