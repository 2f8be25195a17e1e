"""Optimizers for the noise layer Q and for the whole train state, as optax chains.

Q (``[K_noisy, K_true]``, column-stochastic) is learned as in the paper's section 3.2: it stays
exactly the identity for ``freeze_steps`` updates, then takes SGD steps with decoupled weight
decay, and after every step each column is projected back onto the probability simplex.

Learning-rate and decay convention: nlnoise's losses are *means* over the batch, and
``q_optimizer``'s ``weight_decay`` is the coefficient against that mean gradient: after the
freeze each step is ``Q <- proj(Q - lr * (grad_mean + weight_decay * Q))``, so Q shrinks by
``lr * weight_decay`` per step. This is cuda-convnet's convention, in which the paper's
numbers were given: its update ``inc = mom * inc + (epsW / numCases) * sum_n grad_n - wc * epsW
* W`` applies ``epsW`` to the mean gradient and the weight cost ``wc`` in the same mean units.
So the paper's "weight decay 0.1 on Q" is ``weight_decay=0.1`` here, the default.

What a constant decay does to Q is shown by :func:`decay_fixed_point`: even with a perfect
network, the decay holds each column of Q away from Q*, toward the uniform distribution, by an
amount that grows with ``weight_decay / prior_i`` (so with the number of classes). At 0.1 a
10-class Q settles at a trace of about 4.2 for ``tr(Q*) = 5``. A constant decay therefore
trades a faster exit from the identity for a lasting bias; the ``lower_on_plateau`` rule
(:mod:`nlnoise.q_schedule`) lowers it once Q has settled, which takes most of that bias back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import projections

from nlnoise.noise import validate_transition

ScalarOrSchedule = float | optax.Schedule

_NO_PARAMS = "this transformation needs the current params: call update(updates, state, params)."

# Labels used by optax.partition for the two parts of the trainable parameters.
NET, Q = "net", "q"


# Column length (``K_noisy``) from which ``method="auto"`` uses the sort-free projection. Timed
# with ``bench/projection_methods.py`` on this 2-core CPU (see docs/performance.md, item 6).
NEWTON_MIN_K = 32

# Cap on the Newton iterations of the sort-free projection. Each one is a single pass over Q;
# from the starting threshold below they typically stop after fewer than 10.
NEWTON_MAX_ITER = 64

PROJECTION_METHODS = ("auto", "sort", "newton")


def _project_columns_sort(q: jax.Array) -> jax.Array:
    # optax's reference: sorts each column, O(K log K) per column, O(K^2 log K) for all of Q.
    return jax.vmap(projections.projection_simplex, in_axes=1, out_axes=1)(q)


def _project_columns_newton(q: jax.Array, max_iter: int = NEWTON_MAX_ITER) -> jax.Array:
    """Sort-free projection of every column onto the simplex (Michelot / Condat).

    The projection is ``max(v - tau, 0)`` with ``tau`` the root of ``f(tau) = sum max(v - tau,
    0) = 1``. ``f`` is convex, piecewise linear and decreasing, so Newton's step from a ``tau``
    below the root, ``tau <- (sum_{v > tau} v - 1) / |{v > tau}|`` (Michelot's step), rises
    monotonically to the root and stops exactly once the support no longer changes. Each step is
    one elementwise pass with column reductions over axis 0: no sort, no per-column loop, and a
    Q sharded by columns needs no communication but the loop's stopping test.
    """
    k = q.shape[0]
    col_max = jnp.max(q, axis=0)
    # Two lower bounds on the root: f(max - 1) >= 1 and f(mean - 1/K) >= sum(v - tau) = 1.
    tau0 = jnp.maximum(col_max - 1, (jnp.sum(q, axis=0) - 1) / k)

    def step(tau: jax.Array) -> jax.Array:
        support = q > tau
        n = jnp.maximum(jnp.sum(support, axis=0), 1).astype(q.dtype)
        new = (jnp.sum(jnp.where(support, q, 0), axis=0) - 1) / n
        # In exact arithmetic ``new >= tau``; max() keeps rounding from making it oscillate.
        return jnp.maximum(tau, new)

    def cond(carry: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        _, moved, i = carry
        return jnp.logical_and(moved, i < max_iter)

    def body(carry: tuple[jax.Array, jax.Array, jax.Array]
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
        tau, _, i = carry
        new = step(tau)
        return new, jnp.any(new > tau), i + 1

    tau, _, _ = jax.lax.while_loop(cond, body, (tau0, jnp.array(True), jnp.array(0)))
    x = jnp.maximum(q - tau, 0)
    # Exact feasibility: rescale the (already nearly unit) mass, which keeps x >= 0 and puts the
    # float32 rounding of tau (~1e-7 per entry, K entries) back on the simplex. A column whose
    # values are so large that ``max - 1 == max`` in its dtype has x = 0: it gets its argmax.
    total = jnp.sum(x, axis=0)
    at_max = (q == col_max).astype(q.dtype)
    fallback = at_max / jnp.sum(at_max, axis=0)
    return jnp.where(total > 0, x / jnp.where(total > 0, total, 1), fallback)


def project_columns(q: jax.Array, method: str = "auto") -> jax.Array:
    """Euclidean projection of every column of ``q`` (``[K_noisy, K_true]``) onto the simplex.

    ``method="sort"`` is optax's ``projection_simplex`` (the reference), which sorts each
    column: O(K^2 log K) per step, minutes at K=21841. ``"newton"`` finds each column's
    threshold by Newton/Michelot steps without sorting (same result up to rounding; columns sum
    to 1 and are non-negative). ``"auto"`` takes ``"sort"`` below ``NEWTON_MIN_K`` rows and
    ``"newton"`` from there, where it was measured faster.
    """
    if q.ndim != 2:
        raise ValueError(f"q: column projection needs a 2-D matrix, got shape {q.shape}.")
    if method not in PROJECTION_METHODS:
        raise ValueError(f"method: must be one of {PROJECTION_METHODS}, got {method!r}.")
    if method == "auto":
        method = "newton" if q.shape[0] >= NEWTON_MIN_K else "sort"
    return _project_columns_newton(q) if method == "newton" else _project_columns_sort(q)


def project_columns_to_simplex(method: str = "auto") -> optax.GradientTransformation:
    """Makes updates land Q on column-stochastic matrices: ``u <- proj(q + u) - q``.

    Place it **last** in a chain (after learning-rate scaling and decay): it needs ``params``
    and turns the final update into one after which every column of every 2-D leaf lies on the
    probability simplex. ``method`` is that of :func:`project_columns`. With ``"sort"``, zero
    updates on a point already on the simplex stay exactly zero.
    """
    if method not in PROJECTION_METHODS:
        raise ValueError(f"method: must be one of {PROJECTION_METHODS}, got {method!r}.")

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(_NO_PARAMS)
        new_updates = jax.tree.map(lambda p, u: project_columns(p + u, method) - p, params,
                                   updates)
        return new_updates, state

    return optax.GradientTransformation(init_fn, update_fn)


class QDecayState(NamedTuple):
    """State of :func:`add_q_regularizer`: a multiplier of its strength, 1 unless lowered.

    Training lowers it with ``optax.tree.set(opt_state, q_decay_scale=...)`` (the paper lowered
    the decay on Q when the training cost climbed; see :mod:`nlnoise.q_schedule`).
    Being part of the optimizer state, it is checkpointed with it.
    """

    q_decay_scale: jax.Array


def add_q_regularizer(strength: float, kind: str = "weight_decay"
                      ) -> optax.GradientTransformation:
    """Adds the regularizer's gradient to Q's updates, times ``q_decay_scale`` (initially 1).

    ``kind="weight_decay"`` adds ``strength * Q`` (the gradient of ``strength/2 ||Q||^2``);
    ``kind="trace"`` adds ``strength * I`` (the gradient of ``strength * tr(Q)``).
    """
    if kind not in ("weight_decay", "trace"):
        raise ValueError(f"q.regularizer: must be 'weight_decay' or 'trace', got {kind!r}.")

    def init_fn(params):
        del params
        return QDecayState(q_decay_scale=jnp.ones((), jnp.float32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(_NO_PARAMS)
        s = strength * state.q_decay_scale

        def add(u, p):
            reg = p if kind == "weight_decay" else jnp.eye(*p.shape, dtype=p.dtype)
            return u + (s * reg).astype(u.dtype)

        return jax.tree.map(add, updates, params), state

    return optax.GradientTransformation(init_fn, update_fn)


def decay_fixed_point(
    q_star: np.ndarray,
    strength: float,
    *,
    class_prior: np.ndarray | None = None,
    regularizer: str = "weight_decay",
) -> np.ndarray:
    """Where the regularizer leaves learned Q when the network is perfect (``C = I``).

    With ``p(true | x)`` one-hot and labels drawn from ``Q*`` (``[K_noisy, K_true]``), the
    expected mean loss plus regularizer separates by column: column ``i`` of the learned Q
    minimises ``-prior_i * sum_j Q*[j, i] log q_j + strength * R(q)`` on the simplex, with
    ``R(q) = ||q||^2 / 2`` (``"weight_decay"``) or ``q_i`` (``"trace"``). ``strength`` is in
    the mean-loss convention of :func:`q_optimizer`. The answer is ``Q*`` at strength 0 and
    more diffuse above it: the bias the decay leaves even once the network is clean, which
    grows with ``strength / prior_i`` (so with K). Solved exactly per column by bisection on
    the Lagrange multiplier of ``sum q = 1``; float64.
    """
    q_star = validate_transition(q_star, name="q_star")
    k_noisy, k_true = q_star.shape
    if strength < 0:
        raise ValueError(f"strength: must be >= 0, got {strength}.")
    if regularizer not in ("weight_decay", "trace"):
        raise ValueError(f"regularizer: must be 'weight_decay' or 'trace', got {regularizer!r}.")
    prior = (np.full(k_true, 1.0 / k_true) if class_prior is None
             else np.asarray(class_prior, np.float64))
    if prior.shape != (k_true,) or (prior < 0).any() or not np.isclose(prior.sum(), 1.0):
        raise ValueError(f"class_prior: must be {k_true} non-negative numbers summing to 1.")
    if strength == 0:
        return q_star.copy()
    out = np.zeros_like(q_star)
    for i in range(k_true):
        a = prior[i] * q_star[:, i]  # the data term's weight on log q_j

        if regularizer == "weight_decay":
            # Stationarity -a_j / q_j + s q_j = nu  =>  q_j = (nu + sqrt(nu^2 + 4 s a_j)) / 2s.
            def col(nu, a=a):
                return (nu + np.sqrt(nu * nu + 4 * strength * a)) / (2 * strength)
            lo, hi = -1.0, strength
            while col(lo).sum() > 1:
                lo *= 2
        else:
            off = a.copy()
            if i < k_noisy:
                off[i] = 0.0
            if not off.any():  # nothing flips out of class i: the trace cannot move it
                out[:, i] = q_star[:, i]
                continue

            # -a_j / q_j + s [j == i] = nu (nu < 0)  =>  q_j = a_j / (s [j == i] - nu).
            def col(nu, a=a, i=i):
                d = -nu * np.ones_like(a)
                if i < k_noisy:
                    d[i] += strength
                return a / d
            lo, hi = -1.0, 0.0
            while col(lo).sum() > 1:
                lo *= 2
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if col(mid).sum() > 1:
                hi = mid
            else:
                lo = mid
        q = col(0.5 * (lo + hi))
        out[:, i] = q / q.sum()
    return out


def q_optimizer(
    learning_rate: ScalarOrSchedule,
    *,
    weight_decay: float = 0.1,
    freeze_steps: int = 0,
    momentum: float | None = None,
    regularizer: str = "weight_decay",
    projection: str = "auto",
    grad_clip: float = 0.0,
) -> optax.GradientTransformation:
    """The optimizer for Q: frozen, then SGD + decoupled decay (or trace), then projection.

    Per step after the freeze: ``Q <- proj(Q - lr * (m + wd * Q))`` where ``m`` is the
    (momentum-averaged) gradient; with ``regularizer="trace"`` the ``wd * Q`` term is replaced
    by ``wd * I``, the gradient of ``wd * tr(Q)``. Decay is decoupled from momentum.

    Args:
      learning_rate: step size for Q: a float, or an optax schedule of the *global* step
        (counted from step 0, through the freeze), so that Q's rate drops come at the same
        steps as the network's.
      weight_decay: strength of the regularizer (the paper: 0.1).
      freeze_steps: number of updates during which Q stays bit-for-bit unchanged and the
        inner state (momentum) does not advance.
      momentum: optional heavy-ball momentum for Q's gradient.
      regularizer: ``"weight_decay"`` (the paper's practice) or ``"trace"`` (its principle).
      projection: the column projection's ``method`` (:func:`project_columns`): ``"auto"``
        (optax's sort for small K, sort-free from ``NEWTON_MIN_K``), ``"sort"`` or ``"newton"``.
      grad_clip: if > 0, Q's gradient is clipped to this global norm (each entry first to
        +-grad_clip, so that the norm itself stays finite). ``d log(Q p)_j / d Q[j, i] =
        p_i / (Q p)_j`` is unbounded where the network gives the observed noisy label almost
        no mass; one such batch can throw every column of Q onto a vertex.
    """
    if grad_clip < 0:
        raise ValueError(f"q.grad_clip: must be >= 0 (0: off), got {grad_clip}.")
    if weight_decay < 0:
        raise ValueError(f"q.weight_decay: must be >= 0, got {weight_decay}.")
    if int(freeze_steps) != freeze_steps or freeze_steps < 0:
        raise ValueError(f"freeze_steps: must be a non-negative integer, got {freeze_steps!r}.")
    # Off is two identities, so that the optimizer state has one layout either way.
    clip = (optax.chain(optax.clip(grad_clip), optax.clip_by_global_norm(grad_clip))
            if grad_clip else optax.chain(optax.identity(), optax.identity()))
    if freeze_steps and callable(learning_rate):
        # conditionally_mask advances the inner chain's step count only on unfrozen steps, so
        # the inner count is the global step minus the freeze.
        schedule = learning_rate
        learning_rate = lambda count: schedule(count + freeze_steps)
    inner = optax.chain(
        clip,
        optax.trace(decay=momentum) if momentum else optax.identity(),
        add_q_regularizer(weight_decay, regularizer),
        optax.scale_by_learning_rate(learning_rate),
        project_columns_to_simplex(projection),
    )
    if freeze_steps == 0:
        return inner
    return optax.transforms.conditionally_mask(inner, lambda step: step >= freeze_steps)


def _is_kernel(path: tuple[Any, ...], leaf: jax.Array) -> bool:
    # cuda-convnet puts weight cost on weights only, never on biases or normalisation scales.
    return leaf.ndim >= 2


def net_optimizer(
    learning_rate: ScalarOrSchedule,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    layer_weight_decay: Mapping[str, float] | None = None,
    bias_lr_scale: float = 1.0,
) -> optax.GradientTransformation:
    """SGD with momentum and (coupled, cuda-convnet style) weight decay on the network's kernels.

    ``layer_weight_decay`` maps a top-level layer name (e.g. ``"fc10"``) to its own decay, as
    cuda-convnet's per-layer ``wc``; other kernels use ``weight_decay``; biases get none.
    ``bias_lr_scale`` multiplies the learning rate of biases (1-D leaves): cuda-convnet's
    layers-18pct sets ``epsB = 2 * epsW``, i.e. 2.
    """
    layer_weight_decay = dict(layer_weight_decay or {})

    def decay_for(path, leaf):
        if not _is_kernel(path, leaf):
            return 0.0
        names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        for name in names:
            if name in layer_weight_decay:
                return float(layer_weight_decay[name])
        return float(weight_decay)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(_NO_PARAMS)
        decayed = jax.tree_util.tree_map_with_path(
            lambda path, u, p: u + decay_for(path, p) * p if decay_for(path, p) else u,
            updates,
            params,
        )
        return decayed, state

    def biases(params):
        return jax.tree_util.tree_map_with_path(lambda path, p: not _is_kernel(path, p), params)

    return optax.chain(
        optax.GradientTransformation(init_fn, update_fn),
        optax.sgd(learning_rate, momentum=momentum or None),
        # SGD is linear in the rate, so scaling a bias's step scales its rate.
        optax.masked(optax.scale(bias_lr_scale), biases),
    )


def train_state_optimizer(
    net_tx: optax.GradientTransformation,
    q_tx: optax.GradientTransformation | None,
) -> optax.GradientTransformation:
    """One optimizer for params ``{"net": ..., "q": ...}``: each part gets its own chain.

    ``q_tx=None`` keeps Q fixed (the ``none``, ``true`` and ``outlier`` models): its updates are
    exactly zero. The network's parameters never pass through the projection.
    """
    return optax.partition(
        {NET: net_tx, Q: q_tx if q_tx is not None else optax.set_to_zero()},
        param_labels=lambda params: {k: (Q if k == Q else NET) for k in params},
    )


def schedule_from_epochs(
    base: float, steps_per_epoch: int, boundaries_epochs: list[int] | tuple[int, ...] = (),
    factor: float = 0.1,
) -> Callable[[jax.Array], jax.Array]:
    """Piecewise-constant schedule: ``base``, multiplied by ``factor`` at each epoch boundary.

    The paper's nets divide learning rates by 10 after 120 epochs and again after 10 more:
    ``schedule_from_epochs(lr, spe, (120, 130))``.
    """
    return optax.piecewise_constant_schedule(
        base, {int(e * steps_per_epoch): factor for e in boundaries_epochs}
    )
