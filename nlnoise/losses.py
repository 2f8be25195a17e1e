"""The noise adaptation layer as pure JAX functions (paper section 3).

Shapes and orientation:
  ``logits``: ``[B, K_true]``, the base network's outputs ``f(x)``.
  ``q``: ``[K_noisy, K_true]``, column-stochastic, ``q[j, i] = p(noisy=j | true=i)``.
  Combined model (Eqn 2): ``p(noisy=j | x) = sum_i q[j, i] softmax(f(x))[i]``.

Numerics. ``log(Q p)`` is computed in log space as ``logsumexp_i(log q[j, i] + log p[i])``, with
the maximum taken over the *support* of row ``j`` only, so the value is exact (not clamped) even
for one-hot ``q`` and logits of size 1e4. Two quantities have no finite value and are capped:

* a row of ``q`` that is entirely zero (Eqn 8's outlier row) gives ``p = 0``; its log is
  reported as :data:`LOG_ZERO`;
* ``d log p_noisy[j] / d q[j, i] = p[i] / p_noisy[j]`` is astronomically large when ``q[j, i] = 0``
  and ``p[i] >> p_noisy[j]`` (a confident prediction disagreeing with the label while Q is the
  identity). That factor is capped at ``exp(GRAD_EXP_CAP)``. Gradients w.r.t. the logits are
  never capped: they are convex combinations and always finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# log of a probability that is exactly zero (an all-zero row of q). Far below any attainable
# log-probability (logits of 1e4 give about -2e4) yet small enough that sums over millions of
# examples stay finite in float32.
LOG_ZERO = -1e6
# Cap on log(p[i] / p_noisy[j]) in the gradient w.r.t. q; exp(60) ~ 1e26 keeps batch sums finite.
GRAD_EXP_CAP = 60.0
# Above this many [B, K_noisy, K_true] elements, noisy_log_probs works on row blocks of q.
_MAX_DENSE_ELEMENTS = 1 << 24


@jax.custom_jvp
def _log_mix(log_p: jax.Array, q: jax.Array) -> jax.Array:
    """``log(sum_i q[..., i] * exp(log_p[..., i]))`` over the last axis, exact and finite."""
    out, _, _ = _log_mix_parts(log_p, q)
    return out


def _log_mix_parts(log_p, q):
    support = q > 0
    a = jnp.where(support, jnp.log(jnp.where(support, q, 1)) + log_p, -jnp.inf)
    m = jnp.max(a, axis=-1, keepdims=True)
    has_support = jnp.isfinite(m)
    m = jnp.where(has_support, m, 0)
    s = jnp.sum(jnp.exp(a - m), axis=-1)
    out = jnp.where(has_support[..., 0], m[..., 0] + jnp.log(jnp.where(s > 0, s, 1)), LOG_ZERO)
    return out.astype(log_p.dtype), a, support


@_log_mix.defjvp
def _log_mix_jvp(primals, tangents):
    log_p, q = primals
    d_log_p, d_q = tangents
    out, a, support = _log_mix_parts(log_p, q)
    # Weights of the mixture: q[j,i] p[i] / p_noisy[j], in [0, 1] and summing to 1.
    w = jnp.where(support, jnp.exp(a - out[..., None]), 0)
    # d out / d q[j, i] = p[i] / p_noisy[j], also where q[j, i] == 0 (learning Q needs it).
    e = jnp.exp(jnp.minimum(log_p - out[..., None], GRAD_EXP_CAP))
    return out, jnp.sum(w * d_log_p, axis=-1) + jnp.sum(e * d_q, axis=-1)


def _check_shapes(logits, q, labels=None) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits: expected [B, K_true], got shape {logits.shape}.")
    if q.ndim != 2 or q.shape[1] != logits.shape[1]:
        raise ValueError(
            f"q: expected [K_noisy, K_true={logits.shape[1]}] (columns are true classes), "
            f"got shape {q.shape}."
        )
    if labels is not None and labels.shape != logits.shape[:1]:
        raise ValueError(f"labels: expected shape [{logits.shape[0]}], got {labels.shape}.")


def noisy_log_probs(logits: jax.Array, q: jax.Array) -> jax.Array:
    """``log(Q softmax(logits))`` per example: ``[B, K_true] x [K_noisy, K_true] -> [B, K_noisy]``.

    Finite, with finite gradients w.r.t. ``logits`` and ``q``, for ``q`` with exact zeros and for
    logits of any finite size (see the module docstring for the two capped quantities). Memory is
    bounded: large ``B * K_noisy * K_true`` is processed in blocks of rows of ``q``.
    """
    _check_shapes(logits, q)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    q = q.astype(log_p.dtype)
    b, (kn, kt) = logits.shape[0], q.shape
    if b * kn * kt <= _MAX_DENSE_ELEMENTS:
        return _log_mix(log_p[:, None, :], q[None, :, :])
    rows_per_block = max(1, _MAX_DENSE_ELEMENTS // max(1, b * kt))
    per_row = jax.lax.map(lambda row: _log_mix(log_p, row[None, :]), q, batch_size=rows_per_block)
    return per_row.T


def noisy_probs(logits: jax.Array, q: jax.Array) -> jax.Array:
    """``Q softmax(logits)`` per example, ``[B, K_noisy]`` (Eqn 2), for metrics and plots."""
    _check_shapes(logits, q)
    return jax.nn.softmax(logits, axis=-1) @ q.T.astype(logits.dtype)


def noisy_cross_entropy(logits: jax.Array, q: jax.Array | None, labels: jax.Array) -> jax.Array:
    """Per-example ``-log p_noisy(labels | x)`` (the summand of Eqn 3), shape ``[B]``.

    ``labels`` are noisy labels in ``[0, K_noisy)``. ``q=None`` means no noise layer (plain
    softmax cross entropy). Only the label's row of ``q`` is used, so the cost is ``O(B K)``
    rather than ``O(B K^2)``. Labels are not range-checked here (this runs under ``jit``);
    :func:`nlnoise.noise.check_labels` validates them at the data boundary.
    """
    if q is None:
        if logits.ndim != 2 or labels.shape != logits.shape[:1]:
            raise ValueError(f"logits {logits.shape} / labels {labels.shape}: want [B, K] / [B].")
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    _check_shapes(logits, q, labels)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -_log_mix(log_p, q.astype(log_p.dtype)[labels])


def posterior(logits: jax.Array, q: jax.Array, noisy_labels: jax.Array) -> jax.Array:
    """``p(true=i | x, noisy)``, proportional to ``q[noisy, i] * softmax(logits)[i]``.

    Shape ``[B, K_true]``.

    Low ``posterior[n, noisy_labels[n]]`` flags a likely mislabelled example. If ``q``'s row for
    the given label is all zero (that label is impossible under ``q``), the prior
    ``softmax(logits)`` is returned for that example. On saved probabilities, without JAX:
    :func:`nlnoise.estimate.posterior`; flagged labels: :func:`nlnoise.audit.find_label_issues`.
    """
    _check_shapes(logits, q, noisy_labels)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    rows = q.astype(log_p.dtype)[noisy_labels]
    support = rows > 0
    a = jnp.where(support, jnp.log(jnp.where(support, rows, 1)) + log_p, -jnp.inf)
    possible = jnp.any(support, axis=-1, keepdims=True)
    return jnp.where(possible, jax.nn.softmax(jnp.where(possible, a, log_p), axis=-1),
                     jnp.exp(log_p))


def trace_penalty(q: jax.Array) -> jax.Array:
    """``tr(Q)``: the paper's principled regularizer (minimized only at ``Q = Q*``, section 3.2)."""
    return jnp.trace(q)


def l2_penalty(q: jax.Array) -> jax.Array:
    """``0.5 ||Q||_F^2``: what weight decay on Q amounts to (its gradient is ``Q``).

    On the simplex it is smallest for uniform columns, so it diffuses Q away from the identity,
    standing in for ``tr(Q)``.
    """
    return 0.5 * jnp.sum(jnp.square(q))


def soft_confusion(probs: jax.Array, true_labels: jax.Array, num_classes: int) -> jax.Array:
    """Eqn 4/5: ``c[i, j] = mean_{n: true_n = j} probs[n, i]``, ``[K_pred, K_true]``.

    With ``probs = softmax(f(x))`` this is the base model's ``C``; with the combined model's
    ``Q softmax(f(x))`` it is ``C~``, and ``C~ = Q C`` (the identity behind the method). A true
    class with no examples gets a zero column.
    """
    sums = jax.ops.segment_sum(probs, true_labels, num_segments=num_classes)  # [K_true, K_pred]
    counts = jax.ops.segment_sum(jnp.ones_like(true_labels, probs.dtype), true_labels,
                                 num_segments=num_classes)
    return (sums / jnp.maximum(counts, 1)[:, None]).T
