"""The per-column support of Q and the Q step that searches its thresholds there."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nlnoise import losses, optim, projection, sharding, support

LR, WD = 0.01, 0.1


@pytest.fixture
def small_support(monkeypatch):
    """The support on from any size, with few slots, so that small Q exercise it."""
    def use(slots: int) -> None:
        monkeypatch.setattr(support, "SUPPORT_SLOTS", slots)
        monkeypatch.setattr(support, "SUPPORT_MIN_ROWS", 0)
    return use


def _values(q, u):
    return q + (-LR) * (u + WD * q)


def _batch(rng, k: int, b: int, flips: int = 3):
    """Predictions with the true class boosted, half the labels flipped nearby."""
    true = rng.integers(0, k, b)
    logits = rng.standard_normal((b, k)).astype(np.float32)
    logits[np.arange(b), true] += 4.0
    labels = np.where(rng.random(b) < 0.5, (true + rng.integers(1, flips + 1, b)) % k, true)
    return jnp.asarray(logits), jnp.asarray(labels, jnp.int32)


@jax.jit
def _grad(q, logits, labels):
    k = logits.shape[1]
    return jax.grad(lambda qq: jnp.mean(losses.noisy_cross_entropy(
        logits, sharding.unpad_q(qq)[:, :k], labels)))(q)


def _numpy_root(col: np.ndarray) -> float:
    """The simplex threshold of one column by sorting (float64)."""
    u = np.sort(col.astype(np.float64))[::-1]
    cand = (np.cumsum(u) - 1) / np.arange(1, u.size + 1)
    return float(cand[np.flatnonzero(u > cand)[-1]])


def _thresholds(q, g, sup, start, touched_rows):
    return jax.jit(support.thresholds, static_argnums=(2, 5))(q, g, _values, sup, start,
                                                               touched_rows)


def _sorted_chain():
    return optax.chain(optim.add_q_regularizer(WD), optax.scale_by_learning_rate(LR),
                       projection.project_columns_to_simplex("sort"))


def _trajectory(k: int, stored: int, steps: int, batch: int, seed: int = 0):
    """Q from the identity (zero padding columns) under the fused step and the sorted chain."""
    tx, ref = optim.q_optimizer(LR, weight_decay=WD, touched_rows=batch), _sorted_chain()
    q = jnp.asarray(np.pad(np.eye(k), ((0, 0), (0, stored - k))), jnp.float32)
    st, sr = tx.init(q), ref.init(q)
    step, step_ref = jax.jit(tx.update), jax.jit(ref.update)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(steps):
        g = _grad(q, *_batch(rng, k, batch))
        (u, st), (ur, sr) = step(g, st, q), step_ref(g, sr, q)
        new, want = np.asarray(q + u), np.asarray(q + ur)
        worst = max(worst, float(np.abs(new - want).max()))
        assert (new >= 0).all()
        np.testing.assert_allclose(new.sum(0, dtype=np.float64), 1.0, rtol=0, atol=1e-6)
        q = jnp.asarray(new)
    return q, st, worst


def test_fused_step_from_the_support_matches_the_sorted_chain(small_support):
    # Zero padding columns project to a uniform column: a positive floor, threshold < 0.
    small_support(64)
    q, st, worst = _trajectory(k=256, stored=264, steps=12, batch=16)
    assert worst <= 2e-6
    sup = optax.tree.get(st, "support")
    assert sup.rows.shape == (64, 264)
    # Every step used it: the first rebuilt it from the identity, then searched there.
    assert int(sup.fast) == 12 and bool(sup.valid)
    # The lists hold every entry off each column's floor, and the witness is on the floor.
    qn, rows = np.asarray(q), np.asarray(sup.rows)
    floor = qn[np.asarray(sup.witness), np.arange(qn.shape[1])]
    for j in range(qn.shape[1]):
        off = set(np.flatnonzero(qn[:, j] != floor[j]))
        assert off <= set(rows[:, j][rows[:, j] < qn.shape[0]]), j
    assert floor[-1] > 0 and floor[0] == 0


def test_too_few_slots_falls_back_to_the_search_and_stays_exact(small_support):
    small_support(2)
    _, st, worst = _trajectory(k=128, stored=128, steps=6, batch=16)
    assert worst <= 2e-6
    sup = optax.tree.get(st, "support")
    assert not bool(sup.valid) and int(sup.fast) < 6


def test_more_touched_rows_than_the_cap_fall_back(small_support):
    small_support(32)
    k = 128
    q = jnp.eye(k, dtype=jnp.float32)
    sup = support.rebuild(q, support.init(q, 32))
    assert bool(sup.valid)
    g = _grad(q, *_batch(np.random.default_rng(1), k, 64))
    n_rows = int(np.any(np.asarray(g) != 0, axis=1).sum())
    start = jnp.full((k,), -jnp.inf)
    _, ok, _ = _thresholds(q, g, sup, start, n_rows - 1)
    assert not bool(ok)
    th, ok, _ = _thresholds(q, g, sup, start, n_rows)
    assert bool(ok)
    np.testing.assert_allclose(np.asarray(th.tau),
                               np.asarray(projection.simplex_thresholds(_values(q, g)).tau),
                               rtol=0, atol=1e-7)


def test_rebuild_describes_a_floor_plus_the_diagonal_and_nothing_else():
    k = 16
    q = np.eye(k, 18, dtype=np.float32)   # two padding columns, all zero
    q[:, 3] = 1 / k                       # uniform: all floor, nothing tracked
    q[:, 5] = 0.5 / (k - 1)
    q[5, 5] = 0.5                         # a raised floor under the diagonal
    sup = support.rebuild(jnp.asarray(q), support.init(jnp.asarray(q), 4))
    assert bool(sup.valid)
    rows = np.asarray(sup.rows)
    assert rows[0, 0] == 0 and rows[0, 5] == 5 and (rows[1:] == k).all()
    assert rows[0, 3] == k and (rows[0, 16:] == k).all()
    witness = np.asarray(sup.witness)
    floor = q[witness, np.arange(18)]
    np.testing.assert_array_equal(floor, q.min(axis=0))
    q[7, 0] = 0.1                         # an entry off the floor that is not the diagonal
    assert not bool(support.rebuild(jnp.asarray(q), support.init(jnp.asarray(q), 4)).valid)


def test_thresholds_equal_the_full_search_with_a_positive_floor():
    # A column whose zeros were lifted (floor > 0) and whose step has a threshold below zero.
    k, slots = 64, 8
    q = np.full((k, k), 0.0, np.float32)
    q[np.arange(k), np.arange(k)] = 0.5
    q += 0.5 / k
    q = jnp.asarray(q / q.sum(0))
    sup = support.rebuild(q, support.init(q, slots))
    g = jnp.zeros((k, k)).at[7].set(-1e-3)
    th, ok, nxt = _thresholds(q, g, sup, jnp.zeros((k,)), 4)
    want = projection.simplex_thresholds(_values(q, g))
    assert bool(ok)
    assert float(jnp.max(th.tau)) < 0
    np.testing.assert_allclose(np.asarray(th.tau), np.asarray(want.tau), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(th.n), np.asarray(want.n))
    # Row 7 now differs from the floor in every column: it is tracked everywhere.
    assert (np.asarray(nxt.rows) == 7).any(axis=0).all()


def test_touched_rows_is_validated():
    with pytest.raises(ValueError, match="touched_rows"):
        optim.q_optimizer(0.1, touched_rows=0)


def test_support_on_q_sharded_by_columns_matches_one_device(small_support):
    small_support(32)
    k = 256
    rng = np.random.default_rng(2)
    tx = optim.q_optimizer(LR, weight_decay=WD, touched_rows=16)
    q = jnp.eye(k, dtype=jnp.float32)
    state = tx.init(q)
    mesh = sharding.make_mesh(2, 4)
    state_sh = sharding.state_shardings(mesh, {"q": state})["q"]
    q_sh = sharding.state_shardings(mesh, {"q": q})["q"]
    assert optax.tree.get(state_sh, "support").rows.spec == sharding.P(None, "model")

    def update(g, s, q):
        u, s = tx.update(g, s, q)
        return q + u, s

    ones = jax.jit(update)
    fn = jax.jit(update, in_shardings=(q_sh, state_sh, q_sh), out_shardings=(q_sh, state_sh))
    want = (q, state)
    got = (jax.device_put(q, q_sh), jax.device_put(state, state_sh))
    for _ in range(4):
        g = _grad(want[0], *_batch(rng, k, 16))
        want = ones(g, want[1], want[0])
        got = fn(jax.device_put(g, q_sh), got[1], got[0])
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=0, atol=1e-6)
    assert int(optax.tree.get(got[1], "support").fast) == 4
    # The support, its rebuild included, reads Q where it lies: no collective moves Q or a
    # per-column array (the touched rows' [K] flags may be gathered).
    hlo = fn.lower(q, state, q).compile().as_text()
    moves_q = [line for line in hlo.splitlines()
               if any(op in line for op in ("all-gather(", "all-to-all(", "collective-permute("))
               and f"{k}," in line.split("=")[1].split("(")[0]]
    assert not moves_q, moves_q[:3]


@pytest.mark.parametrize("few_steps", [0, 2, support.MAX_ITER])
def test_small_root_with_a_weighted_floor_matches_a_full_column(few_steps, monkeypatch):
    # Sorting the columns still searching after few_steps (0: all) or stepping to the end.
    monkeypatch.setattr(support, "FEW_STEPS", few_steps)
    rng = np.random.default_rng(4)
    c, n = 40, 12
    v = rng.random((c, n)).astype(np.float32) * 0.3
    w = rng.random((c, n)) < 0.7
    vf = np.where(np.arange(c) % 2, 0.0, 0.01).astype(np.float32)
    nf = rng.integers(0, 30, c).astype(np.int32)
    tau, n_above, _, _, ok = support._root(jnp.asarray(v), jnp.asarray(w), jnp.asarray(vf),
                                           jnp.asarray(nf), jnp.zeros((c,), jnp.float32))
    assert bool(ok)
    for j in range(c):
        col = np.concatenate([v[j][w[j]], np.full(nf[j], vf[j])])
        want = _numpy_root(col)
        assert float(tau[j]) == pytest.approx(want, abs=2e-7), j
        assert int(n_above[j]) == int((col > float(tau[j])).sum())
