"""Column projection onto the simplex: optax's sort, the sort-free search, the transform."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nlnoise import noise, projection


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
    p = np.asarray(projection.project_columns(jnp.asarray(q, jnp.float32)))
    assert (p >= 0).all()
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-6)
    np.testing.assert_allclose(projection.project_columns(jnp.asarray(p)), p, atol=1e-6)
    for i in range(4):
        np.testing.assert_allclose(p[:, i], _brute_force_simplex(q[:, i]), atol=1e-5)


def test_projection_transform_lands_on_simplex_and_needs_params():
    tx = optax.chain(optax.sgd(0.5), projection.project_columns_to_simplex())
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
        ref = jax.jit(lambda x: projection.project_columns(x, "sort"))(qq)
        got = jax.jit(lambda x: projection.project_columns(x, "newton"))(qq)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=0, atol=1e-9)
        assert (np.asarray(got) >= 0).all()
        np.testing.assert_allclose(np.asarray(got).sum(0), 1.0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 10, 100, 1000])
def test_newton_projection_float32_is_feasible_and_close(k):
    rng = np.random.default_rng(0)
    near = np.eye(k, 32) * 0.5 + 0.5 / k + 1e-3 * rng.normal(size=(k, 32))
    q = jnp.asarray(np.concatenate([_hard_columns(k, rng), near], axis=1), jnp.float32)
    got = np.asarray(jax.jit(lambda x: projection.project_columns(x, "newton"))(q))
    assert got.dtype == np.float32
    assert (got >= 0).all()
    # float64 accumulation: numpy sums a float32 column sequentially (1e-5 off at K=1000).
    np.testing.assert_allclose(got.sum(0, dtype=np.float64), 1.0, rtol=0, atol=1e-6)
    # Against optax where float32 can resolve the threshold (not the 1e6-offset column).
    ok = np.abs(np.asarray(q)).max(0) < 1e4
    ref = np.asarray(projection.project_columns(q, "sort"))
    np.testing.assert_allclose(got[:, ok], ref[:, ok], rtol=0, atol=1e-5)


def test_newton_projection_huge_float32_column_falls_back_to_argmax():
    # max - 1 == max in float32 at 1e9: the threshold cannot be resolved; the mass goes to max.
    q = jnp.asarray([[1e9, 0.0], [2e9, 0.5], [2e9, 0.2]], jnp.float32)
    got = np.asarray(projection.project_columns(q, "newton"))
    np.testing.assert_allclose(got[:, 0], [0.0, 0.5, 0.5])
    np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-6)


def test_project_columns_method_choice():
    q = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)
    small = np.asarray(projection.project_columns(q))
    assert np.array_equal(small, np.asarray(projection.project_columns(q, "sort")))
    rng = np.random.default_rng(1)
    big = jnp.asarray(rng.normal(size=(projection.NEWTON_MIN_K, 4)), jnp.float32)
    assert np.array_equal(np.asarray(projection.project_columns(big)),
                          np.asarray(projection.project_columns(big, "newton")))
    with pytest.raises(ValueError, match="method"):
        projection.project_columns(q, "bogus")
    with pytest.raises(ValueError, match="method"):
        projection.project_columns_to_simplex("bogus")


def _root(col: np.ndarray) -> float:
    """The exact simplex threshold of one column, by sorting (float64)."""
    s = np.sort(col)[::-1]
    cs = np.cumsum(s)
    r = np.arange(1, s.size + 1)
    rho = int((s - (cs - 1) / r > 0).sum())
    return (cs[rho - 1] - 1) / rho


@pytest.mark.parametrize("k", [1, 5, 33, 200])
def test_thresholds_are_exact_from_any_start(k):
    rng = np.random.default_rng(k)
    v = np.concatenate([_hard_columns(k, rng), rng.normal(size=(k, 12)) * 2,
                        np.abs(rng.normal(size=(k, 12))) * (rng.random((k, 12)) < 0.2)], axis=1)
    roots = np.array([_root(v[:, i]) for i in range(v.shape[1])])
    starts = {"none": None, "root": roots, "above": roots + 0.3, "below": roots - 0.3,
              "far above": roots + 1e3, "inf": np.full_like(roots, np.inf),
              "random": rng.normal(size=roots.size)}
    with jax.enable_x64(True):
        fn = jax.jit(projection.simplex_thresholds)
        for name, start in starts.items():
            th = fn(jnp.asarray(v), None if start is None else jnp.asarray(start))
            np.testing.assert_allclose(np.asarray(th.tau), roots, rtol=1e-12, atol=1e-12,
                                       err_msg=name)
            assert int(th.passes) <= 1 + k, name
        # Started at the root, the first pass confirms it: one read of v.
        assert int(fn(jnp.asarray(v[:, 11:]), jnp.asarray(roots[11:])).passes) == 1


@pytest.mark.parametrize("shape", [(37, 5), (16, 3), (3, 40), (100, 64)])
def test_blocked_column_stats_equal_the_plain_reductions(shape):
    rng = np.random.default_rng(0)
    v = jnp.asarray(np.round(rng.normal(size=shape), 1), jnp.float32)  # ties at t too
    t = jnp.asarray(np.round(rng.normal(size=shape[1]), 1), jnp.float32)
    for first in (False, True):
        blocked = projection.column_stats(v, t, first=first, blocked=True)
        plain = projection.column_stats(v, t, first=first, blocked=False)
        for name, a, b in zip(blocked._fields, blocked, plain, strict=True):
            if b is None:
                assert a is None, name
                continue
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6,
                                       err_msg=name)
    assert projection.column_stats(v, t).hi is None


def test_thresholds_inside_shard_map_equal_the_unsharded_ones():
    # Engineers project a column-sharded Q inside their own shard_map: each device searches
    # its own columns, with no communication, and must find the same thresholds.
    rng = np.random.default_rng(1)
    v = jnp.asarray(np.abs(rng.normal(size=(40, 16))) * (rng.random((40, 16)) < 0.3),
                    jnp.float32)
    mesh = jax.make_mesh((4,), ("model",))
    spec = jax.sharding.PartitionSpec(None, "model")
    sharded = jax.device_put(v, jax.sharding.NamedSharding(mesh, spec))
    for blocked in (True, False):
        fn = jax.jit(jax.shard_map(
            lambda x, b=blocked: projection.simplex_thresholds(x, blocked=b).tau, mesh=mesh,
            in_specs=spec, out_specs=jax.sharding.PartitionSpec("model")))
        np.testing.assert_array_equal(
            np.asarray(fn(sharded)),
            np.asarray(projection.simplex_thresholds(v, blocked=blocked).tau))


@pytest.mark.parametrize("blocked", [True, False])
def test_values_formed_from_operands_equal_the_materialised_ones(blocked):
    # The Q step searches and projects q - lr * (g + wd * q) without writing it out first;
    # the result must be that of projecting the materialised values, to float32 rounding (XLA
    # may contract the map into fused multiply-adds differently in the two programs).
    rng = np.random.default_rng(2)
    q = jnp.asarray(rng.dirichlet(np.ones(37) * 0.2, size=29).T, jnp.float32)  # 37 x 29
    g = jnp.asarray(-np.abs(rng.normal(size=q.shape)) * (rng.random(q.shape) < 0.3),
                    jnp.float32)

    def pre(q, g):
        return q + (-0.05) * (g + 0.1 * q)

    y = pre(q, g)
    start = jnp.asarray(rng.normal(size=29) * 0.01, jnp.float32)
    want = projection.simplex_thresholds(y, start, blocked=blocked)
    got = projection.simplex_thresholds((q, g), start, blocked=blocked, values=pre)
    np.testing.assert_array_equal(np.asarray(got.n), np.asarray(want.n))
    for name in ("tau", "s", "col_max"):
        np.testing.assert_allclose(np.asarray(getattr(got, name)), np.asarray(getattr(want, name)),
                                   rtol=1e-6, atol=1e-9, err_msg=name)
    for rescale in (None, True, False):
        np.testing.assert_allclose(
            np.asarray(projection.apply_thresholds((q, g), got, rescale=rescale, values=pre)),
            np.asarray(projection.apply_thresholds(y, want, rescale=rescale)), rtol=0, atol=1e-7)


def test_operands_without_values_or_of_mixed_shapes_are_refused():
    q = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="values="):
        projection.simplex_thresholds((q, q))
    with pytest.raises(ValueError, match="one shape"):
        projection.simplex_thresholds((q, jnp.ones((4, 2))), values=lambda a, b: a)
