"""The noise layer's pure functions: stability, exactness, gradients, posterior, C~ = Q C."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlnoise import losses, noise


def _naive_log_probs(logits, q):
    return jnp.log(jax.nn.softmax(logits, axis=-1) @ q.T)


@pytest.fixture
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("seed", range(4))
def test_matches_naive_formula_in_float64_values_and_gradients(x64, seed):
    rng = np.random.default_rng(seed)
    k_true, k_noisy = 6, 7
    logits = jnp.asarray(rng.normal(size=(5, k_true)) * 3)
    q = rng.uniform(size=(k_noisy, k_true)) ** 2
    q = jnp.asarray(q / q.sum(0))
    labels = jnp.asarray(rng.integers(0, k_noisy, 5))
    np.testing.assert_allclose(losses.noisy_log_probs(logits, q), _naive_log_probs(logits, q),
                               rtol=1e-12, atol=1e-12)
    ce = lambda lg, qq: losses.noisy_cross_entropy(lg, qq, labels).mean()
    ce_naive = lambda lg, qq: -jnp.take_along_axis(
        _naive_log_probs(lg, qq), labels[:, None], 1).mean()
    for ours, ref in zip(jax.grad(ce, (0, 1))(logits, q), jax.grad(ce_naive, (0, 1))(logits, q),
                         strict=True):
        np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
    # Full matrix gradients too (every noisy class, a random cotangent).
    w = jnp.asarray(rng.normal(size=(5, k_noisy)))
    f = lambda lg, qq: jnp.sum(w * losses.noisy_log_probs(lg, qq))
    g = lambda lg, qq: jnp.sum(w * _naive_log_probs(lg, qq))
    for ours, ref in zip(jax.grad(f, (0, 1))(logits, q), jax.grad(g, (0, 1))(logits, q),
                         strict=True):
        np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_gradient_wrt_zero_entries_of_q_is_the_true_derivative(x64):
    # d/dq[j,i] log(sum_i q[j,i] p_i) = p_i / p_noisy_j, also where q[j,i] == 0: Q needs it to
    # move off the identity.
    logits = jnp.array([[0.3, -1.0, 2.0]])
    q = jnp.eye(3)
    g = jax.grad(lambda qq: losses.noisy_cross_entropy(logits, qq, jnp.array([1])).sum())(q)
    p = jax.nn.softmax(logits[0])
    np.testing.assert_allclose(g[1], -p / p[1], rtol=1e-12)
    assert np.all(np.asarray(g)[[0, 2]] == 0)


QS = {
    "identity": noise.identity(4),
    "eqn8": noise.outlier_eqn8(3),
    "eqn9": noise.outlier_eqn9(3, 0.1),
    "pair": noise.pair_flip(4, 0.3),
}


@pytest.mark.parametrize("name", sorted(QS))
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_finite_values_and_gradients_with_zeros_and_huge_logits(name, scale):
    q = jnp.asarray(QS[name], jnp.float32)
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.choice([-1.0, 1.0], size=(8, 4)) * scale, jnp.float32)
    out = losses.noisy_log_probs(logits, q)
    assert np.isfinite(np.asarray(out)).all()
    assert (np.asarray(out) <= 0).all()
    f = lambda lg, qq: losses.noisy_log_probs(lg, qq).sum()
    for g in jax.grad(f, (0, 1))(logits, q):
        assert np.isfinite(np.asarray(g)).all()
    labels = jnp.asarray(rng.integers(0, 4, 8))
    ce = lambda lg, qq: losses.noisy_cross_entropy(lg, qq, labels).mean()
    val, grads = jax.value_and_grad(ce, (0, 1))(logits, q)
    assert np.isfinite(float(val))
    for g in grads:
        assert np.isfinite(np.asarray(g)).all()


def test_identity_q_is_exact_cross_entropy_even_for_huge_logits():
    logits = jnp.array([[1e4, -1e4, 0.0], [2.0, 1.0, 0.5]], jnp.float32)
    labels = jnp.array([1, 2])
    ours = losses.noisy_cross_entropy(logits, jnp.eye(3), labels)
    plain = losses.noisy_cross_entropy(logits, None, labels)
    np.testing.assert_allclose(ours, plain, rtol=1e-6)
    assert float(ours[0]) == pytest.approx(2e4, rel=1e-6)  # not clamped at some floor


def test_all_zero_row_reports_log_zero():
    q = jnp.asarray(noise.outlier_eqn8(2), jnp.float32)
    out = losses.noisy_log_probs(jnp.zeros((1, 3)), q)
    assert float(out[0, 2]) == losses.LOG_ZERO
    np.testing.assert_allclose(np.exp(out[0, :2]), [0.5, 0.5], rtol=1e-6)


def test_k1000_blocked_path_matches_and_is_finite():
    k = 1000
    rng = np.random.default_rng(0)
    q = jnp.asarray(noise.sparse_random(k, 0.5, m=10, seed=0), jnp.float32)
    logits = jnp.asarray(rng.normal(size=(20, k)) * 5, jnp.float32)
    assert 20 * k * k > losses._MAX_DENSE_ELEMENTS  # exercises the blocked path
    out = losses.noisy_log_probs(logits, q)
    lg = np.asarray(logits, np.float64)
    p = np.exp(lg - lg.max(-1, keepdims=True))
    ref = np.log((p / p.sum(-1, keepdims=True)) @ np.asarray(q, np.float64).T)
    np.testing.assert_allclose(out, ref, rtol=2e-4, atol=2e-5)
    labels = jnp.asarray(rng.integers(0, k, 20))
    np.testing.assert_allclose(
        losses.noisy_cross_entropy(logits, q, labels),
        -np.take_along_axis(np.asarray(out), np.asarray(labels)[:, None], 1)[:, 0], rtol=1e-5)
    grads = jax.grad(lambda lg, qq: losses.noisy_log_probs(lg, qq).sum(), (0, 1))(logits, q)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_noisy_probs_sum_to_one_and_match_log_probs():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    q = jnp.asarray(noise.paper_random(5, 0.4), jnp.float32)
    p = losses.noisy_probs(logits, q)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(jnp.log(p), losses.noisy_log_probs(logits, q), rtol=1e-5)


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="q: expected"):
        losses.noisy_log_probs(jnp.zeros((2, 3)), jnp.eye(4))
    with pytest.raises(ValueError, match="labels"):
        losses.noisy_cross_entropy(jnp.zeros((2, 3)), jnp.eye(3), jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="logits"):
        losses.noisy_log_probs(jnp.zeros((3,)), jnp.eye(3))


def test_posterior_bayes_rule_and_impossible_label():
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    q = jnp.asarray(noise.outlier_eqn8(3), jnp.float32)
    labels = jnp.array([0, 1, 2, 0, 1, 3])  # label 3 is impossible under Eqn 8
    post = losses.posterior(logits, q, labels)
    p = jax.nn.softmax(logits)
    expect = np.asarray(q)[np.asarray(labels)] * np.asarray(p)
    np.testing.assert_allclose(post[:5], expect[:5] / expect[:5].sum(-1, keepdims=True),
                               rtol=1e-5)
    np.testing.assert_allclose(post[5], p[5], rtol=1e-6)
    # With the identity, the posterior is a point mass on the given label.
    np.testing.assert_allclose(losses.posterior(logits, jnp.eye(4), labels),
                               np.eye(4)[np.asarray(labels)], atol=1e-7)


def test_regularizers():
    q = jnp.asarray(noise.symmetric(4, 0.4))
    assert float(losses.trace_penalty(q)) == pytest.approx(2.4)
    g = jax.grad(losses.l2_penalty)(q)
    np.testing.assert_allclose(g, q)  # weight decay's update direction
    # Both are smaller for more diffuse (noisier) matrices.
    assert losses.trace_penalty(jnp.asarray(noise.symmetric(4, 0.6))) < losses.trace_penalty(q)
    assert losses.l2_penalty(jnp.full((4, 4), 0.25)) < losses.l2_penalty(q)


def test_combined_confusion_is_q_times_c():
    # Eqn 4-5: with clean labels known, C~ = Q C on any data.
    rng = np.random.default_rng(3)
    k, n = 5, 400
    logits = jnp.asarray(rng.normal(size=(n, k)) * 2, jnp.float32)
    clean = jnp.asarray(rng.integers(0, k, n))
    q = jnp.asarray(noise.paper_random(k, 0.5, seed=4), jnp.float32)
    c = losses.soft_confusion(jax.nn.softmax(logits), clean, k)
    c_tilde = losses.soft_confusion(losses.noisy_probs(logits, q), clean, k)
    np.testing.assert_allclose(c_tilde, q @ c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c.sum(0), 1.0, rtol=1e-5)
