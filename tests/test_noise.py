"""Transition matrices, validation, label corruption and the realized transition."""

import numpy as np
import pytest

from nlnoise import noise

K = 10


@pytest.mark.parametrize(
    "q",
    [
        noise.identity(K),
        noise.symmetric(K, 0.4),
        noise.pair_flip(K, 0.3),
        noise.paper_random(K, 0.5, seed=3),
        noise.sparse_random(K, 0.5, m=3, seed=1),
        noise.adversarial(np.random.default_rng(0).uniform(size=(K, K)), 0.4, m=2),
        noise.outlier_eqn8(K),
        noise.outlier_eqn9(K, 0.2),
    ],
)
def test_constructors_are_column_stochastic(q):
    assert np.allclose(q.sum(axis=0), 1.0)
    assert (q >= 0).all()
    noise.validate_transition(q)


def test_symmetric_definition_and_both_rates():
    q = noise.symmetric(5, 0.4)
    assert np.allclose(np.diag(q), 0.6)
    assert np.allclose(q[1, 0], 0.1)
    assert noise.flip_rate(q) == pytest.approx(0.4)
    rates = noise.symmetric_rates(5, 0.4)
    assert rates == {"flip_rate": 0.4, "uniform_mix_rate": pytest.approx(0.5)}
    # The mix convention with p = 0.5: (1 - p) I + p/K 11^T is the same matrix.
    mix = 0.5 * np.eye(5) + 0.5 / 5
    assert np.allclose(mix, q)


def test_pair_flip_targets_next_class():
    q = noise.pair_flip(4, 0.3)
    assert q[1, 0] == pytest.approx(0.3) and q[0, 3] == pytest.approx(0.3)
    assert np.count_nonzero(q) == 8


def test_paper_random_pattern_is_level_independent_and_non_uniform():
    a, b = noise.paper_random(K, 0.3, seed=7), noise.paper_random(K, 0.7, seed=7)
    assert np.allclose(np.diag(a), 0.7) and np.allclose(np.diag(b), 0.3)
    off_a, off_b = a - np.diag(np.diag(a)), b - np.diag(np.diag(b))
    assert np.allclose(off_a / 0.3, off_b / 0.7)
    assert off_b.max() > 2 * (0.7 / (K - 1))  # some confusions dominate
    assert not np.allclose(noise.paper_random(K, 0.5, seed=1), noise.paper_random(K, 0.5, seed=2))


def test_sparse_random_has_m_targets_per_class():
    q = noise.sparse_random(1000, 0.5, m=10, seed=0)
    assert np.allclose(np.diag(q), 0.5)
    assert np.count_nonzero(q) == 1000 * 11  # the paper: about 10k off-diagonal non-zeros
    assert np.allclose(q[q > 0].min(), 0.05)


def test_adversarial_flips_to_most_confused_and_leaves_input_untouched():
    conf = np.eye(4) * 50
    conf[2, 0], conf[3, 0], conf[1, 0] = 10, 5, 1  # class 0 mostly confused with 2, then 3
    before = conf.copy()
    q = noise.adversarial(conf, 0.4, m=2)
    assert np.array_equal(conf, before)
    assert q[2, 0] == pytest.approx(0.4 * 10 / 15) and q[3, 0] == pytest.approx(0.4 * 5 / 15)
    assert q[1, 0] == 0
    # class 1 has no confusion at all: spread uniformly over the others
    assert np.allclose(q[[0, 2, 3], 1], 0.4 / 3)


def test_outlier_matrices():
    q8 = noise.outlier_eqn8(3)
    assert q8.shape == (4, 4) and np.allclose(q8[:3, 3], 1 / 3) and q8[3].sum() == 0
    q9 = noise.outlier_eqn9(3, 0.25)
    assert q9[3, 3] == 0.25 and np.allclose(q9[:3, 3], 0.25)
    assert noise.outlier_alpha(1, 3) == 0.25


@pytest.mark.parametrize(
    ("q", "match"),
    [
        (np.eye(3)[:, :, None], "2-D"),
        (np.array([[0.5, 0.5], [0.5, np.nan]]), "non-finite"),
        (np.array([[1.2, 0.0], [-0.2, 1.0]]), "negative"),
        (np.array([[0.9, 0.0], [0.0, 1.0]]), "column 0 sums to 0.9"),
        (np.array([[0.7, 0.3], [0.1, 0.9]]), "row-stochastic"),
        ("abc", "not a numeric"),
    ],
)
def test_validation_names_the_problem(q, match):
    with pytest.raises(noise.NoiseMatrixError, match=match):
        noise.validate_transition(q, name="noise.q")


def test_validation_checks_size_and_names_field():
    with pytest.raises(noise.NoiseMatrixError, match=r"noise.q: expected shape \(4, 4\)"):
        noise.validate_transition(np.eye(3), 4, name="noise.q")
    # Within the stated tolerance passes; beyond it fails.
    q = np.eye(3)
    q[0, 0] += 0.5 * noise.COLUMN_SUM_ATOL
    noise.validate_transition(q)
    q[0, 0] += noise.COLUMN_SUM_ATOL
    with pytest.raises(noise.NoiseMatrixError):
        noise.validate_transition(q)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_levels_outside_unit_interval_are_rejected(bad):
    with pytest.raises(noise.NoiseMatrixError, match="level"):
        noise.symmetric(3, bad)
    with pytest.raises(noise.NoiseMatrixError, match="alpha"):
        noise.outlier_eqn9(3, bad)


def test_make_unknown_kind_and_missing_confusion():
    with pytest.raises(noise.NoiseMatrixError, match="corruption.kind"):
        noise.make("gaussian", 3, 0.1)
    with pytest.raises(noise.NoiseMatrixError, match="confusion"):
        noise.make("adversarial", 3, 0.1)
    assert np.allclose(noise.make("paper_random", 4, 0.2, seed=5), noise.paper_random(4, 0.2, 5))


def test_corrupt_labels_deterministic_across_shards_and_order():
    labels = np.random.default_rng(0).integers(0, K, 10_000)
    q = noise.paper_random(K, 0.5, seed=0)
    full = noise.corrupt_labels(labels, q, seed=11)
    assert np.array_equal(full, noise.corrupt_labels(labels, q, seed=11))
    # Any split into shards, in any order, with the global indices, gives the same labels.
    perm = np.random.default_rng(1).permutation(labels.size)
    parts = np.array_split(perm, 7)
    rebuilt = np.empty_like(full)
    for part in reversed(parts):
        rebuilt[part] = noise.corrupt_labels(labels[part], q, seed=11, indices=part)
    assert np.array_equal(rebuilt, full)
    assert not np.array_equal(full, noise.corrupt_labels(labels, q, seed=12))


def test_corrupt_labels_never_draws_zero_probability_classes():
    labels = np.repeat(np.arange(K), 2000)
    q = noise.sparse_random(K, 0.6, m=2, seed=3)
    noisy = noise.corrupt_labels(labels, q, seed=0)
    assert (q[noisy, labels] > 0).all()
    assert np.array_equal(noise.corrupt_labels(labels, noise.identity(K), seed=0), labels)


def test_realized_rate_matches_requested_within_sampling_error():
    n, level = 200_000, 0.5
    labels = np.random.default_rng(2).integers(0, K, n)
    q = noise.paper_random(K, level, seed=0)
    noisy = noise.corrupt_labels(labels, q, seed=3)
    realized = noise.realized_transition(labels, noisy, K)
    rate = np.mean(noisy != labels)
    assert abs(rate - level) < 4 * np.sqrt(level * (1 - level) / n)
    # Every entry within 4 standard errors of its column's binomial.
    counts = np.bincount(labels, minlength=K)
    se = np.sqrt(q * (1 - q) / counts[None, :])
    assert (np.abs(realized - q) <= 4 * se + 1e-12).all()


def test_realized_transition_empty_class_is_nan_and_labels_checked():
    r = noise.realized_transition(np.array([0, 0, 1]), np.array([0, 1, 1]), 3)
    assert np.allclose(r[:, 0], [0.5, 0.5, 0]) and np.isnan(r[:, 2]).all()
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        noise.corrupt_labels(np.array([0, 3]), noise.identity(3), seed=0)


def test_relative_l1():
    assert noise.relative_l1(np.eye(3), np.eye(3)) == 0
    assert noise.relative_l1(np.full((2, 2), 0.5), np.eye(2)) == pytest.approx(1.0)


def test_check_labels_error_type_float_policy_and_hint():
    np.testing.assert_array_equal(noise.check_labels(np.array([0.0, 2.0]), 3), [0, 2])
    with pytest.raises(TypeError, match="train.labels: class indices must be integers"):
        noise.check_labels(np.array([0.0, 2.0]), 3, "train.labels", error=TypeError,
                           integral_floats=False)
    with pytest.raises(ValueError, match=r"1 labels outside \[0, 3\); first is 3 at index 1\. "
                                         "Fix me"):
        noise.check_labels([0, 3], 3, hint="Fix me")
