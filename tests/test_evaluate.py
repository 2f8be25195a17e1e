"""Host-side metrics: error, confusion orientation, Q metrics, outlier PR/AP."""

import numpy as np
import pytest

from nlnoise import evaluate, noise


def test_error_rate_with_mask():
    assert evaluate.error_rate([0, 1, 2, 2], [0, 1, 1, 0]) == 0.5
    assert evaluate.error_rate([0, 1, 2, 2], [0, 1, 1, 0], mask=[1, 1, 0, 0]) == 0.0
    with pytest.raises(ValueError, match="no examples"):
        evaluate.error_rate([0], [0], mask=[0])


def test_confusion_is_column_normalised_pred_by_true_and_feeds_adversarial():
    true = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 0, 2, 1, 1])
    c = evaluate.confusion(pred, true, 3)
    np.testing.assert_allclose(c[:, 0], [0.75, 0, 0.25])
    np.testing.assert_allclose(c[:, 1], [0, 1, 0])
    assert np.all(c[:, 2] == 0)  # no examples of class 2
    q = noise.adversarial(c, 0.4, m=1)
    assert q[2, 0] == pytest.approx(0.4)


def test_q_metrics():
    q_star = noise.symmetric(4, 0.5)
    m = evaluate.q_metrics(np.eye(4), q_star)
    assert m["q_trace"] == 4 and m["q_star_trace"] == pytest.approx(2.0)
    assert m["q_rel_l1"] == pytest.approx(noise.relative_l1(np.eye(4), q_star))
    assert "q_rel_l1" not in evaluate.q_metrics(np.eye(4), None)


def test_outlier_detection_ap():
    rng = np.random.default_rng(0)
    y = rng.random(1000) < 0.3
    perfect = evaluate.outlier_detection(y.astype(float), y)
    assert perfect["average_precision"] == pytest.approx(1.0)
    chance = evaluate.outlier_detection(rng.random(1000), y)
    assert abs(chance["average_precision"] - y.mean()) < 0.08
    assert len(chance["precision"]) == len(chance["recall"])
    with pytest.raises(ValueError, match="both"):
        evaluate.outlier_detection(np.ones(3), np.zeros(3, bool))
