"""The fixed point at which a constant decay holds Q (nlnoise.fixed_point)."""

import numpy as np
import pytest

from nlnoise import fixed_point, noise, optim


def test_optim_re_exports_the_fixed_point():
    assert optim.decay_fixed_point is fixed_point.decay_fixed_point


@pytest.mark.parametrize("regularizer", ["weight_decay", "trace"])
def test_decay_fixed_point_is_q_star_without_decay_and_diffuses_with_it(regularizer):
    q_star = noise.paper_random(6, 0.4, seed=1)
    np.testing.assert_array_equal(fixed_point.decay_fixed_point(q_star, 0.0), q_star)
    traces = [np.trace(fixed_point.decay_fixed_point(q_star, s, regularizer=regularizer))
              for s in (1e-3, 1e-2, 1e-1)]
    assert np.trace(q_star) > traces[0] > traces[1] > traces[2]
    assert traces[0] == pytest.approx(np.trace(q_star), abs=0.02)


@pytest.mark.parametrize("regularizer", ["weight_decay", "trace"])
def test_decay_fixed_point_satisfies_the_optimality_conditions(regularizer):
    q_star = noise.paper_random(5, 0.5, seed=2)
    prior = np.array([0.1, 0.2, 0.3, 0.25, 0.15])
    s = 0.05
    q = fixed_point.decay_fixed_point(q_star, s, class_prior=prior, regularizer=regularizer)
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
    small = fixed_point.decay_fixed_point(noise.sparse_random(10, 0.5, m=3, seed=0), 0.01)
    large = fixed_point.decay_fixed_point(noise.sparse_random(1000, 0.5, m=3, seed=0), 0.01)
    assert np.diag(small).mean() > 0.45 > 0.3 > np.diag(large).mean()


def test_decay_fixed_point_rejects_bad_input():
    with pytest.raises(ValueError, match="strength"):
        fixed_point.decay_fixed_point(np.eye(3), -1.0)
    with pytest.raises(ValueError, match="class_prior"):
        fixed_point.decay_fixed_point(np.eye(3), 0.1, class_prior=[0.5, 0.5])
    with pytest.raises(ValueError, match="regularizer"):
        fixed_point.decay_fixed_point(np.eye(3), 0.1, regularizer="l1")
    with pytest.raises(noise.NoiseMatrixError, match="q_star"):
        fixed_point.decay_fixed_point(np.ones((3, 3)), 0.1)
