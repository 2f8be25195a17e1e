"""Predictions for an audit from a real digits run: the batched softmax, in-sample reading
(read-only) and the fold configs of cross-fitting. The cross-fitted audit end to end is in
tests/test_audit_cli.py."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

from nlnoise import audit_run, restore, run, workdir

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_run import _cfg, _listing


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny") / "run"
    return d, run.train_and_evaluate(_cfg("runlocal,epochs=2,freeze=1"), str(d))


def test_predictions_are_the_evaluated_softmax_in_split_order(tiny_run):
    d, summary = tiny_run
    loaded = restore.load_for_prediction(str(d), "final")
    ds, state = loaded.ds, loaded.state
    probs = audit_run.predict_probs(state, ds.test, loaded.cfg.dataset,
                                    ds, progress=False)
    assert probs.shape == (len(ds.test), 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # The argmax is what the run evaluated: its logged clean test error.
    assert 1.0 - np.mean(probs.argmax(1) == ds.test.labels) == summary["final"]["test_error"]
    # Batching (with a padded last batch) does not change an example's prediction.
    small = audit_run.predict_probs(state, ds.test, loaded.cfg.dataset,
                                    ds, batch_size=7, progress=False)
    np.testing.assert_allclose(small, probs, atol=1e-6)


def test_in_sample_reads_the_final_parameters_and_leaves_the_run_alone(tiny_run, tmp_path):
    d, summary = tiny_run
    before = _listing(d)
    inp = audit_run.in_sample(str(d), progress=False)
    assert inp.identity == {"mode": "in-sample", "run": str(d), "params": "final"}
    assert inp.examples is inp.ds.train and inp.fold is None
    assert inp.pred_probs.shape == (len(inp.ds.train), 10)
    np.testing.assert_array_equal(inp.q_learned, np.asarray(summary["q"]))
    np.testing.assert_array_equal(inp.q_true, np.asarray(summary["q_true"]))
    assert inp.class_names == [str(i) for i in range(10)]
    assert inp.info["runs"][0]["step"] == summary["steps"]
    assert _listing(d) == before
    with pytest.raises(audit_run.AuditError, match=r"--params=best: the run in .* kept no best "
                                                    r"parameters .*use --params=final"):
        audit_run.in_sample(str(d), "best")
    with pytest.raises(workdir.WorkdirError, match="no run in .*config.json is missing"):
        audit_run.in_sample(str(tmp_path))
    assert _listing(d) == before and not any(tmp_path.iterdir())


def test_cross_fitting_never_writes_into_a_run(tiny_run):
    d, _ = tiny_run
    before = _listing(d)
    with pytest.raises(audit_run.AuditError, match=r"holds an nlnoise-train run; the folds"):
        audit_run.cross_fit(_cfg(), 2, str(d), progress=False)
    assert _listing(d) == before


def test_fold_configs_and_the_identity_of_a_cross_fitted_audit():
    cfg = _cfg()
    fold = audit_run.fold_config(cfg, 3, 2)
    assert (fold.dataset.num_folds, fold.dataset.fold) == (3, 2)
    assert (cfg.dataset.num_folds, cfg.dataset.fold) == (0, 0)  # the original is untouched
    assert audit_run.fold_dirs("/r", 2) == ["/r/fold-0", "/r/fold-1"]
    for bad in (1, 0, True, 2.5, None):
        with pytest.raises(audit_run.AuditError, match=r"--folds: must be a whole number >= 2"):
            audit_run.check_folds(cfg, bad)
    with pytest.raises(audit_run.AuditError, match=r"dataset.num_folds=3 disagrees with "
                                                    r"--folds=2"):
        audit_run.check_folds(audit_run.fold_config(cfg, 3, 0), 2)
    ident = audit_run.cross_fit_identity(cfg, 2, "/r", None)
    shown = _cfg(progress_bar=True, plots=False)  # how a run is shown is not what it is
    assert audit_run.cross_fit_identity(shown, 2, "/r", None) == ident
    assert audit_run.cross_fit_identity(_cfg(seed=1), 2, "/r", None) != ident
    assert audit_run.cross_fit_identity(cfg, 3, "/r", None) != ident
