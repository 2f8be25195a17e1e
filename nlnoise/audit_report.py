"""The files of a label audit (``nlnoise-audit``), from an :class:`~nlnoise.audit_run.AuditInput`.

:func:`write_audit` writes into one directory, atomically (a temporary sibling renamed into
place, so a killed audit leaves no half-written directory):

- ``label_issues.csv``: every audited example, one row each, most likely wrong first (rows are
  ranked by ``quality``; the flagged ones, ``is_flagged == 1``, come first). Columns:
  ``rank`` (1 = most likely wrong), ``index`` (position in the run's training split),
  ``source_row`` (row in the source's training split: the file or image to look at; for outliers
  from ``dataset.outlier_source``, that dataset's row), ``is_flagged``, ``given_label``,
  ``given_name``, ``suggested_label``, ``suggested_name`` (the posterior's argmax; it can be the
  given label when the posterior is spread out), ``given_posterior`` (``p(true = given | x,
  given)``), ``suggested_posterior``, ``quality`` (the score the rows are ranked by:
  :func:`nlnoise.audit.label_quality`, whose default is the posterior of the given label, so it
  equals ``given_posterior``), ``self_confidence`` (the network's own probability of the given
  label, without Q), then ``is_outlier`` (runs with outliers), ``fold`` (cross-fitting: the
  fold whose model predicted it) and ``clean_label``, ``clean_name`` (when clean labels are
  known; -1 and "" where not). Flagged means ``given_posterior < 0.5``
  (:func:`nlnoise.audit.find_label_issues`' default rule; ``rule="estimated_count"`` flags the
  estimated number of wrong labels instead, lowest ``quality`` first).
- ``q.npy`` (``[K, K]``, ``q[j, i] = p(noisy=j | true=i)``, columns sum to 1): the learned Q for
  ``noise.model=learned`` runs (the mean of the folds' when cross-fitted), else the estimate
  from the predictions (:func:`nlnoise.audit.estimate_q`); ``q_estimate.npy`` beside a learned
  one; ``q.png``: both beside Q* when the run knows it.
- ``health.md``: :func:`nlnoise.audit.health_markdown`, and where clean labels are known, the
  flagged set's precision/recall/F1, the ranking's AP and Q's relative L1 to the realized
  transition.
- ``issues.png``: the :data:`GRID` top-ranked flagged examples with given and suggested labels.
- ``predictions.npz``: ``bench/audit_vs_cleanlab.py``'s input (``pred_probs``,
  ``noisy_labels``, ``clean_labels`` when every audited example's is known, ``q`` when learned,
  ``posterior_probs``) plus ``index``, ``source_row``, ``is_outlier``, ``class_names`` and
  ``fold``.
- ``relabelled_labels.npy``, ``pruned_labels.npy``: :func:`label_vectors`, for a second
  training stage through ``dataset.train_labels_path``.
- ``audit.json``: what was audited (its identity), the totals, the metrics and the second
  stage's config keys.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import shutil
import time
from typing import Any

import numpy as np

from nlnoise import audit, estimate, noise, plots
from nlnoise.audit_run import AuditError, AuditInput
from nlnoise.data import ExampleSource, NoisyDataset
from nlnoise.data.labels import realized_q

GRID = (8, 6)  # columns x rows of issues.png
THRESHOLD = 0.5  # flagged: the posterior of the given label is below this


@dataclasses.dataclass
class Scores:
    """Per-example results of the audit (``[N]`` arrays unless noted), with the q they use."""

    q_used: np.ndarray  # [K, K]
    q_info: dict[str, Any]  # audit.select_q's info
    q_estimate: np.ndarray  # [K, K], estimate_q of the predictions
    posterior: np.ndarray  # [N, K] float32, p(true | x, given)
    quality: np.ndarray
    flagged: np.ndarray  # bool
    suggested: np.ndarray
    order: np.ndarray  # positions, most likely wrong first


def score(inp: AuditInput, rule: str = "threshold") -> Scores:
    """Scores ``inp``'s predictions with :mod:`nlnoise.audit`'s defaults (the learned Q unless
    :func:`~nlnoise.audit.select_q` finds it too close to the identity, else the estimate);
    ``rule``: which examples are flagged (:func:`~nlnoise.audit.find_label_issues`)."""
    labels, p = inp.examples.labels.astype(np.int64), inp.pred_probs
    q_used, info = audit.select_q(labels, p, inp.q_learned)
    post = np.empty(p.shape, np.float32)
    for s in range(0, len(labels), estimate.CHUNK):
        block = slice(s, s + estimate.CHUNK)
        post[block] = audit.posterior(p[block], q_used, labels[block])
    quality = audit.label_quality(labels, p, inp.q_learned)
    issues = audit.find_label_issues(labels, p, inp.q_learned, threshold=THRESHOLD, rule=rule)
    flagged = np.zeros(len(labels), bool)
    flagged[issues.indices] = True
    info = {**info, "rule": issues.info["rule"]}
    return Scores(q_used=q_used, q_info=info, q_estimate=audit.estimate_q(labels, p),
                  posterior=post, quality=quality, flagged=flagged,
                  suggested=post.argmax(axis=1), order=np.argsort(quality, kind="stable"))


def label_vectors(ds: NoisyDataset, examples: ExampleSource, flagged: np.ndarray,
                  suggested: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(relabelled, pruned)``: int64 label vectors over the source's training split, in its
    order, for ``dataset.train_labels_path`` in a second training stage.

    Both hold the run's own (noisy) label for every inlier it had (training, held-out and
    left-out fold examples), with source class ids (``ds.source_classes``), and the label the
    run started from elsewhere (its label file's, else the source's; so the held-out split keeps
    its noisy labels and images the run never used keep theirs). Then each flagged inlier of
    ``examples`` (positions in ``ds.train``-like order) is relabelled to its ``suggested`` label
    (-1 when that is the outlier class) or set to -1 (pruned: left out of training). Outlier
    examples are not changed: their rows belong to the outlier pool.
    """
    out = np.asarray(ds.source_train_labels, np.int64).copy()
    classes = np.asarray(ds.source_classes, np.int64)
    for split in (ds.train, ds.val, ds.fold_out):
        if split is not None:
            inl = ~split.is_outlier & (split.provider_id == 0)
            out[split.rows[inl]] = classes[split.labels[inl]]
    fix = np.asarray(flagged, bool) & ~examples.is_outlier & (examples.provider_id == 0)
    rows, sug = examples.rows[fix], np.asarray(suggested)[fix]
    relabelled, pruned = out.copy(), out.copy()
    k = len(classes)
    relabelled[rows] = np.where(sug < k, classes[np.minimum(sug, k - 1)], -1)
    pruned[rows] = -1
    return relabelled, pruned


def clean_metrics(inp: AuditInput, sc: Scores) -> dict[str, Any] | None:
    """Scores against the clean labels where they are known (None when none is): realized
    noise rate, precision/recall/F1 of the flagged set, AP of the ranking, and the relative L1
    of each Q to the realized transition ``q[j, i]`` = share of clean class ``i`` labelled
    ``j``. Outliers and examples without a clean label are left out."""
    clean = inp.examples.clean_labels.astype(np.int64)
    known = clean >= 0
    if not inp.ds.has_clean_labels or not known.any():
        return None
    labels = inp.examples.labels.astype(np.int64)
    wrong = labels[known] != clean[known]
    realized = realized_q(clean, labels, len(inp.class_names))
    qs = {"q used by the scores": sc.q_used, "estimate from the predictions": sc.q_estimate}
    if inp.q_learned is not None:
        qs["learned Q"] = inp.q_learned
    out: dict[str, Any] = {
        "num_known": int(known.sum()), "num_wrong": int(wrong.sum()),
        "realized_noise_rate": float(wrong.mean()),
        "flagged": audit.flag_metrics(sc.flagged[known], wrong),
        "ranking_ap": (audit.ranking_ap(sc.quality[known], wrong) if 0 < wrong.sum() < wrong.size
                       else None),
        "q_rel_l1": {name: noise.relative_l1(q, realized) for name, q in qs.items()}}
    if inp.q_true is not None and np.shape(inp.q_true) == realized.shape:
        out["q_rel_l1_to_q_star"] = {name: noise.relative_l1(q, inp.q_true)
                                     for name, q in qs.items()}
    return out


# --- the output directory ------------------------------------------------------------------


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def check_out_dir(out: str, identity: dict[str, Any], *, protected: tuple[str, ...] = (),
                  overwrite: bool = False) -> str:
    """The absolute output directory, after refusing what must not be written: a directory
    inside one of ``protected`` (the runs an audit reads) or holding one, a non-empty directory
    that is not an audit, and one holding an audit with another identity (unless
    ``overwrite``). A directory holding this same audit is replaced."""
    path = os.path.realpath(os.path.expanduser(out))
    for p in protected:
        run = os.path.realpath(p)
        if _within(path, run) or _within(run, path):
            raise AuditError(
                f"--out={out}: {'is inside' if _within(path, run) else 'holds'} the run "
                f"directory {run}; an audit never writes into a run. Choose a directory outside "
                f"it, e.g. --out={run.rstrip(os.sep)}-audit.")
    if not os.path.lexists(path):
        return path
    if not os.path.isdir(path):
        raise AuditError(f"--out={out}: exists and is not a directory; choose another --out.")
    if not os.listdir(path):
        return path
    meta = os.path.join(path, "audit.json")
    if not os.path.isfile(meta):
        raise AuditError(f"--out={out}: holds files that are not an nlnoise-audit's; choose a "
                         "new or empty directory.")
    try:
        with open(meta) as f:
            old = json.load(f).get("identity")
    except (OSError, ValueError, AttributeError):
        old = None
    if old != _jsonable(identity) and not overwrite:
        what = (f"{old.get('mode')} audit of {old.get('run')}, params {old.get('params')}"
                if isinstance(old, dict) else "an unreadable audit")
        raise AuditError(f"--out={out}: holds another audit ({what}); pass --overwrite to "
                         "replace it, or choose another --out.")
    return path


@contextlib.contextmanager
def _atomic_dir(path: str):
    """Yields a temporary sibling of ``path``; on success it replaces ``path`` (whose old
    contents are removed only once the new directory is in place)."""
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.lexists(path):
        old = os.path.join(parent, f".{name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- writers -------------------------------------------------------------------------------


def _write_csv(path: str, inp: AuditInput, sc: Scores) -> list[str]:
    ex, names, o = inp.examples, inp.class_names, sc.order
    labels = ex.labels.astype(np.int64)
    n = np.arange(len(labels))
    cols: dict[str, np.ndarray] = {
        "rank": np.arange(1, len(o) + 1), "index": o, "source_row": ex.rows[o],
        "is_flagged": sc.flagged[o].astype(int), "given_label": labels[o],
        "given_name": np.asarray(names, object)[labels[o]], "suggested_label": sc.suggested[o],
        "suggested_name": np.asarray(names, object)[sc.suggested[o]],
        "given_posterior": sc.posterior[o, labels[o]],
        "suggested_posterior": sc.posterior[o, sc.suggested[o]], "quality": sc.quality[o],
        "self_confidence": inp.pred_probs[n, labels][o]}
    if ex.is_outlier.any():
        cols["is_outlier"] = ex.is_outlier[o].astype(int)
    if inp.fold is not None:
        cols["fold"] = inp.fold[o]
    if inp.ds.has_clean_labels:
        clean = ex.clean_labels.astype(np.int64)[o]
        cols["clean_label"] = clean
        cols["clean_name"] = np.where(clean >= 0, np.asarray(names, object)[np.maximum(clean, 0)],
                                      "")
    floats = {"given_posterior", "suggested_posterior", "quality", "self_confidence"}
    text = [np.char.mod("%.6g", v) if k in floats else v.astype(str) for k, v in cols.items()]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(zip(*text, strict=True))
    return list(cols)


def _issues_png(path: str, inp: AuditInput, sc: Scores) -> str:
    cols, rows = GRID
    top = sc.order[: min(int(sc.flagged.sum()), cols * rows)]
    images = inp.examples.get_batch(top)["image"] if top.size else np.zeros((0, 1, 1, 1),
                                                                              np.uint8)
    labels, names = inp.examples.labels, inp.class_names
    captions = [f"#{r + 1} row {inp.examples.rows[i]}\n{names[labels[i]]} -> "
                f"{names[sc.suggested[i]]}  {sc.quality[i]:.2f}" for r, i in enumerate(top)]
    return plots.label_issue_grid(
        images, captions, path, cols=cols,
        title=f"{int(sc.flagged.sum())} of {len(labels)} labels flagged; top {len(top)}: given "
              "-> suggested label, posterior of the given label")


def _q_png(path: str, inp: AuditInput, sc: Scores) -> str:
    panels = [] if inp.q_true is None else [("Q* (true noise)", inp.q_true)]
    if inp.q_learned is not None:
        folds = "" if inp.fold is None else f", mean of {int(inp.fold.max()) + 1} folds"
        panels.append((f"learned Q{folds}", inp.q_learned))
    panels.append(("Q estimated from predictions", sc.q_estimate))
    return plots.matrix_panels(panels, path, class_names=inp.class_names,
                               title="the scores use: "
                               + audit.describe_q_source(sc.q_info["q_source"], "the run's Q"))


def _write_npz(path: str, inp: AuditInput, sc: Scores) -> None:
    ex = inp.examples
    arrays: dict[str, np.ndarray] = {
        "pred_probs": inp.pred_probs.astype(np.float32),
        "noisy_labels": ex.labels.astype(np.int64), "posterior_probs": sc.posterior,
        "index": np.arange(len(ex)), "source_row": ex.rows, "is_outlier": ex.is_outlier,
        "class_names": np.asarray(inp.class_names)}
    if inp.ds.has_clean_labels and (ex.clean_labels >= 0).all():
        arrays["clean_labels"] = ex.clean_labels.astype(np.int64)
    if inp.q_learned is not None:
        arrays["q"] = inp.q_learned
    if inp.fold is not None:
        arrays["fold"] = inp.fold
    np.savez(path, **arrays)


def health_report(inp: AuditInput, meta: dict[str, Any], health: str, out: str) -> str:
    """``health.md``: what was audited, :func:`nlnoise.audit.health_markdown`'s ``health``,
    the scores against clean labels where known, and the second stage's command."""
    ident, runs = inp.identity, meta.get("runs") or []
    how = ", ".join(f"{os.path.basename(r['workdir'])}: {r['params']} parameters, step "
                    f"{r['step']}{'' if r['finished'] else ' (run not finished)'}" for r in runs)
    if ident["mode"] == "cross-fit":
        what = (f"out-of-fold predictions of {ident['folds']} models trained in {ident['run']} "
                f"({how})")
    else:
        what = f"in-sample predictions of the run in {ident['run']} ({how})"
    lines = ["# Label audit", "", f"- {what}",
             f"- {meta['num_examples']} training examples audited, {len(inp.class_names)} "
             f"classes; noise model of the run: {meta.get('noise_model')}", "", health]
    m = meta.get("clean_metrics")
    if m is None:
        lines += ["No clean label is known (dataset.clean_labels), so the audit cannot be "
                  "scored against one.", ""]
    else:
        f = m["flagged"]
        ap = "n/a" if m["ranking_ap"] is None else f"{m['ranking_ap']:.3f}"
        lines += ["## Against the clean labels", "",
                  f"{m['num_known']} examples with a known clean label, {m['num_wrong']} of them "
                  f"wrongly labelled (realized noise rate {m['realized_noise_rate']:.1%}).", "",
                  "| measure | value |", "|---|---:|",
                  f"| flagged: precision | {f['precision']:.3f} |",
                  f"| flagged: recall | {f['recall']:.3f} |", f"| flagged: F1 | {f['f1']:.3f} |",
                  f"| ranking: average precision | {ap} |"]
        lines += [f"| {name}: relative L1 to the realized transition | {v:.3f} |"
                  for name, v in m["q_rel_l1"].items()]
        lines.append("")
    stage = meta["second_stage"]
    lines += ["## Second stage", "",
              "Train again on the corrected labels, with the run's config and these keys "
              "(keep its seed, dataset.train_size, dataset.val_size and the outlier keys, so "
              "the same examples are trained on and held out):", "", "```",
              f"--config.dataset.train_labels_path={out}/relabelled_labels.npy   "
              "# or pruned_labels.npy (flagged labels left out)",
              f"--config.corruption.kind={stage['corruption.kind']} "
              f"--config.dataset.clean_labels={stage['dataset.clean_labels']}", "```", ""]
    return "\n".join(lines)


def _second_stage(inp: AuditInput) -> dict[str, Any]:
    return {"dataset.train_labels_path": "relabelled_labels.npy or pruned_labels.npy",
            "corruption.kind": "given",
            "dataset.clean_labels": "source" if inp.ds.has_clean_labels else "none"}


def identity_with_rule(identity: dict[str, Any], rule: str) -> dict[str, Any]:
    """An audit's identity with its flagging rule; the default rule adds nothing, so that
    audits written before the rule was a choice still match."""
    return identity if rule == "threshold" else {**identity, "rule": rule}


def write_audit(out: str, inp: AuditInput, *, protected: tuple[str, ...] = (),
                overwrite: bool = False, rule: str = "threshold") -> dict[str, Any]:
    """Writes the audit's files (module docstring) into ``out``; returns ``audit.json``'s
    contents. ``protected``: the run directories read (``out`` may not be in them or hold
    them); see :func:`check_out_dir` for when an existing ``out`` is replaced. ``rule``: which
    examples are flagged (:func:`nlnoise.audit.find_label_issues`)."""
    audit.check_rule(rule)
    inp = dataclasses.replace(inp, identity=identity_with_rule(inp.identity, rule))
    path = check_out_dir(out, inp.identity, protected=protected, overwrite=overwrite)
    sc = score(inp, rule)
    metrics = clean_metrics(inp, sc)
    summary = audit.health_summary(inp.examples.labels, inp.pred_probs, inp.q_learned,
                                   inp.class_names, rule=rule)
    meta: dict[str, Any] = {
        "identity": inp.identity, "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runs": inp.info.get("runs"), "noise_model": inp.info.get("noise_model"),
        "num_examples": len(inp.examples), "num_flagged": int(sc.flagged.sum()),
        "flagged_share": float(sc.flagged.mean()) if len(inp.examples) else 0.0,
        "class_names": inp.class_names, **sc.q_info, "clean_metrics": metrics,
        "second_stage": _second_stage(inp)}
    with _atomic_dir(path) as tmp:
        meta["csv_columns"] = _write_csv(os.path.join(tmp, "label_issues.csv"), inp, sc)
        learned = inp.q_learned is not None
        np.save(os.path.join(tmp, "q.npy"), inp.q_learned if learned else sc.q_estimate)
        if learned:
            np.save(os.path.join(tmp, "q_estimate.npy"), sc.q_estimate)
        _q_png(os.path.join(tmp, "q.png"), inp, sc)
        _issues_png(os.path.join(tmp, "issues.png"), inp, sc)
        _write_npz(os.path.join(tmp, "predictions.npz"), inp, sc)
        relabelled, pruned = label_vectors(inp.ds, inp.examples, sc.flagged, sc.suggested)
        np.save(os.path.join(tmp, "relabelled_labels.npy"), relabelled)
        np.save(os.path.join(tmp, "pruned_labels.npy"), pruned)
        with open(os.path.join(tmp, "health.md"), "w") as f:
            f.write(health_report(inp, meta, audit.health_markdown(summary), path))
        meta["files"] = sorted([*os.listdir(tmp), "audit.json"])
        with open(os.path.join(tmp, "audit.json"), "w") as f:
            json.dump(_jsonable(meta), f, indent=1)
    return _jsonable(meta)
