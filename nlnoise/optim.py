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
import optax

from nlnoise import support as support_lib
from nlnoise.fixed_point import decay_fixed_point  # noqa: F401  (part of this API)
from nlnoise.projection import (
    NEEDS_PARAMS,
    Thresholds,
    apply_thresholds,
    check_method,
    project_columns_to_simplex,
    resolve_method,
    simplex_thresholds,
)
from nlnoise.sharding import path_names

ScalarOrSchedule = float | optax.Schedule

# Labels used by optax.partition for the two parts of the trainable parameters.
NET, Q = "net", "q"


class QDecayState(NamedTuple):
    """State of :func:`add_q_regularizer`: a multiplier of its strength, 1 unless lowered.

    Training lowers it with ``optax.tree.set(opt_state, q_decay_scale=...)`` (the paper lowered
    the decay on Q when the training cost climbed; see :mod:`nlnoise.q_schedule`).
    Being part of the optimizer state, it is checkpointed with it.
    """

    q_decay_scale: jax.Array


Q_REGULARIZERS = ("weight_decay", "trace")


def check_regularizer(kind: str, field: str = "q.regularizer",
                      error: type[ValueError] = ValueError) -> None:
    """Raises ``error`` (one line naming ``field``) unless ``kind`` is in ``Q_REGULARIZERS``."""
    if kind not in Q_REGULARIZERS:
        raise error(f"{field}: must be one of {Q_REGULARIZERS} ('weight_decay' is the paper's "
                    f"practice, 'trace' its principle), got {kind!r}.")


def _regularizer_grad(kind: str, p: jax.Array) -> jax.Array:
    # d/dQ of ||Q||^2 / 2 is Q; d/dQ of tr(Q) is the identity (of Q's stored shape).
    return p if kind == "weight_decay" else jnp.eye(*p.shape, dtype=p.dtype)


def add_q_regularizer(strength: float, kind: str = "weight_decay"
                      ) -> optax.GradientTransformation:
    """Adds the regularizer's gradient to Q's updates, times ``q_decay_scale`` (initially 1).

    ``kind="weight_decay"`` adds ``strength * Q`` (the gradient of ``strength/2 ||Q||^2``);
    ``kind="trace"`` adds ``strength * I`` (the gradient of ``strength * tr(Q)``).
    """
    check_regularizer(kind)

    def init_fn(params):
        del params
        return QDecayState(q_decay_scale=jnp.ones((), jnp.float32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(NEEDS_PARAMS)
        s = strength * state.q_decay_scale
        add = lambda u, p: u + (s * _regularizer_grad(kind, p)).astype(u.dtype)
        return jax.tree.map(add, updates, params), state

    return optax.GradientTransformation(init_fn, update_fn)


class QStepState(NamedTuple):
    """State of :func:`decay_step_project`, the fused Q step used from ``NEWTON_MIN_K`` rows.

    ``q_decay_scale``: the regularizer's multiplier, as in :class:`QDecayState` (lowered with
    ``optax.tree.set(opt_state, q_decay_scale=...)``); ``count``: steps taken, for a
    learning-rate schedule; ``tau``: per leaf, each column's simplex threshold at the last step
    (``[K_true]`` as stored, ``-inf`` before the first), where the next step's search starts;
    ``support``: per leaf, each column's support (:class:`nlnoise.support.Support`), from which
    the step finds its thresholds without reading all of Q; a one-element placeholder where Q
    has fewer than ``support.SUPPORT_MIN_ROWS`` rows (or the trace regularizer) and the search
    reads Q.
    """

    q_decay_scale: jax.Array
    count: jax.Array
    tau: Any
    support: Any


# Fields of the optimizer state that a step rebuilds exactly from Q (a fresh support is invalid,
# so the next step searches all of Q and rebuilds it where it can): a checkpoint written before
# one existed restores with it fresh (checkpoint.CheckpointStore.restore's ``fillable``).
REBUILT_STATE = ("support",)


# Size of Q from which the fused step forms its pre-projection values inside every read and in
# the output pass instead of writing them out once: a temporary that large is a fresh buffer
# per step, whose page faults cost more than recomputing the values; below it, recomputing
# costs more. bench/q_update.py, in-read over written-out time in one run: 1.28 at K = 1024
# and 2048, 1.08 at 4096 (64 MiB), 0.54 at 21841 (median of 3; docs/performance.md, 18.1).
FORM_IN_READS_MIN_BYTES = 128 << 20


def _fused_leaf(q: jax.Array, u: jax.Array, tau: jax.Array, sup: support_lib.Support,
                s: jax.Array, lr: jax.Array, kind: str, touched_rows: int
                ) -> tuple[jax.Array, jax.Array, support_lib.Support]:
    def pre_projection(q, u):
        return q + (-lr) * (u + (s * _regularizer_grad(kind, q)).astype(u.dtype))

    # The trace's gradient depends on the row index, which a block of rows does not know.
    if kind != "weight_decay" or q.size * q.dtype.itemsize < FORM_IN_READS_MIN_BYTES:
        v, values = pre_projection(q, u), None
    else:
        v, values = (q, u), pre_projection

    def search(tau):
        return simplex_thresholds(v, tau, values=values)

    if kind != "weight_decay" or not _keeps_support(q.shape[0]):
        th = search(tau)
        return apply_thresholds(v, th, rescale=None, values=values) - q, th.tau, sup
    rebuilt = ~sup.valid & (sup.wait <= 0)
    sup = jax.lax.cond(rebuilt, support_lib.rebuild, lambda q, sup: sup, q, sup)

    def from_support(sup):
        return support_lib.thresholds(q, u, pre_projection, sup, tau, touched_rows)

    def unanswered(sup):
        th = jax.eval_shape(from_support, sup)[0]
        blank = Thresholds(*(jnp.zeros(x.shape, x.dtype) for x in th))
        return blank, jnp.zeros((), bool), sup

    # An invalid support is not searched: a Q that outgrew it pays only the full search.
    th_small, ok, nxt = jax.lax.cond(sup.valid, from_support, unanswered, sup)
    th = jax.lax.cond(ok, lambda t: th_small, search, tau)
    nxt = jax.tree.map(lambda a, b: jnp.where(ok, a, b), nxt,
                       support_lib.after_fallback(sup, rebuilt, th))
    return apply_thresholds(v, th, rescale=None, values=values) - q, th.tau, nxt


def _keeps_support(rows: int) -> bool:
    return rows >= support_lib.SUPPORT_MIN_ROWS


def _init_support(p: jax.Array, kind: str) -> support_lib.Support:
    if kind == "weight_decay" and _keeps_support(p.shape[0]):
        return support_lib.init(p, support_lib.SUPPORT_SLOTS)
    # Unused: no per-column array, so that it is replicated rather than split with Q.
    empty = support_lib.init(jnp.zeros((p.shape[0], 1), p.dtype), 1)
    return empty._replace(witness=jnp.zeros((), jnp.int32))


def decay_step_project(strength: float, kind: str, learning_rate: ScalarOrSchedule,
                       touched_rows: int = support_lib.TOUCHED_ROWS
                       ) -> optax.GradientTransformation:
    """Decay, learning-rate step and column projection of Q as one transformation.

    The same map as ``chain(add_q_regularizer(strength, kind),
    scale_by_learning_rate(learning_rate), project_columns_to_simplex("newton"))``, to float32
    rounding: ``u <- proj(q - lr * (u + strength * scale * R'(q))) - q``. Q is read and
    written a fixed few times instead of once per transformation and Newton step: the
    pre-projection values are formed once, each column's threshold search starts from its last
    threshold (:func:`nlnoise.projection.simplex_thresholds`, usually one or a few reads), and
    the projection and the update are one elementwise pass. Every leaf must be 2-D
    (``[K_noisy, K_true]``); it needs ``params``. Place it last in a chain.

    From ``support.SUPPORT_MIN_ROWS`` rows, with ``kind="weight_decay"``, the search reads
    nothing of Q but the rows the update touches and each column's few entries off its floor
    (:mod:`nlnoise.support`): the step is then that output pass, one read of the update and
    work in ``(support.SUPPORT_SLOTS + touched_rows) x K``. ``touched_rows`` caps the rows of
    the update that may be nonzero for that (the batch size, for the noisy loss's gradient);
    a step beyond it, or one that the support cannot describe, takes the search over Q.
    """
    check_regularizer(kind)
    if int(touched_rows) != touched_rows or touched_rows < 1:
        raise ValueError(f"touched_rows: must be an integer >= 1 (the batch size), got "
                         f"{touched_rows!r}.")

    def init_fn(params):
        tau = jax.tree.map(lambda p: jnp.full(p.shape[1:], -jnp.inf, p.dtype), params)
        sup = jax.tree.map(lambda p: _init_support(p, kind), params)
        return QStepState(jnp.ones((), jnp.float32), jnp.zeros((), jnp.int32), tau, sup)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(NEEDS_PARAMS)
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        s = strength * state.q_decay_scale
        leaves, treedef = jax.tree.flatten(params)
        out = [_fused_leaf(p, u, t, sp, s, lr, kind, touched_rows) for p, u, t, sp in
               zip(leaves, treedef.flatten_up_to(updates), treedef.flatten_up_to(state.tau),
                   treedef.flatten_up_to(state.support), strict=True)]
        new_u, new_tau, new_sup = (treedef.unflatten([o[i] for o in out]) for i in range(3))
        return new_u, QStepState(state.q_decay_scale, optax.safe_increment(state.count),
                                 new_tau, new_sup)

    return optax.GradientTransformation(init_fn, update_fn)


def _by_leaf_size(small: optax.GradientTransformation, large: optax.GradientTransformation,
                  method: str) -> optax.GradientTransformation:
    """``large`` when every leaf is a 2-D Q that ``method`` projects sort-free, else ``small``.

    Shapes are static under jit, so the choice is made once per compilation, and the state of
    ``small`` (every K below ``NEWTON_MIN_K``, such as K = 10) keeps its layout.
    """

    def use_large(params) -> bool:
        leaves = jax.tree.leaves(params)
        return bool(leaves) and all(
            p.ndim == 2 and resolve_method(method, p.shape[0]) == "newton" for p in leaves)

    def init_fn(params):
        return (large if use_large(params) else small).init(params)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(NEEDS_PARAMS)
        return (large if use_large(params) else small).update(updates, state, params)

    return optax.GradientTransformation(init_fn, update_fn)


def q_optimizer(
    learning_rate: ScalarOrSchedule,
    *,
    weight_decay: float = 0.1,
    freeze_steps: int = 0,
    momentum: float | None = None,
    regularizer: str = "weight_decay",
    projection: str = "auto",
    grad_clip: float = 0.0,
    touched_rows: int = support_lib.TOUCHED_ROWS,
) -> optax.GradientTransformation:
    """The optimizer for Q: frozen, then SGD + decoupled decay (or trace), then projection.

    Per step after the freeze: ``Q <- proj(Q - lr * (m + wd * Q))`` where ``m`` is the
    (momentum-averaged) gradient; with ``regularizer="trace"`` the ``wd * Q`` term is replaced
    by ``wd * I``, the gradient of ``wd * tr(Q)``. Decay is decoupled from momentum.

    Q's shape picks the implementation when the state is created: where the projection is
    optax's sort (K below ``NEWTON_MIN_K`` with ``"auto"``, e.g. K = 10) the step is the chain
    ``add_q_regularizer``, ``scale_by_learning_rate``, :func:`project_columns_to_simplex`,
    with its state layout; where it is sort-free, :func:`decay_step_project` does all three in
    a few passes over Q, its search warm-started from the last step's thresholds.

    Args:
      learning_rate: step size for Q: a float, or an optax schedule of the *global* step
        (counted from step 0, through the freeze), so that Q's rate drops come at the same
        steps as the network's.
      weight_decay: strength of the regularizer (the paper: 0.1).
      freeze_steps: number of updates during which Q stays bit-for-bit unchanged and the
        inner state (momentum) does not advance.
      momentum: optional heavy-ball momentum for Q's gradient.
      regularizer: ``"weight_decay"`` (the paper's practice) or ``"trace"`` (its principle).
      projection: the column projection's method (:func:`nlnoise.projection.project_columns`):
        ``"auto"``
        (optax's sort for small K, sort-free from ``NEWTON_MIN_K``), ``"sort"`` or ``"newton"``.
      grad_clip: if > 0, Q's gradient is clipped to this global norm (each entry first to
        +-grad_clip, so that the norm itself stays finite). ``d log(Q p)_j / d Q[j, i] =
        p_i / (Q p)_j`` is unbounded where the network gives the observed noisy label almost
        no mass; one such batch can throw every column of Q onto a vertex.
      touched_rows: the most rows of Q one step's gradient touches, i.e. the batch size: up
        to it, a large Q's step reads only those rows and each column's support
        (:func:`decay_step_project`). Larger batches are right too, only slower.
    """
    if grad_clip < 0:
        raise ValueError(f"q.grad_clip: must be >= 0 (0: off), got {grad_clip}.")
    if weight_decay < 0:
        raise ValueError(f"q.weight_decay: must be >= 0, got {weight_decay}.")
    if int(freeze_steps) != freeze_steps or freeze_steps < 0:
        raise ValueError(f"freeze_steps: must be a non-negative integer, got {freeze_steps!r}.")
    check_regularizer(regularizer)
    check_method(projection)
    # Off is two identities, so that the optimizer state has one layout either way.
    clip = (optax.chain(optax.clip(grad_clip), optax.clip_by_global_norm(grad_clip))
            if grad_clip else optax.chain(optax.identity(), optax.identity()))
    if freeze_steps and callable(learning_rate):
        # conditionally_mask advances the inner chain's step count only on unfrozen steps, so
        # the inner count is the global step minus the freeze.
        schedule = learning_rate
        learning_rate = lambda count: schedule(count + freeze_steps)
    head = (clip, optax.trace(decay=momentum) if momentum else optax.identity())
    sorted_chain = optax.chain(
        *head,
        add_q_regularizer(weight_decay, regularizer),
        optax.scale_by_learning_rate(learning_rate),
        project_columns_to_simplex(projection),
    )
    fused = optax.chain(*head, decay_step_project(weight_decay, regularizer, learning_rate,
                                                    touched_rows))
    inner = _by_leaf_size(sorted_chain, fused, projection)
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
        for name in path_names(path):
            if name in layer_weight_decay:
                return float(layer_weight_decay[name])
        return float(weight_decay)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(NEEDS_PARAMS)
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
