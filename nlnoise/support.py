"""Each column's support of Q, kept between steps, for a Q step that does not search all of Q.

The Q step (:func:`nlnoise.optim.decay_step_project`) projects every column of
``v = q - lr * (g + wd * q)`` onto the simplex: ``max(v - tau, 0)`` with ``tau`` the root of
``sum_i max(v_i - tau, 0) = 1``. Searching for ``tau`` over the whole ``[K, C]`` array costs
several reads of Q. But the loss's gradient is zero outside the rows of the batch's noisy
labels (at most a batch of rows are *touched*), and the learned Q is mostly one value per
column (zero, or the uniform level of an unused padding column) with a few entries that differ.
So every column ``j`` is kept as

* a **floor** value ``d_j``, shared bit for bit by all its entries outside the list below; it
  is read from Q at a *witness* row, one such entry;
* a list of at most ``slots`` **tracked** rows, those whose entries may differ from the floor.

An untouched floor entry takes the same step as every other one (same inputs, same arithmetic,
same bits), so the column's values are: its tracked entries, its touched rows, and ``n_j``
copies of the floor's step. The root of that small problem, weighted by ``n_j``, is the exact
root for the whole column, found in ``O((slots + touched) x C)`` work; the output pass then
writes Q once as before. The new lists keep the tracked and touched entries that do not land on
the floor (a clip to zero when the floor also clips, or an entry that equalled the floor and was
not touched), compacted per column.

When the support cannot answer (a column needs more than ``slots`` tracked rows, more rows are
touched than the batch, a threshold needs the projection's rescale), the step falls back to the
search over all of Q. The lists are rebuilt from Q (:func:`rebuild`, two reads) only where that
is cheap: a Q whose columns are a floor plus at most the diagonal, as the identity a run starts
from; the rebuild is tried when the projected Q may fit the slots (:func:`after_fallback`).
A Q of any other shape keeps the search.

Arrays are per column along their last axis (``[slots, C]`` and ``[C]``), so they shard with Q's
columns; ``C`` is Q's stored column count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nlnoise.projection import FAST_MASS, Thresholds, column_stats

# Tracked rows per column: each costs a gathered value per column and step. On the trajectory
# of bench/q_update.py (random predictions, K = 21841) the largest column holds 64 entries
# after 10 steps and outgrows 128 after 26 (docs/performance.md, 18.1).
SUPPORT_SLOTS = 128

# Default cap on the rows one step's gradient touches: the batch size, since the loss's
# gradient has one nonzero row per example's noisy label.
TOUCHED_ROWS = 128

# Rows of Q from which the fused Q step keeps the support: below it the small problem
# (``SUPPORT_SLOTS + touched`` values per column) is not much smaller than Q itself.
SUPPORT_MIN_ROWS = 2048

# Steps to wait after a rebuild whose support did not hold for one step (Q in a regime the
# support does not fit), so that the rebuild's cost is spread thin.
REBUILD_WAIT = 8

# Rows tried per column when a witness must move, and the cap on the small search's steps.
WITNESS_CANDIDATES = 8
MAX_ITER = 64

# Michelot steps for all columns before the columns still searching are solved by sorting
# their small problems, when there are at most STRAGGLERS of them.
FEW_STEPS = 2
STRAGGLERS = 1024


class Support(NamedTuple):
    """Per-leaf support state (see the module docstring).

    ``rows`` ``[slots, C]`` int32: tracked rows, ``K`` (Q's row count) in an empty slot;
    ``witness`` ``[C]`` int32: an untracked row of each column; ``valid``: the lists describe
    Q; ``wait``: steps before the next rebuild may be tried; ``fast``: steps whose thresholds
    the support gave (for benchmarks and tests).
    """

    rows: jax.Array
    witness: jax.Array
    valid: jax.Array
    wait: jax.Array
    fast: jax.Array


def init(q: jax.Array, slots: int) -> Support:
    """An empty, invalid support for ``q`` ``[K, C]``: the first step rebuilds it from Q."""
    k, c = q.shape
    return Support(jnp.full((slots, c), k, jnp.int32), jnp.zeros((c,), jnp.int32),
                   jnp.zeros((), bool), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def rebuild(q: jax.Array, sup: Support) -> Support:
    """The support of ``q`` ``[K, C]`` when each column is a floor plus at most its diagonal.

    The floor is the column's minimum; the support is valid when no entry but the diagonal
    (row ``j`` of column ``j``) lies above it: the identity Q a run starts from, a uniform
    column, and any Q of that shape. Two blocked reads of Q, per column, so a Q sharded by
    columns is rebuilt where it lies. A Q of any other shape is not described (a general
    extraction is a ``top_k`` of Q's transpose, which costs more than the steps it saves and
    gathers Q's columns across devices); its steps take the full search.
    """
    k, c = q.shape
    slots = sup.rows.shape[0]
    floor = column_stats(q, jnp.full((c,), -jnp.inf, q.dtype), first=True).lo
    above = column_stats(q, floor).n
    cols = jnp.arange(c, dtype=jnp.int32)
    has_diag = cols < k
    diag = jax.vmap(lambda col, r: col[r], in_axes=(1, 0))(q, jnp.minimum(cols, k - 1))
    tracked = has_diag & (diag > floor)
    rows = jnp.full((slots, c), k, jnp.int32).at[0].set(jnp.where(tracked, cols, k))
    witness = jnp.where(has_diag, (cols + 1) % k, 0).astype(jnp.int32)
    valid = jnp.all(above <= tracked.astype(above.dtype)) & (k > 1)
    return Support(rows, witness, valid, sup.wait, sup.fast)


def _root(v: jax.Array, w: jax.Array, vf: jax.Array, nf: jax.Array, start: jax.Array
          ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Root of ``sum_{w} max(v - t, 0) + nf * max(vf - t, 0) = 1`` per row of ``v`` ``[C, n]``.

    Michelot's steps from a lower bound: the larger of ``max - 1`` and the Newton step from
    ``start`` (the last step's root). Each step lands at or below the root and they stop once
    the count above no longer changes. Returns ``(tau, n, s, col_max, converged)``.
    """
    dt = v.dtype
    nff = nf.astype(dt)
    has_floor = nf > 0
    col_max = jnp.maximum(jnp.max(jnp.where(w, v, -jnp.inf), axis=1),
                          jnp.where(has_floor, vf, -jnp.inf))

    def stats(t):
        a = w & (v > t[:, None])
        fa = has_floor & (vf > t)
        n = jnp.sum(a, axis=1, dtype=jnp.int32) + jnp.where(fa, nf, 0)
        s = jnp.sum(jnp.where(a, v, 0), axis=1) + jnp.where(fa, nff * vf, 0)
        return n, s

    # From any t the Newton step (S(t) - 1) / N(t) is a lower bound (f is convex); from the
    # last step's root it is usually the root itself or one step short of it.
    ns, ss = stats(start)
    t0 = jnp.maximum(col_max - 1, jnp.where(ns > 0, (ss - 1) / jnp.maximum(ns, 1).astype(dt),
                                            -jnp.inf))
    n0, s0 = stats(t0)

    def body(c):
        t, n, s, done, i = c
        new = (s - 1) / jnp.maximum(n, 1).astype(dt)
        n2, s2 = stats(new)
        stop = (n2 == n) | (new <= t)
        keep = lambda old, upd: jnp.where(done, old, upd)
        return keep(t, new), keep(n, n2), keep(s, s2), done | stop, i + 1

    def steps(limit):
        return lambda c: jax.lax.while_loop(lambda c: ~jnp.all(c[3]) & (c[4] < limit), body, c)

    # A few columns take many steps; after FEW_STEPS, sort those (their small problems) and
    # solve them exactly, unless there are too many.
    carry = steps(FEW_STEPS)((t0, n0, s0, jnp.zeros(t0.shape, bool), jnp.zeros((), jnp.int32)))
    few = min(STRAGGLERS, v.shape[0])

    def by_sorting(c):
        tau = _sorted_roots(v, w, vf, nff, c[0], ~c[3], few)
        n, s = stats(tau)
        return tau, n, s, jnp.ones_like(c[3]), c[4]

    tau, n, s, done, _ = jax.lax.cond(jnp.sum(~carry[3]) <= few, by_sorting, steps(MAX_ITER),
                                      carry)
    return tau, n, s, col_max, jnp.all(done)


def _sorted_roots(v: jax.Array, w: jax.Array, vf: jax.Array, nf: jax.Array, tau: jax.Array,
                  todo: jax.Array, size: int) -> jax.Array:
    """``tau`` with the rows ``todo`` (at most ``size``) replaced by their exact roots.

    Each such row's values and its floor (weight ``nf``) sorted in decreasing order: the root
    is ``(S_r - 1) / W_r`` at the last prefix ``r`` whose value exceeds it (all copies of a
    value pass or fail together).
    """
    c, dt = v.shape[0], v.dtype
    idx = jnp.nonzero(todo, size=size, fill_value=c)[0]
    at = jnp.minimum(idx, c - 1)
    u = jnp.concatenate([jnp.where(w[at], v[at], -jnp.inf), vf[at][:, None]], axis=1)
    wt = jnp.concatenate([w[at].astype(dt), nf[at][:, None]], axis=1)
    wt = jnp.where(u == -jnp.inf, 0, wt)
    neg, wt = jax.lax.sort((-u, wt), dimension=1, num_keys=1)
    u = -neg
    cw = jnp.cumsum(wt, axis=1)
    cand = (jnp.cumsum(jnp.where(wt > 0, wt * u, 0), axis=1) - 1) / jnp.maximum(cw, 1)
    ok = (wt > 0) & (u > cand)
    last = u.shape[1] - 1 - jnp.argmax(ok[:, ::-1], axis=1)
    roots = jnp.take_along_axis(cand, last[:, None], axis=1)[:, 0]
    return tau.at[idx].set(roots, mode="drop")


def thresholds(q: jax.Array, g: jax.Array, values: Callable[[jax.Array, jax.Array], jax.Array],
               sup: Support, start: jax.Array, touched_rows: int = TOUCHED_ROWS
               ) -> tuple[Thresholds, jax.Array, Support]:
    """Simplex thresholds of every column of ``values(q, g)`` from the support, and the next one.

    ``q``, ``g`` ``[K, C]``: Q and its update direction; ``values`` the elementwise map to the
    pre-projection values, with ``values(x, 0)`` the step of an entry whose gradient is zero;
    ``start`` ``[C]``: the last step's thresholds; ``touched_rows``: the most rows of ``g`` that
    may be nonzero for the support to answer (the batch size for the noisy loss's gradient).
    A row counts as touched where the sum of its squared entries is nonzero (one XLA dot, the
    cheapest read of ``g``): a row whose entries all lie below 1e-19 in magnitude counts as
    untouched, a change to Q far below float32's resolution of its column sums.
    Returns ``(th, ok, next)``: ``th`` is exact only where ``ok`` (a scalar) holds, and
    ``next`` describes ``max(values(q, g) - th.tau, 0)``, the projected Q. Reads Q only at the
    touched rows, the tracked entries and one witness per column.
    """
    k, c = q.shape
    slots = sup.rows.shape[0]
    r = min(touched_rows, k)

    touched = jnp.einsum("ij,ij->i", g, g) != 0
    n_touched = jnp.sum(touched, dtype=jnp.int32)
    trows = jnp.nonzero(touched, size=r, fill_value=k)[0].astype(jnp.int32)
    treal = trows < k
    tr = jnp.minimum(trows, k - 1)
    q_t, g_t = q[tr].T, g[tr].T                                   # [C, r]

    rows = sup.rows.T                                             # [C, slots]
    lr = jnp.minimum(rows, k - 1)
    q_l = jax.vmap(lambda col, r: col[r], in_axes=(1, 0))(q, lr)  # [C, slots]
    lreal = (rows < k) & ~touched[lr]
    floor = jax.vmap(lambda col, r: col[r], in_axes=(1, 0))(q, sup.witness)  # [C]

    v = jnp.concatenate([values(q_l, jnp.zeros_like(q_l)), values(q_t, g_t)], axis=1)
    w = jnp.concatenate([lreal, jnp.broadcast_to(treal, (c, r))], axis=1)
    vf = values(floor, jnp.zeros_like(floor))
    nf = k - jnp.sum(lreal, axis=1, dtype=jnp.int32) - n_touched
    tau, n, s, col_max, converged = _root(v, w, vf, nf, start.astype(v.dtype))

    # The next support: entries that stay off the floor, compacted per column.
    x = jnp.maximum(v - tau[:, None], 0)
    xf = jnp.maximum(vf - tau, 0)
    q_old = jnp.concatenate([q_l, q_t], axis=1)
    g_old = jnp.concatenate([jnp.zeros_like(q_l), g_t], axis=1)
    on_floor = ((x == 0) & (xf == 0)[:, None]) | ((q_old == floor[:, None]) & (g_old == 0))
    keep = w & ~on_floor
    ids = jnp.concatenate([rows, jnp.broadcast_to(trows, (c, r))], axis=1)
    # A prefix count as a matmul with a triangle of ones: exact in float32 for these sizes, and
    # faster on CPU than XLA's cumulative sum.
    n_all = keep.shape[1]
    pos = (keep.astype(jnp.float32) @ jnp.triu(jnp.ones((n_all, n_all), jnp.float32))
           ).astype(jnp.int32) - 1
    slot = jnp.where(keep & (pos < slots), pos, slots)
    new_rows = jax.vmap(lambda sl, i: jnp.full((slots + 1,), k, jnp.int32).at[sl].set(
        i, mode="promise_in_bounds"))(slot, ids)[:, :slots]
    fits = jnp.all(jnp.sum(keep, axis=1) <= slots)

    witness, has_witness = _move_witness(new_rows, sup.witness, k)
    fast_apply = jnp.all((tau < col_max) & (jnp.abs(s) <= FAST_MASS))
    ok = (sup.valid & (n_touched <= r) & converged & fits & has_witness & fast_apply
          & jnp.all(nf >= 0))
    th = Thresholds(tau, n, s, col_max, jnp.zeros((), jnp.int32))
    nxt = Support(new_rows.T, witness, ok, jnp.zeros((), jnp.int32), sup.fast + 1)
    return th, ok, nxt


def _move_witness(rows: jax.Array, witness: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Each column's witness, moved to an untracked row where it became tracked.

    ``rows`` ``[C, slots]``. Returns ``(witness [C], found)``.
    """
    tracked = jnp.any(rows == witness[:, None], axis=1)

    def move(rows, witness):
        cand = (jnp.arange(WITNESS_CANDIDATES, dtype=jnp.int32) * max(k // WITNESS_CANDIDATES, 1)
                + 1) % k
        free = ~jnp.any(rows[:, :, None] == cand[None, None, :], axis=1)  # [C, candidates]
        first = jnp.argmax(free, axis=1)
        found = jnp.take_along_axis(free, first[:, None], 1)[:, 0]
        new = jnp.where(tracked, cand[first], witness)
        return new, jnp.all(found | ~tracked)

    return jax.lax.cond(jnp.any(tracked), move,
                        lambda rows, witness: (witness, jnp.ones((), bool)), rows, witness)


def after_fallback(sup: Support, rebuilt: jax.Array, th: Thresholds) -> Support:
    """The support after a step the full search took: invalid, and when to rebuild it.

    The next step rebuilds it from Q when this step's projected Q may fit the slots (``th.n``,
    the entries left above each threshold, is each column's count off a zero floor; a column
    whose threshold is below zero has a raised floor, and may fit) and this step's support
    did not itself come from a rebuild; after a rebuild that did not
    hold, the next try waits ``REBUILD_WAIT`` steps. A Q that does not fit is never rebuilt,
    so a run whose Q outgrows the slots pays only the search.
    """
    slots = sup.rows.shape[0]
    # Where the threshold is below zero the floor rose and ``n`` counts it: try the rebuild.
    fits = jnp.all((th.n <= slots) | (th.tau <= 0))
    wait = jnp.where(rebuilt, REBUILD_WAIT,
                     jnp.where(fits, jnp.maximum(sup.wait - 1, 0), jnp.maximum(sup.wait, 1)))
    return sup._replace(valid=jnp.zeros((), bool), wait=wait.astype(jnp.int32))
