"""The audit's files from given predictions, on real digits with synthetic flips and open-set
outliers: the CSV's order and columns, the label files for a second stage, the metrics against
clean labels, and which output directories are refused or replaced."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import nlnoise.data as data
from nlnoise import audit_report
from nlnoise.audit_run import AuditError, AuditInput

INLIERS = (2, 7, 1, 8, 3, 9)  # source ids, in label order: label k is source class INLIERS[k]


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    cfg = {"name": "digits", "cache_dir": str(tmp_path_factory.mktemp("cache")),
           "inlier_classes": INLIERS, "num_outliers": 60, "val_size": 100, "subset_seed": 1}
    return data.load(cfg, noise_kind="symmetric", noise_level=0.3, noise_seed=2)


def _oracle(ds):
    """Predictions that know the clean class (0.9 on it); uniform for outliers."""
    k = ds.num_classes
    p = np.full((len(ds.train), k), 0.1 / (k - 1), np.float32)
    inl = ~ds.train.is_outlier
    p[np.flatnonzero(inl), ds.train.clean_labels[inl]] = 0.9
    p[~inl] = 1.0 / k
    return p


def _input(ds, run="/runs/a", params="final"):
    return AuditInput(
        ds=ds, examples=ds.train, pred_probs=_oracle(ds), q_learned=None, q_true=ds.q_true,
        class_names=list(ds.class_names), fold=None,
        identity={"mode": "in-sample", "run": run, "params": params},
        info={"runs": [{"workdir": run, "params": params, "step": 5, "source": run,
                        "finished": True}], "noise_model": "none"})


def _wrong(ds):
    return ~ds.train.is_outlier & (ds.train.labels != ds.train.clean_labels)


def test_label_vectors_relabel_or_leave_out_flagged_inliers_only(ds):
    source = ds.source_train_labels
    flagged, suggested = _wrong(ds), ds.train.clean_labels.astype(np.int64)
    relabelled, pruned = audit_report.label_vectors(ds, ds.train, flagged, suggested)
    assert relabelled.shape == pruned.shape == source.shape == (1437,)
    inl = ~ds.train.is_outlier
    rows = ds.train.rows[inl]
    # Relabelled to the clean class, mapped back to source ids: the source's own labels.
    np.testing.assert_array_equal(relabelled[rows], source[rows])
    # Pruned: flagged ones left out, the others keep the run's (here correct) label.
    np.testing.assert_array_equal(pruned[ds.train.rows[flagged]], -1)
    kept = ds.train.rows[inl & ~flagged]
    np.testing.assert_array_equal(pruned[kept], np.asarray(INLIERS)[ds.train.labels[inl &
                                                                                   ~flagged]])
    # The held-out split keeps its noisy labels, some of them flipped.
    val_inl = ~ds.val.is_outlier
    for v in (relabelled, pruned):
        np.testing.assert_array_equal(v[ds.val.rows[val_inl]],
                                      np.asarray(INLIERS)[ds.val.labels[val_inl]])
    assert (relabelled[ds.val.rows] != source[ds.val.rows]).any()
    # Outliers and images the run never used keep the source's labels (outside INLIERS).
    out_rows = ds.train.rows[ds.train.is_outlier]
    assert out_rows.size and not np.isin(source[out_rows], INLIERS).any()
    used = np.concatenate([ds.train.rows[inl], ds.val.rows[val_inl]])
    untouched = np.setdiff1d(np.arange(1437), used)
    for v in (relabelled, pruned):
        np.testing.assert_array_equal(v[untouched], source[untouched])


def test_write_audit_files_csv_order_and_clean_metrics(ds, tmp_path):
    inp = _input(ds)
    meta = audit_report.write_audit(str(tmp_path / "audit"), inp)
    out = tmp_path / "audit"
    assert set(meta["files"]) == {p.name for p in out.iterdir()} == {
        "label_issues.csv", "q.npy", "q.png", "health.md", "issues.png", "predictions.npz",
        "relabelled_labels.npy", "pruned_labels.npy", "audit.json"}
    assert [p.name for p in tmp_path.iterdir()] == ["audit"]  # no temporary left behind
    with open(out / "label_issues.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(ds.train) and rows[0].keys() >= {
        "rank", "index", "source_row", "is_flagged", "given_label", "given_name",
        "suggested_label", "suggested_name", "given_posterior", "quality", "is_outlier",
        "clean_label", "clean_name"}
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    quality = np.array([float(r["quality"]) for r in rows])
    assert (np.diff(quality) >= 0).all()
    flags = np.array([int(r["is_flagged"]) for r in rows])
    assert flags.sum() and (flags == (quality < 0.5)).all() and (np.diff(flags) <= 0).all()
    # The oracle's predictions flag exactly the wrong labels and suggest the clean class.
    wrong = _wrong(ds)
    flagged_idx = {int(r["index"]) for r in rows if r["is_flagged"] == "1"}
    assert flagged_idx == set(np.flatnonzero(wrong).tolist())
    for r in rows[:20]:
        n = int(r["index"])
        assert int(r["source_row"]) == ds.train.rows[n]
        assert r["given_name"] == ds.class_names[ds.train.labels[n]]
        assert r["suggested_name"] == r["clean_name"] == ds.class_names[ds.train.clean_labels[n]]
    m = meta["clean_metrics"]
    assert m["flagged"]["precision"] == m["flagged"]["recall"] == 1.0
    assert m["ranking_ap"] == 1.0 and m["num_wrong"] == int(wrong.sum())
    assert "| flagged: recall | 1.000 |" in (out / "health.md").read_text()
    # The label files are label_vectors' of the flagged set and the posterior's argmax.
    relabelled, pruned = audit_report.label_vectors(ds, ds.train, wrong,
                                                    ds.train.clean_labels.astype(np.int64))
    np.testing.assert_array_equal(np.load(out / "relabelled_labels.npy"), relabelled)
    np.testing.assert_array_equal(np.load(out / "pruned_labels.npy"), pruned)
    with np.load(out / "predictions.npz") as z:
        assert z["pred_probs"].shape == z["posterior_probs"].shape == (len(ds.train), 6)
        np.testing.assert_allclose(z["posterior_probs"].sum(1), 1, atol=1e-5)
        # Outliers have no clean label, so the benchmark's clean_labels are left out.
        assert "clean_labels" not in z.files and "q" not in z.files
        assert z["is_outlier"].sum() == ds.train.is_outlier.sum() > 0
    assert np.load(out / "q.npy").shape == (6, 6)


def test_write_audit_with_the_estimated_count_rule(ds, tmp_path):
    inp = _input(ds)
    meta = audit_report.write_audit(str(tmp_path / "audit"), inp, rule="estimated_count")
    assert meta["identity"]["rule"] == "estimated_count"
    assert meta["rule"].startswith("the estimated number of wrong labels")
    n = len(ds.train)
    expected = round(n * meta["flip_rate_estimate"])
    assert meta["num_flagged"] == expected > 0
    with open(tmp_path / "audit" / "label_issues.csv") as f:
        flags = [int(r["is_flagged"]) for r in csv.DictReader(f)]
    assert sum(flags) == expected and flags[:expected] == [1] * expected
    # health.md counts the same flagged set.
    assert f"- flagged: {expected} (" in (tmp_path / "audit" / "health.md").read_text()
    summary = audit_report.audit.health_summary(ds.train.labels, inp.pred_probs,
                                                rule="estimated_count")
    assert summary["flagged"] == expected == sum(c["flagged"] for c in summary["classes"])
    # An audit with the default rule is another audit: refused without overwrite.
    with pytest.raises(AuditError, match="holds another audit"):
        audit_report.write_audit(str(tmp_path / "audit"), inp)
    with pytest.raises(audit_report.audit.AuditInputError, match="^rule: unknown rule 'top'"):
        audit_report.write_audit(str(tmp_path / "other"), inp, rule="top")
    assert not (tmp_path / "other").exists()


def test_output_directories_that_are_refused_or_replaced(ds, tmp_path):
    inp = _input(ds, run=str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    for bad, message in ((tmp_path / "run" / "audit", "is inside the run directory"),
                         (tmp_path, "holds the run directory")):
        with pytest.raises(AuditError, match=message):
            audit_report.write_audit(str(bad), inp, protected=(str(tmp_path / "run"),))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(AuditError, match="not an nlnoise-audit's"):
        audit_report.write_audit(str(tmp_path / "mine"), inp, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    out = tmp_path / "audit"
    audit_report.write_audit(str(out), inp)
    first = json.loads((out / "audit.json").read_text())["written"]
    # The same audit again replaces it; an audit of other parameters needs --overwrite.
    audit_report.write_audit(str(out), inp)
    other = _input(ds, run=str(tmp_path / "run"), params="best")
    with pytest.raises(AuditError, match=r"holds another audit \(in-sample audit of .*run, "
                                         r"params final\); pass --overwrite"):
        audit_report.write_audit(str(out), other)
    assert json.loads((out / "audit.json").read_text())["identity"]["params"] == "final"
    audit_report.write_audit(str(out), other, overwrite=True)
    meta = json.loads((out / "audit.json").read_text())
    assert meta["identity"]["params"] == "best" and meta["written"] >= first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit", "mine", "run"]
