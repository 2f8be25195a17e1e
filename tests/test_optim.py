"""The projected-Q optax chain and the whole-state optimizer."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nlnoise import losses, noise, optim


def _brute_force_simplex(v: np.ndarray) -> np.ndarray:
    """Projection onto the simplex by trying every support set (small n only)."""
    n, best, best_d = v.size, None, np.inf
    for r in range(1, n + 1):
        for s in itertools.combinations(range(n), r):
            s = list(s)
            x = np.zeros(n)
            x[s] = v[s] - (v[s].sum() - 1) / r
            if (x >= -1e-12).all():
                d = np.sum((x - v) ** 2)
                if d < best_d:
                    best, best_d = np.maximum(x, 0), d
    return best


@pytest.mark.parametrize("seed", range(5))
def test_projection_on_simplex_idempotent_and_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(5, 4)) * 2
    p = np.asarray(optim.project_columns(jnp.asarray(q, jnp.float32)))
    assert (p >= 0).all()
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-6)
    np.testing.assert_allclose(optim.project_columns(jnp.asarray(p)), p, atol=1e-6)
    for i in range(4):
        np.testing.assert_allclose(p[:, i], _brute_force_simplex(q[:, i]), atol=1e-5)


def test_projection_transform_lands_on_simplex_and_needs_params():
    tx = optax.chain(optax.sgd(0.5), optim.project_columns_to_simplex())
    q = jnp.asarray(noise.symmetric(4, 0.2), jnp.float32)
    state = tx.init(q)
    g = jnp.asarray(np.random.default_rng(0).normal(size=(4, 4)), jnp.float32)
    u, _ = tx.update(g, state, q)
    new = optax.apply_updates(q, u)
    assert (np.asarray(new) >= 0).all()
    np.testing.assert_allclose(new.sum(0), 1.0, atol=1e-6)
    with pytest.raises(ValueError):
        tx.update(g, state)


def _hard_columns(k: int, rng: np.random.Generator) -> np.ndarray:
    """Columns that stress a threshold search: on the simplex, huge, negative, ties, spikes."""
    e = np.eye(k)
    cols = [
        rng.normal(size=k),                      # generic
        rng.normal(size=k) * 1e3,                # huge spread
        rng.normal(size=k) + 1e6,                # huge offset
        -np.abs(rng.normal(size=k)) - 50.0,      # all negative
        rng.dirichlet(np.ones(k)),               # already on the simplex
        e[0],                                    # a vertex
        np.full(k, 1.0 / k),                     # the centre
        np.full(k, 3.0),                         # all tied, off the simplex
        np.round(rng.normal(size=k), 1),         # many ties
        np.r_[np.full(k // 2, 0.7), np.full(k - k // 2, -0.2)],  # two tied blocks
        np.zeros(k),
    ]
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("k", [1, 2, 3, 7, 50, 257])
def test_newton_projection_matches_optax_in_float64(k):
    rng = np.random.default_rng(k)
    q = np.concatenate([_hard_columns(k, rng), rng.normal(size=(k, 20)) * 3], axis=1)
    with jax.enable_x64(True):
        qq = jnp.asarray(q, jnp.float64)
        ref = jax.jit(lambda x: optim.project_columns(x, "sort"))(qq)
        got = jax.jit(lambda x: optim.project_columns(x, "newton"))(qq)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=0, atol=1e-9)
        assert (np.asarray(got) >= 0).all()
        np.testing.assert_allclose(np.asarray(got).sum(0), 1.0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 10, 100, 1000])
def test_newton_projection_float32_is_feasible_and_close(k):
    rng = np.random.default_rng(0)
    near = np.eye(k, 32) * 0.5 + 0.5 / k + 1e-3 * rng.normal(size=(k, 32))
    q = jnp.asarray(np.concatenate([_hard_columns(k, rng), near], axis=1), jnp.float32)
    got = np.asarray(optim.project_columns(q, "newton"))
    assert got.dtype == np.float32
    assert (got >= 0).all()
    # float64 accumulation: numpy sums a float32 column sequentially (1e-5 off at K=1000).
    np.testing.assert_allclose(got.sum(0, dtype=np.float64), 1.0, rtol=0, atol=1e-6)
    # Against optax where float32 can resolve the threshold (not the 1e6-offset column).
    ok = np.abs(np.asarray(q)).max(0) < 1e4
    ref = np.asarray(optim.project_columns(q, "sort"))
    np.testing.assert_allclose(got[:, ok], ref[:, ok], rtol=0, atol=1e-5)


def test_newton_projection_huge_float32_column_falls_back_to_argmax():
    # max - 1 == max in float32 at 1e9: the threshold cannot be resolved; the mass goes to max.
    q = jnp.asarray([[1e9, 0.0], [2e9, 0.5], [2e9, 0.2]], jnp.float32)
    got = np.asarray(optim.project_columns(q, "newton"))
    np.testing.assert_allclose(got[:, 0], [0.0, 0.5, 0.5])
    np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-6)


def test_project_columns_method_choice():
    q = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)
    small = np.asarray(optim.project_columns(q))
    assert np.array_equal(small, np.asarray(optim.project_columns(q, "sort")))
    big = jnp.asarray(np.random.default_rng(1).normal(size=(optim.NEWTON_MIN_K, 4)), jnp.float32)
    assert np.array_equal(np.asarray(optim.project_columns(big)),
                          np.asarray(optim.project_columns(big, "newton")))
    with pytest.raises(ValueError, match="method"):
        optim.project_columns(q, "bogus")
    with pytest.raises(ValueError, match="method"):
        optim.project_columns_to_simplex("bogus")


def _run_q_optimizer(tx, k: int, steps: int = 6) -> np.ndarray:
    rng = np.random.default_rng(3)
    q = jnp.asarray(noise.symmetric(k, 0.3), jnp.float32)
    s = tx.init(q)
    for _ in range(steps):
        g = _q_grad(q, jnp.asarray(rng.normal(size=(32, k)), jnp.float32),
                    jnp.asarray(rng.integers(0, k, 32)))
        u, s = tx.update(g, s, q)
        q = optax.apply_updates(q, u)
    return np.asarray(q)


def test_q_optimizer_small_k_unchanged_and_methods_agree():
    # Small K: "auto" is still optax's sort, bit for bit.
    auto = _run_q_optimizer(optim.q_optimizer(0.5, weight_decay=0.1, momentum=0.9), 10)
    ref = _run_q_optimizer(optax.chain(
        optax.trace(decay=0.9), optim.add_q_regularizer(0.1), optax.scale_by_learning_rate(0.5),
        optim.project_columns_to_simplex("sort")), 10)
    assert np.array_equal(auto, ref)
    # Newton in the same chain follows the same trajectory up to float32 rounding.
    newton = _run_q_optimizer(
        optim.q_optimizer(0.5, weight_decay=0.1, momentum=0.9, projection="newton"), 10)
    np.testing.assert_allclose(newton, ref, rtol=0, atol=1e-5)
    assert (newton >= 0).all()
    np.testing.assert_allclose(newton.sum(0), 1.0, atol=1e-6)


def _q_grad(q, logits, labels):
    return jax.grad(lambda qq: losses.noisy_cross_entropy(logits, qq, labels).mean())(q)


def test_freeze_is_bit_exact_then_q_moves():
    k, freeze = 5, 7
    tx = optim.q_optimizer(0.1, weight_decay=0.1, freeze_steps=freeze, momentum=0.9)
    q = jnp.eye(k, dtype=jnp.float32)
    state = tx.init(q)
    rng = np.random.default_rng(0)
    step = jax.jit(lambda q, s, g: (lambda u_s: (optax.apply_updates(q, u_s[0]), u_s[1]))(
        tx.update(g, s, q)))
    for t in range(freeze + 3):
        g = _q_grad(q, jnp.asarray(rng.normal(size=(16, k)), jnp.float32),
                    jnp.asarray(rng.integers(0, k, 16)))
        q, state = step(q, state, g)
        if t < freeze:
            assert np.array_equal(np.asarray(q), np.eye(k, dtype=np.float32)), t
    assert not np.array_equal(np.asarray(q), np.eye(k, dtype=np.float32))
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-6)
    assert (np.asarray(q) >= 0).all()


def test_decay_lowers_trace_on_a_toy_problem():
    # Logits that already fit the noisy labels: without decay the identity is a fixed point
    # (Q gains nothing from diffusing); with decay tr(Q) falls.
    k = 4
    rng = np.random.default_rng(1)
    labels = jnp.asarray(rng.integers(0, k, 64))
    logits = 4.0 * jax.nn.one_hot(labels, k)
    traces = {}
    for wd in (0.0, 0.5, 2.0):
        tx = optim.q_optimizer(0.5, weight_decay=wd)
        q = jnp.eye(k)
        s = tx.init(q)
        for _ in range(50):
            u, s = tx.update(_q_grad(q, logits, labels), s, q)
            q = optax.apply_updates(q, u)
        traces[wd] = float(jnp.trace(q))
    assert traces[0.0] == pytest.approx(k, abs=1e-3)
    assert traces[2.0] < traces[0.5] < traces[0.0] - 0.05


def test_trace_regularizer_also_diffuses():
    tx = optim.q_optimizer(0.1, weight_decay=0.2, regularizer="trace")
    q = jnp.eye(3)
    s = tx.init(q)
    for _ in range(5):
        u, s = tx.update(jnp.zeros_like(q), s, q)
        q = optax.apply_updates(q, u)
    assert float(jnp.trace(q)) < 3 - 0.1
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="q.regularizer"):
        optim.q_optimizer(0.1, regularizer="nuclear")


def test_partition_projects_only_q_and_keeps_fixed_q_fixed():
    params = {"net": {"dense": {"kernel": jnp.full((3, 3), 5.0), "bias": jnp.full((3,), 5.0)}},
              "q": jnp.eye(3)}
    grads = jax.tree.map(lambda x: jnp.full_like(x, -1.0), params)
    net_tx = optim.net_optimizer(0.1, momentum=0.0, weight_decay=0.0)
    tx = optim.train_state_optimizer(net_tx, optim.q_optimizer(0.1, weight_decay=0.0))
    u, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, u)
    # The network's kernel just took an SGD step: far off any simplex, untouched by projection.
    np.testing.assert_allclose(new["net"]["dense"]["kernel"], 5.1)
    np.testing.assert_allclose(new["net"]["dense"]["bias"], 5.1)
    np.testing.assert_allclose(new["q"].sum(0), 1.0, atol=1e-6)
    fixed = optim.train_state_optimizer(net_tx, None)
    u, _ = fixed.update(grads, fixed.init(params), params)
    assert np.array_equal(np.asarray(optax.apply_updates(params, u)["q"]), np.eye(3))


def test_net_optimizer_per_layer_weight_decay_skips_biases():
    params = {"conv1": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))},
              "fc10": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
    tx = optim.net_optimizer(1.0, momentum=0.0, weight_decay=0.004,
                             layer_weight_decay={"fc10": 1.0})
    u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    np.testing.assert_allclose(u["conv1"]["kernel"], -0.004)
    np.testing.assert_allclose(u["fc10"]["kernel"], -1.0)
    assert float(jnp.abs(u["conv1"]["bias"]).max()) == 0.0


def test_schedule_from_epochs():
    sched = optim.schedule_from_epochs(0.1, 10, (2, 3))
    assert float(sched(19)) == pytest.approx(0.1)
    assert float(sched(20)) == pytest.approx(0.01)
    assert float(sched(30)) == pytest.approx(0.001)


def test_q_grad_clip_bounds_a_huge_gradient_and_leaves_small_ones_alone():
    k = 5
    q = jnp.eye(k)
    huge = jnp.zeros((k, k)).at[3, 0].set(-1e26)  # p_i / (Qp)_j at the loss's cap
    small = 0.01 * jnp.ones((k, k))
    for clip in (0.0, 10.0):
        tx = optim.q_optimizer(0.01, weight_decay=0.0, grad_clip=clip)
        u, _ = tx.update(huge, tx.init(q), q)
        new = q + u
        np.testing.assert_allclose(new.sum(0), 1.0, atol=1e-5)  # still on the simplex
        if clip:  # one step moves column 0 by at most lr * clip
            assert float(new[3, 0]) <= 0.01 * clip + 1e-6
        else:  # unclipped: column 0 jumps onto the vertex of row 3
            assert float(new[3, 0]) == pytest.approx(1.0)
    plain = optim.q_optimizer(0.01, weight_decay=0.1)
    clipped = optim.q_optimizer(0.01, weight_decay=0.1, grad_clip=10.0)
    np.testing.assert_array_equal(plain.update(small, plain.init(q), q)[0],
                                  clipped.update(small, clipped.init(q), q)[0])
    with pytest.raises(ValueError, match="q.grad_clip"):
        optim.q_optimizer(0.01, grad_clip=-1.0)


def test_q_optimizer_state_layout_does_not_depend_on_the_clip():
    """Switching the clip on or off changes numbers, never the checkpointed state's tree."""
    q = jnp.eye(4)
    plain = optim.q_optimizer(0.01, weight_decay=0.1, freeze_steps=5, grad_clip=0.0)
    clipped = optim.q_optimizer(0.01, weight_decay=0.1, freeze_steps=5, grad_clip=10.0)
    assert jax.tree.structure(plain.init(q)) == jax.tree.structure(clipped.init(q))


@pytest.mark.parametrize("freeze", [0, 3])
def test_q_learning_rate_schedule_counts_global_steps_through_the_freeze(freeze):
    """A schedule of 0.1 until step 5 and 0 after: Q may move at steps [freeze, 5) only, and
    must stand still from step 5 on, however long the freeze was."""
    schedule = optax.piecewise_constant_schedule(0.1, {5: 0.0})
    tx = optim.q_optimizer(schedule, weight_decay=0.5, freeze_steps=freeze)
    q = jnp.eye(4)
    state = tx.init(q)
    grad = -jnp.ones((4, 4)) * 0.1
    traces = [float(jnp.trace(q))]
    for _ in range(9):
        updates, state = tx.update(grad, state, q)
        q = optax.apply_updates(q, updates)
        traces.append(float(jnp.trace(q)))
    moved = [traces[t + 1] != traces[t] for t in range(9)]
    assert moved == [freeze <= t < 5 for t in range(9)]


@pytest.mark.parametrize("regularizer", ["weight_decay", "trace"])
def test_decay_fixed_point_is_q_star_without_decay_and_diffuses_with_it(regularizer):
    q_star = noise.paper_random(6, 0.4, seed=1)
    np.testing.assert_array_equal(optim.decay_fixed_point(q_star, 0.0), q_star)
    traces = [np.trace(optim.decay_fixed_point(q_star, s, regularizer=regularizer))
              for s in (1e-3, 1e-2, 1e-1)]
    assert np.trace(q_star) > traces[0] > traces[1] > traces[2]
    assert traces[0] == pytest.approx(np.trace(q_star), abs=0.02)


@pytest.mark.parametrize("regularizer", ["weight_decay", "trace"])
def test_decay_fixed_point_satisfies_the_optimality_conditions(regularizer):
    q_star = noise.paper_random(5, 0.5, seed=2)
    prior = np.array([0.1, 0.2, 0.3, 0.25, 0.15])
    s = 0.05
    q = optim.decay_fixed_point(q_star, s, class_prior=prior, regularizer=regularizer)
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-12)
    assert (q > 0).all()
    for i in range(5):
        # d/dq_j [-prior_i q*_j log q_j + s R(q)] is the same for every j (the multiplier).
        reg = s * q[:, i] if regularizer == "weight_decay" else s * np.eye(5)[:, i]
        grad = -prior[i] * q_star[:, i] / q[:, i] + reg
        np.testing.assert_allclose(grad, grad.mean(), atol=1e-9)


def test_decay_fixed_point_bias_grows_with_the_number_of_classes():
    # At a fixed mean-loss decay each column's data term scales with its prior 1/K, so the same
    # strength flattens Q far more at K=1000 than at K=10 (docs/results.md, the convention).
    small = optim.decay_fixed_point(noise.sparse_random(10, 0.5, m=3, seed=0), 0.01)
    large = optim.decay_fixed_point(noise.sparse_random(1000, 0.5, m=3, seed=0), 0.01)
    assert np.diag(small).mean() > 0.45 > 0.3 > np.diag(large).mean()


def test_decay_fixed_point_rejects_bad_input():
    with pytest.raises(ValueError, match="strength"):
        optim.decay_fixed_point(np.eye(3), -1.0)
    with pytest.raises(ValueError, match="class_prior"):
        optim.decay_fixed_point(np.eye(3), 0.1, class_prior=[0.5, 0.5])
    with pytest.raises(ValueError, match="regularizer"):
        optim.decay_fixed_point(np.eye(3), 0.1, regularizer="l1")
    with pytest.raises(noise.NoiseMatrixError, match="q_star"):
        optim.decay_fixed_point(np.ones((3, 3)), 0.1)
