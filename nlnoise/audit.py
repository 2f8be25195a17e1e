"""Label audit from any model's predictions: label scores, likely-wrong labels, a summary.

Inputs are ``(noisy_labels [N], pred_probs [N, K])``, ``pred_probs`` being the softmax of a
model of the *clean* label (nlnoise's network with the noise layer removed, or any model
trained elsewhere), plus ``q`` where it is known (nlnoise's learned Q): ``q[j, i] = p(noisy = j
| true = i)``, ``[K, K]``, every column sums to 1, as cleanlab's ``noise_matrix`` (a
row-stochastic ``T[true, noisy]`` is refused with a hint to pass ``T.T``; see
:mod:`nlnoise.estimate` for the doubly stochastic case). Without ``q``, or with one that explains
too little of the noise (:func:`select_q`), a q estimated from the predictions is used.

    issues = audit.find_label_issues(noisy_labels, pred_probs, q)
    issues.to_csv("issues.csv", class_names)
    print(audit.health_markdown(audit.health_summary(noisy_labels, pred_probs, q)))

``pred_probs`` must model the clean label. An ordinary classifier trained on the noisy labels
models ``p(noisy | x) ~ Q p(true | x)`` instead; the posterior then counts the noise twice and
flags too few (sklearn digits, 30% flips, cross-validated logistic regression: recall 0.73
against cleanlab's 0.89 on the same probabilities). cleanlab's methods are built for that case.

Plain numpy; no training. When clean labels are known, :func:`flag_metrics` and
:func:`ranking_ap` score the result; ``bench/audit_vs_cleanlab.py`` compares with cleanlab.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm

from nlnoise.estimate import (  # noqa: F401  (re-exported: the audit API in one place)
    ESTIMATE_METHODS,
    AuditInputError,
    check_inputs,
    confident_joint,
    estimate_q,
    given_and_argmax,
    posterior,
    posterior_joint,
)

QUALITY_METHODS = ("posterior", "self_confidence", "normalized_margin")
RULES = ("threshold", "per_class_count", "estimated_count")
# A given q is replaced by the prediction-based estimate when its flip rate is below this
# fraction of the estimate's (select_q). A converged q sits near 1 (0.85-1.15 on the synthetic
# data of the tests, where the confident-joint estimate errs by up to ~15% on uncertain
# predictions); a Q stopped part of the way from the identity to Q* sits at that part (a
# Fashion-MNIST Q trained too briefly, relative L1 0.445 to Q*, is about 0.55 if it lies on
# that segment), and the recall of the 0.5 threshold falls with it.
MIN_FLIP_RATIO = 0.75


def check_rule(rule: str) -> str:
    """``rule`` if it names a flagging rule of :func:`find_label_issues`, else an
    :class:`AuditInputError` that lists the rules."""
    if rule not in RULES:
        raise AuditInputError(f"rule: unknown rule {rule!r}; choose one of {RULES}.")
    return rule


def _square(q: np.ndarray) -> np.ndarray:
    if q.shape[0] != q.shape[1]:
        raise AuditInputError(
            f"q: shape {q.shape}; scoring the given label needs a square [K, K] q (one noisy label "
            "per true class). Use nlnoise.estimate.posterior for a non-square q.")
    return q


def _flip_rate(q: np.ndarray, prior: np.ndarray) -> float:
    return float(1.0 - np.sum(prior * np.diag(q)))


def _select(labels, p, q, method: str, min_flip_ratio: float) -> tuple[np.ndarray, dict]:
    """:func:`select_q` on validated inputs."""
    if method not in ESTIMATE_METHODS:
        raise AuditInputError(f"estimate: unknown method {method!r}; choose one of "
                              f"{ESTIMATE_METHODS}.")
    prior = p.mean(axis=0, dtype=np.float64)
    info: dict = {}
    if q is not None:
        q = _square(q)
        info = {"q_source": "given", "flip_rate_q": _flip_rate(q, prior)}
        if min_flip_ratio <= 0:
            return q, info
    est = estimate_q(labels, p, method)
    info["flip_rate_estimate"] = _flip_rate(est, prior)
    if q is not None and info["flip_rate_q"] >= min_flip_ratio * info["flip_rate_estimate"]:
        return q, info
    info["q_source"] = f"estimate:{method}"
    return est, info


def describe_q_source(source: str, given: str = "the supplied Q") -> str:
    """Words for a ``q_source`` of :func:`select_q`: ``given`` names what the caller passed."""
    if source == "given":
        return given
    return f"Q estimated from the predictions ({source.partition(':')[2]})"


def select_q(noisy_labels, pred_probs, q=None, *, estimate: str = "confident_joint",
             min_flip_ratio: float = MIN_FLIP_RATIO) -> tuple[np.ndarray, dict]:
    """The q the label scores use, and why: ``(q [K, K], info)``.

    Without ``q``: ``estimate_q(noisy_labels, pred_probs, estimate)``. With ``q``, the rule for
    a learned Q that is unreliable because it was trained too briefly and is still near the
    identity: compare the off-diagonal mass of ``q`` and of the estimate, as flip rates ``1 -
    sum_i prior_i q[i, i]`` with ``prior = mean of pred_probs`` (the predicted class shares).
    If ``q``'s is below ``min_flip_ratio`` times the estimate's, ``q`` accounts for too little
    of the label noise (with it, too few posteriors of the given label fall below 0.5 and many
    wrong labels are missed), so the estimate is used instead; otherwise ``q`` is kept (a
    converged learned Q is at least as good as the estimates). ``min_flip_ratio=0`` always
    keeps ``q`` (and skips the estimate).

    ``info``: ``q_source`` (``"given"`` or ``"estimate:<method>"``), ``flip_rate_q`` (with
    ``q``) and ``flip_rate_estimate`` (when the estimate was computed).
    """
    labels, p, q = check_inputs(noisy_labels, pred_probs, q)
    return _select(labels, p, q, estimate, min_flip_ratio)


def label_quality(noisy_labels, pred_probs, q=None, method: str = "posterior", *,
                  estimate: str = "confident_joint",
                  min_flip_ratio: float = MIN_FLIP_RATIO) -> np.ndarray:
    """Per-example score in ``[0, 1]``, higher = the given label more likely right: ``[N]``.

    Methods:
      - ``"posterior"`` (default): ``posterior[n, noisy_n]`` under the q of :func:`select_q`
        (``q`` unless it is unreliable; the ``estimate`` without it).
      - ``"self_confidence"``: ``pred_probs[n, noisy_n]`` (cleanlab's default score).
      - ``"normalized_margin"``: ``(p_given - max_{other} p + 1) / 2``.
    """
    if method not in QUALITY_METHODS:
        raise AuditInputError(f"method: unknown score {method!r}; choose one of "
                              f"{QUALITY_METHODS}.")
    labels, p, q = check_inputs(noisy_labels, pred_probs, q)
    idx = np.arange(len(labels))
    if method == "posterior":
        q_used, _ = _select(labels, p, q, estimate, min_flip_ratio)
        return given_and_argmax(p, q_used, labels)[0]
    given = p[idx, labels].astype(np.float64)
    if method == "self_confidence":
        return given
    others = p.astype(np.float64)  # a copy: the caller's array is never written
    others[idx, labels] = -np.inf
    return (given - others.max(axis=1) + 1.0) / 2.0


@dataclasses.dataclass(frozen=True)
class LabelIssues:
    """Likely-wrong labels, most likely first (ascending ``quality``); every array is ``[M]``.

    ``quality`` is the posterior of the given label, ``suggested`` the posterior's argmax (it
    can be the given label itself when the posterior is spread over several classes: review
    those by hand) and ``suggested_prob`` its posterior. ``info`` says which q was used
    (:func:`select_q`) and which rule chose the examples.
    """

    indices: np.ndarray
    given: np.ndarray
    suggested: np.ndarray
    suggested_prob: np.ndarray
    quality: np.ndarray
    info: dict

    FIELDS = ("index", "given_label", "suggested_label", "suggested_prob", "quality")

    def __len__(self) -> int:
        return int(self.indices.size)

    def rows(self, class_names: Sequence[str] | None = None) -> list[dict]:
        """One dict per flagged example, in order (CSV or DataFrame ready), with class names
        (``given_name``, ``suggested_name``) when ``class_names`` is given."""
        cols = (self.indices, self.given, self.suggested, self.suggested_prob, self.quality)
        out = []
        for n, g, s, sp, qv in zip(*cols, strict=True):
            row = dict(zip(self.FIELDS, (int(n), int(g), int(s), float(sp), float(qv)),
                           strict=True))
            if class_names is not None:
                row["given_name"], row["suggested_name"] = class_names[g], class_names[s]
            out.append(row)
        return out

    def to_csv(self, path, class_names: Sequence[str] | None = None) -> None:
        """Writes :meth:`rows` to ``path`` as CSV with a header line."""
        names = () if class_names is None else ("given_name", "suggested_name")
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[*self.FIELDS, *names])
            w.writeheader()
            w.writerows(self.rows(class_names))


def _flag(labels, p, q_used, info, threshold, num_issues, rule) -> LabelIssues:
    """:func:`find_label_issues` once the q is chosen."""
    score, best, best_p = given_and_argmax(p, q_used, labels)
    order = np.argsort(score, kind="stable")
    info = dict(info)
    if num_issues is not None:
        chosen = order[:num_issues]
        info["rule"] = f"the {num_issues} lowest posteriors of the given label"
    elif rule == "threshold":
        chosen = order[score[order] < threshold]
        info["rule"] = f"posterior of the given label < {threshold:g}"
    else:
        mask = np.zeros(len(labels), bool)
        for j in np.unique(labels):
            members = np.flatnonzero(labels == j)
            count = round(float(np.sum(1.0 - score[members])))
            mask[members[np.argsort(score[members], kind="stable")[:count]]] = True
        chosen = order[mask[order]]
        info["rule"] = "per given class, as many as its expected number of wrong labels"
    return LabelIssues(indices=chosen, given=labels[chosen], suggested=best[chosen],
                       suggested_prob=best_p[chosen], quality=score[chosen], info=info)


def find_label_issues(noisy_labels, pred_probs, q=None, *, threshold: float = 0.5,
                      num_issues: int | None = None, rule: str = "threshold",
                      estimate: str = "confident_joint",
                      min_flip_ratio: float = MIN_FLIP_RATIO) -> LabelIssues:
    """Examples whose given label is likely wrong, most likely first.

    Each example's score is the posterior of its given label under the q of :func:`select_q`
    (``q`` as given unless its flip rate is under ``min_flip_ratio`` times that of the
    ``estimate`` from the predictions; that estimate when there is no ``q``).

    Which examples are returned:
      - ``num_issues=n``: the ``n`` lowest scores (``threshold`` and ``rule`` are not used).
      - ``rule="threshold"`` (default): every score below ``threshold`` (default 0.5: the
        given label is more likely wrong than right).
      - ``rule="per_class_count"``: for each given class ``j``, the ``round(c_j)`` lowest
        scores, ``c_j = sum_{n: noisy_n = j} (1 - score_n)`` the expected number of wrong
        labels in that class under the same q (the idea of cleanlab's ``prune_by_noise_rate``).
      - ``rule="estimated_count"``: the ``round(N * r)`` lowest scores, ``r = 1 - sum_i
        prior_i q_est[i, i]`` the flip rate of the ``estimate`` from the predictions (``prior``:
        the mean of ``pred_probs``). Where the network has begun to fit the given labels
        (in-sample predictions), the posteriors lean towards the given label and the threshold
        flags too few; a count from the noise matrix does not depend on how far each posterior
        leans. Out of fold with good networks, or once a learned Q has converged, the count
        gains nothing (within 0.01 of the threshold's F1 or below it); out of fold with weak
        networks, whose diffuse posteriors put many given labels below 0.5, it flags fewer and
        does better (docs/audit.md measures each case).
    """
    labels, p, q = check_inputs(noisy_labels, pred_probs, q)
    if not (np.isscalar(threshold) and 0.0 <= threshold <= 1.0):
        raise AuditInputError(f"threshold: {threshold!r} is not a probability in [0, 1].")
    check_rule(rule)
    if num_issues is not None:
        if not np.isscalar(num_issues) or int(num_issues) != num_issues or num_issues < 0:
            raise AuditInputError(f"num_issues: must be a whole number >= 0 (or None for the "
                                  f"threshold), got {num_issues!r}.")
        num_issues = int(num_issues)
    q_used, info = _select(labels, p, q, estimate, min_flip_ratio)
    return _flag_by_rule(labels, p, q_used, info, threshold, num_issues, rule, estimate)


def _flag_by_rule(labels, p, q_used, info, threshold, num_issues, rule, estimate) -> LabelIssues:
    """:func:`_flag`, with ``rule="estimated_count"`` turned into its number of issues."""
    if rule != "estimated_count" or num_issues is not None:
        return _flag(labels, p, q_used, info, threshold, num_issues, rule)
    info = dict(info)
    if "flip_rate_estimate" not in info:
        info["flip_rate_estimate"] = _flip_rate(estimate_q(labels, p, estimate),
                                                p.mean(axis=0, dtype=np.float64))
    count = min(len(labels), max(0, round(len(labels) * info["flip_rate_estimate"])))
    issues = _flag(labels, p, q_used, info, threshold, count, rule)
    issues.info["rule"] = f"the estimated number of wrong labels, {issues.info['rule']}"
    return issues


# --- summary -----------------------------------------------------------------------------------


def health_summary(noisy_labels, pred_probs, q=None, class_names: Sequence[str] | None = None,
                   *, top_pairs: int = 10, estimate: str = "confident_joint",
                   min_flip_ratio: float = MIN_FLIP_RATIO, rule: str = "threshold") -> dict:
    """Per-class noise, the most confused pairs and the share of likely-wrong labels (a dict
    of plain Python values; :func:`health_markdown` renders it).

    Everything uses the q of :func:`select_q` and the expected joint ``counts[given j, true
    i] = sum_{n: noisy_n = j} posterior[n, i]``. Per class ``i``: ``noise_rate = 1 - q[i, i]``
    (share of true-``i`` examples labelled otherwise), ``wrong_label_share`` (share of
    examples labelled ``i`` whose true class differs), ``flagged`` (by
    :func:`find_label_issues` with ``rule``, at its default threshold). Pairs: the largest
    off-diagonal expected counts (true class, given label), with ``q[given, true]``.
    """
    labels, p, q = check_inputs(noisy_labels, pred_probs, q)
    k = p.shape[1]
    if class_names is not None and len(class_names) != k:
        raise AuditInputError(f"class_names: {len(class_names)} names for {k} classes.")
    check_rule(rule)
    names = [str(c) for c in (range(k) if class_names is None else class_names)]
    q_used, info = _select(labels, p, q, estimate, min_flip_ratio)
    joint = posterior_joint(p, q_used, labels)
    issues = _flag_by_rule(labels, p, q_used, info, 0.5, None, rule, estimate)
    n_given = np.bincount(labels, minlength=k)
    flagged = np.bincount(issues.given, minlength=k)
    classes = [{"class": i, "name": names[i], "given": int(n_given[i]),
                "expected_true": float(joint[:, i].sum()),
                "noise_rate": float(1.0 - q_used[i, i]),
                "wrong_label_share": float(1.0 - joint[i, i] / n_given[i]) if n_given[i] else 0.0,
                "flagged": int(flagged[i])} for i in range(k)]
    off = joint * (1.0 - np.eye(k))
    top = np.argsort(-off, axis=None, kind="stable")[:max(0, int(top_pairs))]
    pairs = [{"true": int(i), "given": int(j), "true_name": names[i], "given_name": names[j],
              "expected_count": float(off[j, i]), "q": float(q_used[j, i])}
             for j, i in zip(*np.unravel_index(top, off.shape), strict=True) if off[j, i] > 0]
    return {"num_examples": len(labels), "num_classes": k, **issues.info,
            "expected_wrong_share": float(1.0 - np.trace(joint) / len(labels)),
            "flagged": len(issues), "flagged_share": len(issues) / len(labels),
            "classes": classes, "confused_pairs": pairs, "q": q_used.tolist()}


def health_markdown(summary: dict) -> str:
    """Markdown for a :func:`health_summary` dict: totals, a class table (most wrong labels
    first) and the most confused pairs."""
    s = summary
    shares = "; ".join(f"{who} flips {s[key]:.1%}" for key, who in
                       (("flip_rate_q", "the given q"), ("flip_rate_estimate", "the estimate"))
                       if key in s)
    lines = [f"## Label health: {s['num_examples']} examples, {s['num_classes']} classes", "",
             f"- q used: {describe_q_source(s['q_source'])} ({shares})",
             f"- expected share of wrong labels: {s['expected_wrong_share']:.1%}",
             f"- flagged: {s['flagged']} ({s['flagged_share']:.1%}), {s['rule']}", "",
             "| class | given | expected true | noise rate 1-q[i,i] | wrong labels | flagged |",
             "|---|---:|---:|---:|---:|---:|"]
    for c in sorted(s["classes"], key=lambda c: -c["wrong_label_share"]):
        lines.append(f"| {c['name']} | {c['given']} | {c['expected_true']:.0f} | "
                     f"{c['noise_rate']:.1%} | {c['wrong_label_share']:.1%} | {c['flagged']} |")
    lines += ["", "Most confused (true class -> given label):", "",
              "| true | given | expected count | q[given, true] |", "|---|---|---:|---:|"]
    lines += [f"| {x['true_name']} | {x['given_name']} | {x['expected_count']:.0f} | "
              f"{x['q']:.3f} |" for x in s["confused_pairs"]]
    return "\n".join(lines) + "\n"


# --- scoring against clean labels ----------------------------------------------------------------


def _is_wrong(is_wrong) -> np.ndarray:
    y = np.asarray(is_wrong)
    if y.ndim != 1 or y.dtype != bool:
        raise AuditInputError(f"is_wrong: expected a boolean [N] mask (noisy != clean), got "
                              f"dtype {y.dtype}, shape {y.shape}.")
    return y


def flag_metrics(flagged, is_wrong) -> dict[str, float]:
    """Precision, recall and F1 of a flagged set against the truly wrong labels.

    ``flagged``: a :class:`LabelIssues`, indices into ``[0, N)``, or a boolean ``[N]`` mask;
    ``is_wrong``: boolean ``[N]``, ``noisy_labels != clean_labels``. An empty flagged set has
    precision 1 (nothing claimed wrongly); no wrong labels at all gives recall 1.
    """
    y = _is_wrong(is_wrong)
    f = np.asarray(flagged.indices if isinstance(flagged, LabelIssues) else flagged)
    if f.dtype == bool:
        if f.shape != y.shape:
            raise AuditInputError(f"flagged: mask shape {f.shape} differs from is_wrong {y.shape}.")
        mask = f
    else:
        if f.size and (f.ndim != 1 or not np.issubdtype(f.dtype, np.integer)
                       or f.min() < 0 or f.max() >= y.size):
            raise AuditInputError(f"flagged: expected indices in [0, {y.size}) or a boolean mask.")
        mask = np.zeros(y.shape, bool)
        mask[f.astype(np.int64)] = True
    tp = int(np.sum(mask & y))
    precision = tp / mask.sum() if mask.any() else 1.0
    recall = tp / y.sum() if y.any() else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
            "num_flagged": int(mask.sum()), "num_wrong": int(y.sum())}


def ranking_ap(quality, is_wrong) -> float:
    """Average precision of ranking the truly wrong labels first by ascending ``quality``
    (:func:`label_quality`, or any score where higher = more likely right): sklearn's
    ``average_precision_score(is_wrong, -quality)``."""
    y = _is_wrong(is_wrong)
    s = np.asarray(quality, dtype=np.float64)
    if s.shape != y.shape:
        raise AuditInputError(f"quality: shape {s.shape} differs from is_wrong {y.shape}.")
    if not y.any() or y.all():
        raise AuditInputError("is_wrong: AP needs both right and wrong labels.")
    return float(skm.average_precision_score(y, -s))
