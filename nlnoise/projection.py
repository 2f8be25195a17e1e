"""Euclidean projection of Q's columns onto the probability simplex.

Q is ``[K_noisy, K_true]`` with ``q[j, i] = p(noisy=j | true=i)``: every column must be
non-negative and sum to 1. The projection of a column ``v`` is ``max(v - tau, 0)`` with ``tau``
the root of ``f(tau) = sum_j max(v_j - tau, 0) = 1``. Two exact ways to find it:

* ``"sort"``: optax's ``projection_simplex`` vmapped over columns, the reference. It sorts each
  column: O(K^2 log K) for Q, minutes per call at K = 21841.
* ``"newton"``: Newton/Michelot steps on ``f``, which is convex, piecewise linear and
  decreasing. From any ``t``, the step ``(sum_{v > t} v - 1) / |{v > t}|`` lands at or below the
  root (``f`` lies above its tangent), and from a point below the root the steps rise
  monotonically and stop exactly once the support no longer changes. No sort; each step reads
  Q once and needs no communication between columns, so a Q sharded by columns projects locally.

Passes over Q are the cost at large K, and XLA:CPU writes the operand of every reduction out to
memory before reducing it: ``jnp.sum(jnp.where(v > t, v, 0), axis=0)`` reads Q, writes a K x K
temporary and reads it back. :func:`column_stats` therefore scans Q in blocks of rows small
enough to stay in cache and computes every statistic of a step from one read.
:func:`simplex_thresholds` takes a starting threshold per column (the previous step's, kept in
the optimizer state by :func:`nlnoise.optim.q_optimizer`), checks in its first pass whether the
Newton step from there already lands on the root, and falls back to Newton steps from the best
lower bound when it does not.

The values whose columns are projected may also be given as an elementwise map of several
``[K, C]`` operands (``values=fn`` with ``v`` a tuple, e.g. Q and its gradient for the
pre-projection values of a step): each read then forms them block by block, and the projection
forms them again in its single output pass, so no ``[K, C]`` temporary is written (the rare
rescaling of :func:`apply_thresholds` aside). At K = 21841 such a temporary is a fresh 1.9 GB
buffer per step, and on CPU its page faults alone cost several passes over Q.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import projections

# Column length (``K_noisy``) from which ``method="auto"`` uses the sort-free projection. Timed
# with ``bench/projection_methods.py`` (see docs/performance.md, item 6).
NEWTON_MIN_K = 32

# Cap on the Newton steps after the first pass. In exact arithmetic they stop after at most K;
# on every Q tried they stopped after fewer than 10.
NEWTON_MAX_ITER = 64

PROJECTION_METHODS = ("auto", "sort", "newton")

# Rows of Q that :func:`column_stats` reads per loop iteration on CPU: their statistics are one
# elementwise loop over ``ROWS_PER_BLOCK`` rows (a tree of adds, mins and maxes), which XLA:CPU
# vectorises along the columns. Fewer rows per iteration pay the loop's fixed cost more often;
# many more make the fused loop spill.
ROWS_PER_BLOCK = 16

# The error of an optax transformation called without ``params``.
NEEDS_PARAMS = ("this transformation needs the current params: call update(updates, state, "
                "params).")


def check_method(method: str) -> None:
    """Raises a one-line ``ValueError`` unless ``method`` is one of ``PROJECTION_METHODS``."""
    if method not in PROJECTION_METHODS:
        raise ValueError(f"method: must be one of {PROJECTION_METHODS}, got {method!r}.")


def resolve_method(method: str, k_noisy: int) -> str:
    """``"sort"`` or ``"newton"``: ``"auto"`` takes Newton from ``NEWTON_MIN_K`` rows on."""
    check_method(method)
    if method == "auto":
        return "newton" if k_noisy >= NEWTON_MIN_K else "sort"
    return method


class ColumnStats(NamedTuple):
    """Per-column statistics of ``v`` ``[K, C]`` against thresholds ``t`` ``[C]``.

    ``n``: ``|{v > t}|`` (int32); ``s``: ``sum_{v > t} v`` (compensated across row blocks);
    ``lo``: the smallest ``v > t`` (``+inf`` if none). With ``first=True`` also ``hi``: the
    largest ``v <= t`` (``-inf`` if none), ``col_max`` and ``col_sum`` of the whole column;
    otherwise those three are None.
    """

    n: jax.Array
    s: jax.Array
    lo: jax.Array
    hi: jax.Array | None = None
    col_max: jax.Array | None = None
    col_sum: jax.Array | None = None


def _kahan(total: jax.Array, comp: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    # Compensated addition: keeps sums over thousands of row blocks to a few ulps.
    y = x - comp
    t = total + y
    return t, (t - total) - y


def _tree(xs: list[jax.Array], op) -> jax.Array:
    # Pairwise, so that a block's sum is as accurate as a reduction's.
    while len(xs) > 1:
        xs = [op(xs[i], xs[i + 1]) if i + 1 < len(xs) else xs[i] for i in range(0, len(xs), 2)]
    return xs[0]


def _row_stats(rows: list[jax.Array], t: jax.Array, first: bool) -> list[jax.Array]:
    inf = jnp.asarray(jnp.inf, rows[0].dtype)
    above = [r > t for r in rows]
    out = [_tree([a.astype(jnp.int32) for a in above], jnp.add),
           _tree([jnp.where(a, r, 0) for a, r in zip(above, rows, strict=True)], jnp.add),
           _tree([jnp.where(a, r, inf) for a, r in zip(above, rows, strict=True)], jnp.minimum)]
    if first:
        out += [_tree([jnp.where(a, -inf, r) for a, r in zip(above, rows, strict=True)],
                      jnp.maximum),
                _tree(list(rows), jnp.maximum), _tree(list(rows), jnp.add)]
    return out


# The columns a search reads: one ``[K, C]`` array, or ``(operands, fn)`` with the values
# ``fn(*operands)`` formed where they are read.
Operands = tuple[jax.Array, ...]
ValuesFn = Callable[..., jax.Array]


def _as_operands(v: jax.Array | Operands, values: ValuesFn | None
                 ) -> tuple[Operands, ValuesFn]:
    if values is None:
        if isinstance(v, tuple | list):
            raise ValueError("v: a tuple of operands needs values=, the elementwise map that "
                             "forms the columns from them.")
        return (v,), lambda x: x
    ops = tuple(v) if isinstance(v, tuple | list) else (v,)
    if len({o.shape for o in ops}) != 1 or len(ops[0].shape) != 2:
        raise ValueError(f"v: the operands of values= must be 2-D arrays of one shape, got "
                         f"shapes {[o.shape for o in ops]}.")
    return ops, values


def _blocked_stats(ops: Operands, fn: ValuesFn, t: jax.Array, first: bool
                   ) -> list[jax.Array]:
    k = ops[0].shape[0]
    dt = jax.eval_shape(fn, *ops).dtype
    inf = jnp.asarray(jnp.inf, dt)

    def combine(acc, part):
        out = [acc[0] + part[0], *_kahan(acc[1], acc[2], part[1]), jnp.minimum(acc[3], part[2])]
        if first:
            out += [jnp.maximum(acc[4], part[3]), jnp.maximum(acc[5], part[4]),
                    *_kahan(acc[6], acc[7], part[5])]
        return out

    def block(x):
        return _row_stats([x[i] for i in range(x.shape[0])], t, first)

    # Built from a row of ``v`` so that, inside ``shard_map``, the carry varies over the same
    # mesh axes as the loop's output.
    zeros = jnp.zeros_like(ops[0][0], dtype=dt)
    acc = [zeros.astype(jnp.int32), zeros, zeros, zeros + inf]
    if first:
        acc += [zeros - inf, zeros - inf, zeros, zeros]
    r = min(ROWS_PER_BLOCK, k)
    full = k // r
    acc = jax.lax.fori_loop(
        0, full,
        lambda i, a: combine(a, block(fn(*(jax.lax.dynamic_slice_in_dim(o, i * r, r, axis=0)
                                           for o in ops)))), acc)
    if k % r:
        acc = combine(acc, block(fn(*(o[full * r:] for o in ops))))
    # Drop the compensation terms.
    return [acc[0], acc[1], acc[3], acc[4], acc[5], acc[6]] if first else [acc[0], acc[1], acc[3]]


def column_stats(v: jax.Array | Operands, t: jax.Array, *, first: bool = False,
                 blocked: bool | None = None, values: ValuesFn | None = None) -> ColumnStats:
    """:class:`ColumnStats` of ``v`` ``[K, C]`` at thresholds ``t`` ``[C]``, reading ``v`` once.

    ``blocked`` (default: on the CPU backend) scans the rows in blocks of ``ROWS_PER_BLOCK``
    whose statistics are one elementwise loop: XLA:CPU otherwise writes the operand of each
    reduction over rows to memory and reads it back. Other backends fuse the plain reductions
    into one read of ``v``. ``values``: an elementwise map; ``v`` is then a tuple of ``[K, C]``
    operands and the statistics are those of ``values(*v)``, formed as they are read.
    """
    ops, fn = _as_operands(v, values)
    if blocked is None:
        blocked = jax.default_backend() == "cpu"
    if blocked:
        return ColumnStats(*_blocked_stats(ops, fn, t, first))
    v = fn(*ops)
    inf = jnp.asarray(jnp.inf, v.dtype)
    above = v > t
    out = [jnp.sum(above, axis=0, dtype=jnp.int32), jnp.sum(jnp.where(above, v, 0), axis=0),
           jnp.min(jnp.where(above, v, inf), axis=0)]
    if first:
        out += [jnp.max(jnp.where(above, -inf, v), axis=0), jnp.max(v, axis=0),
                jnp.sum(v, axis=0)]
    return ColumnStats(*out)


class Thresholds(NamedTuple):
    """Result of :func:`simplex_thresholds`, per column ``[C]``.

    ``tau``: the root of ``sum_j max(v_j - tau, 0) = 1``; ``n`` and ``s``: count and sum of the
    entries above it; ``col_max``: the column's maximum; ``passes``: reads of ``v`` it took
    (a scalar, for benchmarks and tests).
    """

    tau: jax.Array
    n: jax.Array
    s: jax.Array
    col_max: jax.Array
    passes: jax.Array


def simplex_thresholds(v: jax.Array | Operands, start: jax.Array | None = None, *,
                       max_iter: int = NEWTON_MAX_ITER, blocked: bool | None = None,
                       values: ValuesFn | None = None) -> Thresholds:
    """Exact simplex thresholds of every column of ``v`` ``[K, C]``, sort-free.

    ``start`` ``[C]`` is any guess (``-inf`` or None: none). The first pass evaluates ``f`` at
    ``start`` and takes the Newton step from there; when no entry of ``v`` lies between
    ``start`` and that step, ``f`` is linear in between and the step is the root. Otherwise
    each column continues with Newton steps from the best lower bound it has (the step itself,
    ``max - 1`` or ``(sum - 1) / K``) until its support stops changing: one read of ``v`` per
    step for all columns, in a ``lax.while_loop`` of at most ``max_iter`` steps. ``blocked`` and
    ``values`` (``v`` a tuple of operands, the columns ``values(*v)`` formed where they are
    read): see :func:`column_stats`.
    """
    ops, fn = _as_operands(v, values)
    k, c = ops[0].shape
    dt = jax.eval_shape(fn, *ops).dtype
    t0 = jnp.full((c,), -jnp.inf, dt) if start is None else jnp.asarray(start, dt)
    st = column_stats(ops, t0, first=True, blocked=blocked, values=fn)
    has = st.n > 0
    step = jnp.where(has, (st.s - 1) / jnp.where(has, st.n, 1).astype(dt), st.col_max - 1)
    exact = has & (st.hi <= step) & (step < st.lo)
    lower = jnp.maximum(step, jnp.maximum(st.col_max - 1, (st.col_sum - 1) / k))
    tau = jnp.where(exact, step, lower)

    def cond(carry):
        _, _, _, done, i = carry
        return jnp.logical_and(~jnp.all(done), i < max_iter)

    def body(carry):
        tau, n, s, done, i = carry
        it = column_stats(ops, tau, blocked=blocked, values=fn)
        new = jnp.maximum(tau, (it.s - 1) / jnp.maximum(it.n, 1).astype(dt))
        # Exact once no entry lies in (tau, new]; ``new <= tau`` is a float32 stall at the root.
        stop = (new < it.lo) | (new <= tau) | jnp.isnan(new)
        keep = lambda old, upd: jnp.where(done, old, upd)
        return (keep(tau, new), keep(n, it.n), keep(s, it.s), done | stop, i + 1)

    tau, n, s, _, iters = jax.lax.while_loop(
        cond, body, (tau, jnp.where(exact, st.n, 0), jnp.where(exact, st.s, 0), exact,
                     jnp.zeros((), jnp.int32)))
    return Thresholds(tau, n, s, st.col_max, iters + 1)


def _project_columns_sort(q: jax.Array) -> jax.Array:
    return jax.vmap(projections.projection_simplex, in_axes=1, out_axes=1)(q)


# ``apply_thresholds(rescale=None)`` skips the rescale when the mass above each threshold is at
# most this: the float32 rounding of tau then moves a column's sum by a few ulps only.
FAST_MASS = 8.0


def _mass_fix(ops: Operands, fn: ValuesFn, th: Thresholds) -> tuple[jax.Array, jax.Array]:
    # Per column: 1 / the mass left above tau (0 if none), 1 / the entries tied at the max.
    v = fn(*ops)
    total = jnp.sum(jnp.maximum(v - th.tau, 0), axis=0)
    inv = jnp.where(total > 0, 1 / jnp.where(total > 0, total, 1), 0)
    return inv, 1 / jnp.sum(v == th.col_max, axis=0).astype(v.dtype)


def apply_thresholds(v: jax.Array | Operands, th: Thresholds, *, rescale: bool | None = True,
                     values: ValuesFn | None = None) -> jax.Array:
    """The projection ``max(v - tau, 0)`` of every column of ``v`` ``[K, C]`` given its thresholds.

    ``rescale=True`` divides each column by its mass, which keeps it non-negative and puts the
    rounding of tau back on the simplex for any input; a column whose values are so large that
    ``max - 1 == max`` in its dtype has no mass left and gets its argmax (ties share it). That
    takes two more reads of ``v``. ``rescale=None`` takes them only when some column needs them
    (a mass above tau beyond ``FAST_MASS``, or none left), in a ``lax.cond`` whose output is
    per column, so the projection stays one elementwise pass that fuses with its consumers.
    ``values``: ``v`` is a tuple of operands and the columns are ``values(*v)``, formed in that
    pass (see :func:`column_stats`).
    """
    ops, fn = _as_operands(v, values)
    if rescale is None:
        fast = jnp.all((th.tau < th.col_max) & (jnp.abs(th.s) <= FAST_MASS))
        inv, inv_ties = jax.lax.cond(
            fast, lambda o, t: (jnp.ones_like(t.tau), jnp.ones_like(t.tau)),
            lambda o, t: _mass_fix(o, fn, t), ops, th)
    elif rescale:
        inv, inv_ties = _mass_fix(ops, fn, th)
    else:
        return jnp.maximum(fn(*ops) - th.tau, 0)
    v = fn(*ops)
    return jnp.where(inv > 0, jnp.maximum(v - th.tau, 0) * inv, (v == th.col_max) * inv_ties)


def project_columns(q: jax.Array, method: str = "auto") -> jax.Array:
    """Euclidean projection of every column of ``q`` (``[K_noisy, K_true]``) onto the simplex.

    ``method="sort"`` is optax's ``projection_simplex`` (the reference). ``"newton"`` finds each
    column's threshold with :func:`simplex_thresholds` and rescales each column's mass to 1
    (same result up to rounding; columns sum to 1 and are non-negative). ``"auto"`` takes
    ``"sort"`` below ``NEWTON_MIN_K`` rows and ``"newton"`` from there.
    """
    if q.ndim != 2:
        raise ValueError(f"q: column projection needs a 2-D matrix, got shape {q.shape}.")
    method = resolve_method(method, q.shape[0])
    if method == "sort":
        return _project_columns_sort(q)
    return apply_thresholds(q, simplex_thresholds(q))


def project_columns_to_simplex(method: str = "auto") -> optax.GradientTransformation:
    """Makes updates land Q on column-stochastic matrices: ``u <- proj(q + u) - q``.

    Place it **last** in a chain (after learning-rate scaling and decay): it needs ``params``
    and turns the final update into one after which every column of every 2-D leaf lies on the
    probability simplex. ``method`` is that of :func:`project_columns`. With ``"sort"``, zero
    updates on a point already on the simplex stay exactly zero. It keeps no state; the
    Q optimizer's own fused step (:func:`nlnoise.optim.q_optimizer`) warm-starts instead.
    """
    check_method(method)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(NEEDS_PARAMS)
        new_updates = jax.tree.map(lambda p, u: project_columns(p + u, method) - p, params,
                                   updates)
        return new_updates, state

    return optax.GradientTransformation(init_fn, update_fn)
