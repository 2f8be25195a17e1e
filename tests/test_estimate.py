"""Input checks, the posterior and the noise-matrix estimates of nlnoise.estimate."""

import numpy as np
import pytest

from nlnoise import estimate, noise


def synthetic(n=20000, k=6, level=0.4, seed=0, concentration=8.0):
    """Calibrated clean-label probabilities and labels drawn through a known Q*.

    Each row of ``pred_probs`` is a Dirichlet draw peaked on a random class; the clean label is
    drawn from that row (so the probabilities are exactly calibrated) and the noisy label from
    ``Q*[:, clean]``. Returns ``(clean, noisy, pred_probs, q_star)``.
    """
    rng = np.random.default_rng(seed)
    q_star = noise.paper_random(k, level, seed=seed)
    alpha = np.full((n, k), 0.1)
    alpha[np.arange(n), rng.integers(0, k, n)] = concentration
    p = rng.gamma(alpha)
    p /= p.sum(axis=1, keepdims=True)
    clean = np.minimum((rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1), k - 1)
    return clean, noise.corrupt_labels(clean, q_star, seed), p, q_star


@pytest.fixture(scope="module")
def data():
    return synthetic()


# --- posterior ---------------------------------------------------------------------------------


def test_posterior_is_bayes_rule(data):
    _, noisy, p, q_star = data
    post = estimate.posterior(p[:200], q_star, noisy[:200])
    by_hand = q_star[noisy[:200]] * p[:200]
    by_hand /= by_hand.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(post, by_hand, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(post.sum(axis=1), 1.0)


def test_posterior_matches_the_jax_loss_module():
    import jax.numpy as jnp

    from nlnoise import losses

    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (50, 5))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    q = noise.pair_flip(5, 0.3)  # exact zeros off the two diagonals
    labels = rng.integers(0, 5, 50)
    ours = estimate.posterior(p, q, labels)
    theirs = np.asarray(losses.posterior(jnp.asarray(logits), jnp.asarray(q), jnp.asarray(labels)))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_posterior_zero_entries_and_fallbacks():
    p = np.array([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])
    q = np.eye(3)
    q[:, 2] = [0.5, 0.0, 0.5]  # class 2 is labelled 0 or 2, never 1; row 1 keeps one entry
    post = estimate.posterior(p, q, np.array([0, 1, 2]))
    assert np.isfinite(post).all()
    # Given 0: true 0 (q=1, p=.7) or true 2 (q=.5, p=0): certainly 0.
    np.testing.assert_allclose(post[0], [1.0, 0.0, 0.0])
    # Given 1: only true 1 can give it, but the model says class 2 for sure: nothing to update
    # with, so the row is the model's probabilities.
    np.testing.assert_allclose(post[1], p[1])
    # Given 2: only true 2 gives label 2, and the model gives 2 no mass: the same fallback.
    np.testing.assert_allclose(post[2], p[2])
    # Products far below float64's range stay exact in log space.
    tiny = np.array([[1e-300, 1 - 1e-300]])
    q2 = np.array([[1e-300, 1e-300], [1 - 1e-300, 1 - 1e-300]])
    np.testing.assert_allclose(estimate.posterior(tiny, q2, np.array([0])), tiny)


def test_posterior_non_square_q_and_blocks(data, monkeypatch):
    _, noisy, p, _ = data
    q = np.array([[0.9, 0.2], [0.1, 0.3], [0.0, 0.5]])  # [K_noisy=3, K_true=2]
    p2 = np.array([[0.6, 0.4], [0.1, 0.9]])
    post = estimate.posterior(p2, q, np.array([2, 0]))
    np.testing.assert_allclose(post[0], [0.0, 1.0])
    np.testing.assert_allclose(post[1], [0.09 / 0.27, 0.18 / 0.27])
    whole = estimate.posterior(p, noise.symmetric(6, 0.3), noisy)
    monkeypatch.setattr(estimate, "CHUNK", 7)
    np.testing.assert_array_equal(estimate.posterior(p, noise.symmetric(6, 0.3), noisy), whole)


def test_callers_arrays_are_not_modified():
    p = np.array([[0.5, 0.5, -1e-5], [0.2, 0.3, 0.5]], dtype=np.float32)
    p_copy, labels = p.copy(), np.array([0, 2])
    estimate.posterior(p, noise.symmetric(3, 0.2), labels)
    estimate.estimate_q(labels, p, "mle")
    np.testing.assert_array_equal(p, p_copy)


# --- estimates ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method, tol", [("mle", 0.03), ("confident_joint", 0.10),
                                         ("confusion", 0.10), ("soft_confusion", 0.16)])
def test_estimate_q_recovers_the_realized_transition(data, method, tol):
    clean, noisy, p, q_star = data
    realized = noise.realized_transition(clean, noisy, 6)
    q = estimate.estimate_q(noisy, p, method)
    noise.validate_transition(q, 6)
    assert noise.relative_l1(q, realized) < tol
    assert noise.relative_l1(q, q_star) < tol + 0.03


def test_plain_confusions_overstate_the_noise(data):
    """They estimate Q C, C the predictions' confusion: every diagonal entry is too low."""
    _, noisy, p, q_star = data
    for method in ("soft_confusion", "confusion"):
        assert (np.diag(estimate.estimate_q(noisy, p, method)) < np.diag(q_star)).all()


def test_estimate_orientation_follows_the_flips():
    clean, _, p, _ = synthetic(n=6000, k=4, seed=3, concentration=30.0)
    q_star = noise.pair_flip(4, 0.3)  # true i -> label i + 1
    noisy = noise.corrupt_labels(clean, q_star, 0)
    for method in estimate.ESTIMATE_METHODS:
        q = estimate.estimate_q(noisy, p, method)
        for i in range(4):
            assert q[(i + 1) % 4, i] > 0.2 > q[i, (i + 1) % 4], method


def test_clean_labels_and_perfect_predictions_give_the_identity():
    labels = np.arange(40) % 4
    p = np.eye(4)[labels]
    for method in estimate.ESTIMATE_METHODS:
        np.testing.assert_allclose(estimate.estimate_q(labels, p, method), np.eye(4), atol=1e-9)


def test_confident_joint_by_hand():
    p = np.array([[0.9, 0.1, 0.0],     # labelled 0, confidently 0
                  [0.1, 0.9, 0.0],     # labelled 0, confidently 1: a label issue
                  [0.1, 0.8, 0.1],     # labelled 1, confidently 1
                  [0.0, 0.6, 0.4],     # labelled 1, below every threshold: not counted
                  [0.0, 0.2, 0.8],     # labelled 2, confidently 2
                  [0.35, 0.3, 0.35]])  # labelled 2, below every threshold
    labels = np.array([0, 0, 1, 1, 2, 2])
    # Thresholds (mean self-confidence): class 0 (.9 + .1)/2 = .5, class 1 .7, class 2 .575.
    np.testing.assert_array_equal(estimate.confident_joint(labels, p, calibrate=False),
                                  [[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    # Two classes over their thresholds: the more probable one wins. Thresholds .425/.4/.4.
    p = np.array([[0.4, 0.35, 0.25], [0.3, 0.4, 0.3], [0.3, 0.3, 0.4], [0.45, 0.55, 0.0]])
    labels = np.array([0, 1, 2, 0])
    raw = estimate.confident_joint(labels, p, calibrate=False)
    # Row 0 reaches no threshold; the diagonal's floor of 1 fills class 0.
    np.testing.assert_array_equal(raw, [[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(estimate.confident_joint(labels, p), raw)  # rows = (2, 1, 1)


def test_confident_joint_matches_a_loop(data):
    _, noisy, p, _ = data
    noisy, p = noisy[:500], p[:500]
    t = np.array([p[noisy == k, k].mean() for k in range(6)])
    counts = np.zeros((6, 6))
    for row, label in zip(p, noisy, strict=True):
        confident = [i for i in range(6) if row[i] >= t[i] - 1e-6]
        if confident:
            counts[label, max(confident, key=lambda i: row[i])] += 1
    np.fill_diagonal(counts, np.maximum(np.diag(counts), 1))
    np.testing.assert_array_equal(estimate.confident_joint(noisy, p, calibrate=False), counts)


def test_confident_joint_calibrated_rows_are_the_label_counts(data):
    _, noisy, p, _ = data
    cj = estimate.confident_joint(noisy, p)
    np.testing.assert_allclose(cj.sum(axis=1), np.bincount(noisy, minlength=6))
    assert (np.diag(cj) >= 1).all()


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("labels, probs, q, field, fix", [
    ([0, 1], [[0.5, 0.5], [2.0, -1.0]], None, "pred_probs", "softmax"),
    ([0, 1], [[3.0, 1.0], [0.2, 0.1]], None, "pred_probs", "softmax"),
    ([0, 1], [[0.5, np.nan], [0.5, 0.5]], None, "pred_probs", "finite"),
    ([0, 1], [0.5, 0.5], None, "pred_probs", "[N, K]"),
    ([0, 2], [[0.5, 0.5], [0.5, 0.5]], None, "noisy_labels", "outside [0, 2)"),
    ([0.5, 1], [[0.5, 0.5], [0.5, 0.5]], None, "noisy_labels", "integers"),
    ([0, 1, 1], [[0.5, 0.5], [0.5, 0.5]], None, "noisy_labels", "one label per row"),
    ([0, 1], [[0.5, 0.5], [0.5, 0.5]], np.eye(3), "q", "columns"),
    ([0, 1], [[0.5, 0.5], [0.5, 0.5]], [[0.9, 0.1], [0.2, 0.8]], "q", "transpose"),
])
def test_bad_input_names_the_argument_and_the_fix(labels, probs, q, field, fix):
    with pytest.raises(ValueError) as e:
        estimate.posterior(probs, q if q is not None else np.eye(2), labels)
    assert str(e.value).startswith(f"{field}:") and fix in str(e.value)


def test_row_stochastic_t_is_caught_with_the_transpose_hint():
    """Orientation: ``T[true, noisy]`` (rows sum to 1) is refused with a hint to pass
    ``T.T``, which is then accepted and gives the same posterior as the column form."""
    q = noise.paper_random(4, 0.4, seed=2)
    p = np.full((3, 4), 0.25)
    labels = np.array([0, 1, 3])
    with pytest.raises(noise.NoiseMatrixError, match="transpose"):
        estimate.posterior(p, q.T, labels)
    np.testing.assert_allclose(estimate.posterior(p, q.T.T, labels),
                               estimate.posterior(p, q, labels))


def test_unknown_estimate_method():
    with pytest.raises(estimate.AuditInputError, match=r"^method: .*confident_joint"):
        estimate.estimate_q([0, 1], [[0.5, 0.5], [0.5, 0.5]], "anchor")
