"""The projected-Q optax chain and the whole-state optimizer."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nlnoise import losses, noise, optim, projection


def _run_q_optimizer(tx, k: int, steps: int = 6) -> np.ndarray:
    rng = np.random.default_rng(3)
    q = jnp.asarray(noise.symmetric(k, 0.3), jnp.float32)
    s = tx.init(q)
    update = jax.jit(tx.update)
    for _ in range(steps):
        g = _q_grad(q, jnp.asarray(rng.normal(size=(32, k)), jnp.float32),
                    jnp.asarray(rng.integers(0, k, 32)))
        u, s = update(g, s, q)
        q = optax.apply_updates(q, u)
    return np.asarray(q)


def test_q_optimizer_small_k_unchanged_and_methods_agree():
    # Small K: "auto" is still optax's sort, bit for bit.
    auto = _run_q_optimizer(optim.q_optimizer(0.5, weight_decay=0.1, momentum=0.9), 10)
    ref = _run_q_optimizer(optax.chain(
        optax.trace(decay=0.9), optim.add_q_regularizer(0.1), optax.scale_by_learning_rate(0.5),
        projection.project_columns_to_simplex("sort")), 10)
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


def test_bias_lr_scale_scales_the_bias_steps_only():
    """cuda-convnet's ``epsB = 2 * epsW``: with momentum, a bias moves ``scale`` times as far
    as a kernel under the same gradient at every step."""
    params = {"fc10": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros((2,))}}
    grads = {"fc10": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
    for scale in (1.0, 2.0):
        tx = optim.net_optimizer(0.01, momentum=0.9, weight_decay=0.0, bias_lr_scale=scale)
        state, p = tx.init(params), params
        for _ in range(3):
            u, state = tx.update(grads, state, p)
            p = optax.apply_updates(p, u)
            np.testing.assert_allclose(u["fc10"]["bias"], scale * u["fc10"]["kernel"][0],
                                       rtol=1e-6)
            assert float(u["fc10"]["kernel"][0, 0]) < 0


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


@pytest.mark.parametrize("k", [4, 40])  # the sorted chain, and the fused step from K = 32
@pytest.mark.parametrize("freeze", [0, 3])
def test_q_learning_rate_schedule_counts_global_steps_through_the_freeze(freeze, k):
    """A schedule of 0.1 until step 5 and 0 after: Q may move at steps [freeze, 5) only, and
    must stand still from step 5 on, however long the freeze was."""
    schedule = optax.piecewise_constant_schedule(0.1, {5: 0.0})
    tx = optim.q_optimizer(schedule, weight_decay=0.5, freeze_steps=freeze)
    q = jnp.eye(k)
    state = tx.init(q)
    grad = -jnp.ones((k, k)) * 0.1
    traces = [float(jnp.trace(q))]
    for _ in range(9):
        updates, state = tx.update(grad, state, q)
        q = optax.apply_updates(q, updates)
        traces.append(float(jnp.trace(q)))
    moved = [traces[t + 1] != traces[t] for t in range(9)]
    assert moved == [freeze <= t < 5 for t in range(9)]


def _sorted_chain(lr, wd, regularizer="weight_decay", momentum=None):
    """The Q step as separate transformations with optax's sort projection: the reference."""
    return optax.chain(optax.trace(decay=momentum) if momentum else optax.identity(),
                       optim.add_q_regularizer(wd, regularizer),
                       optax.scale_by_learning_rate(lr),
                       projection.project_columns_to_simplex("sort"))


@pytest.mark.parametrize(("shape", "regularizer", "momentum"), [
    ((64, 64), "weight_decay", None), ((200, 200), "weight_decay", 0.9),
    ((40, 48), "trace", None),  # stored with padding columns, as sharding.pad_q does
])
@pytest.mark.parametrize("form_in_reads", [False, True])
def test_fused_q_step_matches_the_sorted_chain_step_by_step(shape, regularizer, momentum,
                                                            form_in_reads, monkeypatch):
    # Both forms of the step: values written out (small Q) and formed inside every read.
    if form_in_reads:
        monkeypatch.setattr(optim, "FORM_IN_READS_MIN_BYTES", 0)
    k, stored = shape
    lr = optax.piecewise_constant_schedule(0.05, {4: 0.5})
    fused = optim.q_optimizer(lr, weight_decay=0.1, momentum=momentum, regularizer=regularizer)
    ref = _sorted_chain(lr, 0.1, regularizer, momentum)
    q = jnp.asarray(np.pad(noise.symmetric(k, 0.3), ((0, 0), (0, stored - k))), jnp.float32)
    sf, sr = fused.init(q), ref.init(q)
    assert optax.tree.get(sf, "tau").shape == (stored,)
    step_f = jax.jit(lambda g, s, q: fused.update(g, s, q))
    step_r = jax.jit(lambda g, s, q: ref.update(g, s, q))
    rng = np.random.default_rng(k)
    for _ in range(8):
        g = _q_grad(q[:, :k], jnp.asarray(rng.normal(size=(32, k)), jnp.float32),
                    jnp.asarray(rng.integers(0, k, 32)))
        g = jnp.pad(g, ((0, 0), (0, stored - k)))
        (uf, sf), (ur, sr) = step_f(g, sf, q), step_r(g, sr, q)
        new = np.asarray(q + uf)
        np.testing.assert_allclose(new, np.asarray(q + ur), rtol=0, atol=2e-6)
        assert (new >= 0).all()
        np.testing.assert_allclose(new.sum(0, dtype=np.float64), 1.0, rtol=0, atol=1e-6)
        # The state keeps each column's threshold: the next search starts there.
        if momentum:
            q = jnp.asarray(new)
            continue
        y = np.asarray(q + (-float(lr(int(optax.tree.get(sf, "count")) - 1)))
                       * (g + 0.1 * (q if regularizer == "weight_decay" else np.eye(*q.shape))))
        np.testing.assert_allclose(np.maximum(y - np.asarray(optax.tree.get(sf, "tau")), 0), new,
                                   atol=2e-6)
        q = jnp.asarray(new)


def test_small_k_keeps_the_sorted_chain_and_its_state_layout():
    """K = 10 runs on a checkpointed state: its tree must stay that of the sorted chain."""
    def old(clip, freeze, momentum):
        head = (optax.chain(optax.clip(clip), optax.clip_by_global_norm(clip)) if clip
                else optax.chain(optax.identity(), optax.identity()),
                optax.trace(decay=momentum) if momentum else optax.identity())
        inner = optax.chain(*head, optim.add_q_regularizer(0.1), optax.scale_by_learning_rate(0.1),
                            projection.project_columns_to_simplex())
        return (optax.transforms.conditionally_mask(inner, lambda s: s >= freeze) if freeze
                else inner)

    q = jnp.eye(10)
    for clip, freeze, momentum in itertools.product((0.0, 10.0), (0, 5), (None, 0.9)):
        new = optim.q_optimizer(0.1, weight_decay=0.1, freeze_steps=freeze, momentum=momentum,
                                grad_clip=clip)
        assert jax.tree.structure(new.init(q)) == jax.tree.structure(old(clip, freeze,
                                                                         momentum).init(q))
    big = optim.q_optimizer(0.1).init(jnp.eye(projection.NEWTON_MIN_K))
    assert optax.tree.get(big, "tau").shape == (projection.NEWTON_MIN_K,)


def test_fused_q_step_decay_scale_is_settable_and_lowers_the_decay():
    k = 50
    q = jnp.asarray(noise.symmetric(k, 0.2), jnp.float32)
    tx = optim.q_optimizer(0.5, weight_decay=0.5)
    state = tx.init(q)
    update = jax.jit(tx.update)
    full = q + update(jnp.zeros_like(q), state, q)[0]
    lowered = optax.tree.set(state, q_decay_scale=jnp.asarray(0.1, jnp.float32))
    less = q + update(jnp.zeros_like(q), lowered, q)[0]
    assert float(jnp.trace(q)) > float(jnp.trace(less)) > float(jnp.trace(full))


def test_fused_q_step_survives_a_huge_gradient():
    # p_i / (Qp)_j at the loss's cap: the column's values are ~1e23, beyond what a float32
    # threshold resolves, so the step takes the rescaling projection and lands on a vertex.
    k = 40
    q = jnp.eye(k)
    tx = optim.q_optimizer(0.01, weight_decay=0.1)
    g = jnp.zeros((k, k)).at[3, 0].set(-1e26).at[5, 1].set(-1e26).at[6, 1].set(-1e26)
    new = np.asarray(q + jax.jit(tx.update)(g, tx.init(q), q)[0])
    assert (new >= 0).all()
    np.testing.assert_allclose(new.sum(0), 1.0, atol=1e-6)
    assert new[3, 0] == pytest.approx(1.0)
    np.testing.assert_allclose(new[[5, 6], 1], 0.5, atol=1e-6)  # two tied maxima share it


def _sparse_q_and_grad(k: int, seed: int) -> tuple[jax.Array, jax.Array]:
    """A column-stochastic Q with mostly tiny entries, and the noisy loss's gradient at it."""
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.dirichlet(np.ones(k) * 0.1, size=k).T, jnp.float32)
    return q, _q_grad(q, jnp.asarray(rng.normal(size=(64, k)), jnp.float32),
                      jnp.asarray(rng.integers(0, k, 64)))


def test_fused_q_step_on_q_sharded_by_columns_matches_one_device():
    """Q split by columns over the model axis: same result, and no collective moves Q."""
    from nlnoise import sharding

    k = 256
    q, g = _sparse_q_and_grad(k, seed=0)
    tx = optim.q_optimizer(0.05, weight_decay=0.1, freeze_steps=2)
    state = tx.init(q)
    mesh = sharding.make_mesh(2, 4)
    state_sh = sharding.state_shardings(mesh, {"q": state})["q"]
    q_sh = sharding.state_shardings(mesh, {"q": q})["q"]
    assert q_sh.spec == sharding.P(None, "model")
    assert optax.tree.get(state_sh, "tau").spec == sharding.P("model")

    def update(g, s, q):
        u, s = tx.update(g, s, q)
        return q + u, s

    ones = jax.jit(update)
    want = (q, state)
    for _ in range(3):  # two frozen steps, then the update
        want = ones(g, want[1], want[0])
    fn = jax.jit(update, in_shardings=(q_sh, state_sh, q_sh), out_shardings=(q_sh, state_sh))
    got = (jax.device_put(q, q_sh), jax.device_put(state, state_sh))
    for _ in range(3):
        got = fn(jax.device_put(g, q_sh), got[1], got[0])
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=0, atol=1e-6)
    assert got[0].sharding.spec == sharding.P(None, "model")
    hlo = fn.lower(g, state, q).compile().as_text()
    moves_q = [line for line in hlo.splitlines()
               if any(op in line for op in ("all-gather(", "all-to-all(", "collective-permute("))
               and f"{k}," in line.split("=")[1].split("(")[0]]
    assert not moves_q, moves_q[:3]


def test_fused_q_step_inside_shard_map_matches_one_device():
    """An engineer's own shard_map over Q's columns: each device updates its own columns."""
    from nlnoise import sharding

    q, g = _sparse_q_and_grad(256, seed=1)
    tx = optim.q_optimizer(0.05, weight_decay=0.1)
    state = tx.init(q)

    def update(q, g, s):
        u, s = tx.update(g, s, q)
        return q + u, s

    want = jax.jit(update)(q, g, state)
    mesh = sharding.make_mesh(1, 8)
    cols = sharding.P(None, "model")
    # Per-column leaves (the thresholds) split with Q's columns; scalars are replicated.
    specs = jax.tree.map(lambda x: sharding.P("model") if x.ndim == 1 else sharding.P(), state)
    fn = jax.jit(jax.shard_map(update, mesh=mesh, in_specs=(cols, cols, specs),
                               out_specs=(cols, specs)))
    put = lambda x, s: jax.device_put(x, jax.sharding.NamedSharding(mesh, s))
    got = fn(put(q, cols), put(g, cols), jax.tree.map(put, state, specs))
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(optax.tree.get(got[1], "tau")),
                                  np.asarray(optax.tree.get(want[1], "tau")))
