"""Label scores, flagged labels, the robustness rule for an unreliable q, the summary and the
metrics of nlnoise.audit, on synthetic data with a known Q*."""

import csv
import pathlib
import re
import sys

import numpy as np
import pytest
from sklearn import metrics as skm

from nlnoise import audit, estimate, noise

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_estimate import synthetic

K = 6


@pytest.fixture(scope="module")
def data():
    clean, noisy, p, q_star = synthetic(n=12000, k=K, level=0.4, seed=5)
    return clean, noisy, p, q_star, noisy != clean


def _near_identity(q_star, share):
    """A Q stopped ``share`` of the way from the identity to Q* (trained too briefly)."""
    return (1.0 - share) * np.eye(q_star.shape[0]) + share * q_star


# --- scores -------------------------------------------------------------------------------------


def test_label_quality_methods(data):
    _, noisy, p, q_star, _ = data
    post = audit.label_quality(noisy, p, q_star)
    np.testing.assert_allclose(post, estimate.posterior(p, q_star, noisy)[np.arange(len(noisy)),
                                                                         noisy])
    np.testing.assert_array_equal(audit.label_quality(noisy, p, method="self_confidence"),
                                  p[np.arange(len(noisy)), noisy])
    margin = audit.label_quality(noisy, p, method="normalized_margin")
    row = p[0].copy()
    given = row[noisy[0]]
    row[noisy[0]] = -1
    assert margin[0] == pytest.approx((given - row.max() + 1) / 2)
    for s in (post, margin):
        assert s.min() >= 0 and s.max() <= 1
    with pytest.raises(audit.AuditInputError, match="^method: .*self_confidence"):
        audit.label_quality(noisy, p, method="entropy")


def test_without_q_the_estimate_is_used(data):
    _, noisy, p, _, _ = data
    q_est, info = audit.select_q(noisy, p)
    assert info["q_source"] == "estimate:confident_joint"
    np.testing.assert_allclose(q_est, audit.estimate_q(noisy, p))
    scores = audit.label_quality(noisy, p)
    np.testing.assert_allclose(scores, audit.label_quality(noisy, p, q_est, min_flip_ratio=0))


# --- flagged labels -----------------------------------------------------------------------------


def test_threshold_and_order(data):
    _, noisy, p, q_star, wrong = data
    issues = audit.find_label_issues(noisy, p, q_star)
    scores = audit.label_quality(noisy, p, q_star)
    flagged = np.zeros(len(noisy), bool)
    flagged[issues.indices] = True
    assert (scores[flagged] < 0.5).all() and (scores[~flagged] >= 0.5).all()
    assert (np.diff(issues.quality) >= 0).all()  # most likely wrong first
    np.testing.assert_array_equal(issues.given, noisy[issues.indices])
    post = estimate.posterior(p[issues.indices], q_star, noisy[issues.indices])
    np.testing.assert_array_equal(issues.suggested, post.argmax(axis=1))
    np.testing.assert_allclose(issues.suggested_prob, post.max(axis=1))
    m = audit.flag_metrics(issues, wrong)
    assert m["f1"] > 0.9 and m["precision"] > 0.9
    assert issues.info["q_source"] == "given"  # the true Q is kept
    strict = audit.find_label_issues(noisy, p, q_star, threshold=0.1)
    assert set(strict.indices) < set(issues.indices)
    assert len(audit.find_label_issues(noisy, p, q_star, threshold=0.0)) == 0


def test_num_issues_takes_the_lowest_scores(data):
    _, noisy, p, q_star, _ = data
    scores = audit.label_quality(noisy, p, q_star)
    top = audit.find_label_issues(noisy, p, q_star, num_issues=100, threshold=0.0)
    assert len(top) == 100
    assert scores[top.indices].max() <= np.sort(scores)[99]
    assert len(audit.find_label_issues(noisy, p, q_star, num_issues=0)) == 0
    assert len(audit.find_label_issues(noisy, p, q_star, num_issues=10**9)) == len(noisy)
    for bad in (-1, 2.5, "10"):
        with pytest.raises(audit.AuditInputError, match="^num_issues:"):
            audit.find_label_issues(noisy, p, q_star, num_issues=bad)
    with pytest.raises(audit.AuditInputError, match="^threshold:"):
        audit.find_label_issues(noisy, p, q_star, threshold=1.5)
    with pytest.raises(audit.AuditInputError, match="^rule:"):
        audit.find_label_issues(noisy, p, q_star, rule="both")
    with pytest.raises(audit.AuditInputError, match="choose one of .*estimated_count"):
        audit.health_summary(noisy, p, q_star, rule="both")
    assert [audit.check_rule(r) for r in audit.RULES] == list(audit.RULES)


def test_per_class_count_flags_the_expected_number_per_class(data):
    _, noisy, p, q_star, wrong = data
    issues = audit.find_label_issues(noisy, p, q_star, rule="per_class_count")
    scores = audit.label_quality(noisy, p, q_star)
    for j in range(K):
        expected = round(float(np.sum(1 - scores[noisy == j])))
        assert np.sum(issues.given == j) == expected
    assert audit.flag_metrics(issues, wrong)["f1"] > 0.9


def test_estimated_count_flags_the_estimates_number_of_wrong_labels(data):
    _, noisy, p, q_star, wrong = data
    issues = audit.find_label_issues(noisy, p, q_star, rule="estimated_count")
    est = audit.estimate_q(noisy, p)
    rate = 1 - np.sum(p.mean(axis=0) * np.diag(est))
    assert len(issues) == round(len(noisy) * rate) > 0
    assert issues.info["flip_rate_estimate"] == pytest.approx(rate)
    assert issues.info["rule"].startswith("the estimated number of wrong labels")
    scores = audit.label_quality(noisy, p, q_star)  # the lowest scores, most likely wrong first
    np.testing.assert_array_equal(issues.indices,
                                  np.argsort(scores, kind="stable")[:len(issues)])
    assert audit.flag_metrics(issues, wrong)["f1"] > 0.9
    # The same count without a q; and num_issues still wins over the rule.
    assert len(audit.find_label_issues(noisy, p, rule="estimated_count")) == len(issues)
    assert len(audit.find_label_issues(noisy, p, q_star, rule="estimated_count",
                                       num_issues=7)) == 7


def test_a_near_identity_q_does_not_make_most_issues_missed(data):
    """The robustness rule: a Q stopped a fifth of the way to Q* is replaced by the estimate."""
    _, noisy, p, q_star, wrong = data
    weak = _near_identity(q_star, 0.2)
    kept = audit.find_label_issues(noisy, p, weak, min_flip_ratio=0)
    robust = audit.find_label_issues(noisy, p, weak)
    oracle = audit.flag_metrics(audit.find_label_issues(noisy, p, q_star), wrong)
    assert kept.info["q_source"] == "given" and robust.info["q_source"].startswith("estimate")
    assert robust.info["flip_rate_q"] < 0.75 * robust.info["flip_rate_estimate"]
    assert audit.flag_metrics(kept, wrong)["recall"] < oracle["recall"] - 0.08  # the failure
    assert audit.flag_metrics(robust, wrong)["recall"] > oracle["recall"] - 0.02
    assert audit.flag_metrics(robust, wrong)["f1"] > oracle["f1"] - 0.02
    # A Q nine tenths of the way is trusted as it is.
    assert audit.select_q(noisy, p, _near_identity(q_star, 0.9))[1]["q_source"] == "given"


def test_non_square_q_is_refused_for_scores(data):
    _, noisy, p, _, _ = data
    q = np.vstack([noise.symmetric(K, 0.2) * 0.9, np.full((1, K), 0.1)])  # [K + 1, K]
    with pytest.raises(audit.AuditInputError, match=r"^q: .*square"):
        audit.find_label_issues(noisy, p, q)


def test_rows_and_csv(data, tmp_path):
    _, noisy, p, q_star, _ = data
    issues = audit.find_label_issues(noisy, p, q_star, num_issues=5)
    names = [f"class{i}" for i in range(K)]
    path = tmp_path / "issues.csv"
    issues.to_csv(path, names)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5
    assert [int(r["index"]) for r in rows] == issues.indices.tolist()
    assert rows[0]["given_name"] == names[issues.given[0]]
    assert float(rows[0]["quality"]) == pytest.approx(issues.quality[0])
    empty = audit.find_label_issues(noisy, p, q_star, num_issues=0)
    empty.to_csv(tmp_path / "empty.csv")
    assert (tmp_path / "empty.csv").read_text().strip() == ",".join(audit.LabelIssues.FIELDS)


# --- summary ------------------------------------------------------------------------------------


def test_health_summary(data):
    clean, noisy, p, q_star, wrong = data
    names = [f"c{i}" for i in range(K)]
    s = audit.health_summary(noisy, p, q_star, class_names=names, top_pairs=3)
    assert s["q_source"] == "given" and s["num_examples"] == len(noisy)
    np.testing.assert_allclose([c["noise_rate"] for c in s["classes"]], 1 - np.diag(q_star))
    assert s["expected_wrong_share"] == pytest.approx(wrong.mean(), abs=0.02)
    assert s["flagged"] == len(audit.find_label_issues(noisy, p, q_star))
    assert sum(c["flagged"] for c in s["classes"]) == s["flagged"]
    assert [c["given"] for c in s["classes"]] == np.bincount(noisy, minlength=K).tolist()
    for c in s["classes"]:
        truly_wrong = np.mean(clean[noisy == c["class"]] != c["class"])
        assert c["wrong_label_share"] == pytest.approx(truly_wrong, abs=0.04)
    counts = [x["expected_count"] for x in s["confused_pairs"]]
    assert len(counts) == 3 and counts == sorted(counts, reverse=True)
    joint = np.zeros((K, K))
    np.add.at(joint, (noisy, clean), 1)
    np.fill_diagonal(joint, 0)
    j, i = np.unravel_index(np.argmax(joint), joint.shape)
    assert (s["confused_pairs"][0]["given"], s["confused_pairs"][0]["true"]) == (j, i)
    md = audit.health_markdown(s)
    assert "| class | given |" in md and "| c5 |" in md and "the given q flips" in md
    assert len(re.findall(r"^\| c\d \|", md, re.M)) == K + 3  # class rows, then pair rows
    with pytest.raises(audit.AuditInputError, match="^class_names:"):
        audit.health_summary(noisy, p, class_names=names[:3])


# --- metrics ------------------------------------------------------------------------------------


def test_flag_metrics_by_hand():
    wrong = np.array([True, True, False, False, True])
    m = audit.flag_metrics(np.array([0, 2]), wrong)
    assert m == {"precision": 0.5, "recall": pytest.approx(1 / 3), "f1": pytest.approx(0.4),
                 "num_flagged": 2, "num_wrong": 3}
    assert audit.flag_metrics(np.array([True, False, True, False, False]), wrong) == m
    assert audit.flag_metrics([], wrong)["precision"] == 1.0
    assert audit.flag_metrics([], wrong)["f1"] == 0.0
    with pytest.raises(audit.AuditInputError, match="^flagged:"):
        audit.flag_metrics([7], wrong)
    with pytest.raises(audit.AuditInputError, match="^is_wrong:"):
        audit.flag_metrics([0], [1, 0])


def test_ranking_ap(data):
    _, noisy, p, q_star, wrong = data
    assert audit.ranking_ap(np.where(wrong, 0.1, 0.9), wrong) == 1.0
    scores = audit.label_quality(noisy, p, q_star)
    ap = audit.ranking_ap(scores, wrong)
    assert ap == pytest.approx(skm.average_precision_score(wrong, -scores)) and ap > 0.95
    with pytest.raises(audit.AuditInputError, match="^is_wrong:"):
        audit.ranking_ap(scores, np.zeros(len(wrong), bool))
