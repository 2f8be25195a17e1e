"""Optimizers for the noise layer Q and for the whole train state, as optax chains.

Q (``[K_noisy, K_true]``, column-stochastic) is learned as in the paper's section 3.2: it stays
exactly the identity for ``freeze_steps`` updates, then takes SGD steps with decoupled weight
decay, and after every step each column is projected back onto the probability simplex.

Learning-rate and decay convention: nlnoise's losses are *means* over the batch. cuda-convnet
(the paper's framework) updates ``inc = mom * inc + (epsW / numCases) * sum_n grad_n
- wc * epsW * W``, i.e. ``epsW`` times the mean gradient plus ``epsW * wc`` times the weights,
so its ``epsW`` is our learning rate and its ``wc`` our weight decay, unchanged. The paper's
"weight decay 0.1 on Q" is therefore ``q_weight_decay=0.1`` with Q shrunk by
``learning_rate * 0.1`` per step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import projections

ScalarOrSchedule = float | optax.Schedule

_NO_PARAMS = "this transformation needs the current params: call update(updates, state, params)."

# Labels used by optax.partition for the two parts of the trainable parameters.
NET, Q = "net", "q"


def project_columns(q: jax.Array) -> jax.Array:
    """Euclidean projection of every column of ``q`` (``[K_noisy, K_true]``) onto the simplex."""
    if q.ndim != 2:
        raise ValueError(f"q: column projection needs a 2-D matrix, got shape {q.shape}.")
    return jax.vmap(projections.projection_simplex, in_axes=1, out_axes=1)(q)


def project_columns_to_simplex() -> optax.GradientTransformation:
    """Makes updates land Q on column-stochastic matrices: ``u <- proj(q + u) - q``.

    Place it **last** in a chain (after learning-rate scaling and decay): it needs ``params``
    and turns the final update into one after which every column of every 2-D leaf lies on the
    probability simplex. Zero updates on a point already on the simplex stay exactly zero.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(_NO_PARAMS)
        new_updates = jax.tree.map(lambda p, u: project_columns(p + u) - p, params, updates)
        return new_updates, state

    return optax.GradientTransformation(init_fn, update_fn)


class QDecayState(NamedTuple):
    """State of :func:`add_q_regularizer`: a multiplier of its strength, 1 unless lowered.

    Training lowers it with ``optax.tree.set(opt_state, q_decay_scale=...)`` (the paper lowered
    the decay on Q when the training cost climbed; see :func:`nlnoise.train.next_decay_scale`).
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
        raise ValueError(f"noise.q_regularizer: must be 'weight_decay' or 'trace', got {kind!r}.")

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


def q_optimizer(
    learning_rate: ScalarOrSchedule,
    *,
    weight_decay: float = 0.1,
    freeze_steps: int = 0,
    momentum: float | None = None,
    regularizer: str = "weight_decay",
) -> optax.GradientTransformation:
    """The optimizer for Q: frozen, then SGD + decoupled decay (or trace), then projection.

    Per step after the freeze: ``Q <- proj(Q - lr * (m + wd * Q))`` where ``m`` is the
    (momentum-averaged) gradient; with ``regularizer="trace"`` the ``wd * Q`` term is replaced
    by ``wd * I``, the gradient of ``wd * tr(Q)``. Decay is decoupled from momentum.

    Args:
      learning_rate: step size for Q (a float or an optax schedule, counted from step 0).
      weight_decay: strength of the regularizer (the paper: 0.1).
      freeze_steps: number of updates during which Q stays bit-for-bit unchanged and the
        inner state (momentum) does not advance.
      momentum: optional heavy-ball momentum for Q's gradient.
      regularizer: ``"weight_decay"`` (the paper's practice) or ``"trace"`` (its principle).
    """
    if weight_decay < 0:
        raise ValueError(f"noise.q_weight_decay: must be >= 0, got {weight_decay}.")
    if int(freeze_steps) != freeze_steps or freeze_steps < 0:
        raise ValueError(f"freeze_steps: must be a non-negative integer, got {freeze_steps!r}.")
    inner = optax.chain(
        optax.trace(decay=momentum) if momentum else optax.identity(),
        add_q_regularizer(weight_decay, regularizer),
        optax.scale_by_learning_rate(learning_rate),
        project_columns_to_simplex(),
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
) -> optax.GradientTransformation:
    """SGD with momentum and (coupled, cuda-convnet style) weight decay on the network's kernels.

    ``layer_weight_decay`` maps a top-level layer name (e.g. ``"fc10"``) to its own decay, as
    cuda-convnet's per-layer ``wc``; other kernels use ``weight_decay``; biases get none.
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

    return optax.chain(
        optax.GradientTransformation(init_fn, update_fn),
        optax.sgd(learning_rate, momentum=momentum or None),
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
