"""``nlnoise-audit`` on real digits runs the tests train: in-sample audits of a learned and a
``none`` run (every output, the run's directory untouched, also with a damaged newest
checkpoint), a cross-fitted audit (two folds, resumed, each example predicted once by the model
that did not train on it), the label files round-tripping into a training run, and one-line
errors for bad input."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from nlnoise import audit, audit_run, resolve, restore, run

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_run import _cfg, _listing  # noqa: E402

OUTPUTS = {"label_issues.csv", "q.npy", "q.png", "health.md", "issues.png", "predictions.npz",
           "relabelled_labels.npy", "pruned_labels.npy", "audit.json"}
LEARNED = ("runlocal,epochs=4,freeze=1", {"dataset.val_size": 200})


def _audit(*args, timeout=900):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.run([sys.executable, "-m", "nlnoise.audit_cli", "--progress=false", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _rows(out):
    with open(out / "label_issues.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("learned") / "run"
    return d, run.train_and_evaluate(_cfg(LEARNED[0], **LEARNED[1]), str(d))


@pytest.fixture(scope="module")
def none_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("none") / "run"
    return d, run.train_and_evaluate(_cfg("runlocal,epochs=3,model='none'"), str(d))


@pytest.fixture(scope="module")
def learned_audit(learned_run, tmp_path_factory):
    d, _ = learned_run
    before = _listing(d)
    out = tmp_path_factory.mktemp("audits") / "learned"
    done = _audit(f"--workdir={d}", f"--out={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert _listing(d) == before, "the audit changed the run's directory"
    return out, done


def test_in_sample_audit_of_a_learned_run_writes_every_output(learned_run, learned_audit):
    d, summary = learned_run
    out, done = learned_audit
    assert {p.name for p in out.iterdir()} == OUTPUTS | {"q_estimate.npy"}
    meta = json.loads((out / "audit.json").read_text())
    ds = restore.load_for_prediction(str(d), "best").ds
    n = len(ds.train)
    assert n == 1437 - 200 and meta["num_examples"] == n
    assert meta["identity"] == {"mode": "in-sample", "run": str(d), "params": "best"}
    assert meta["runs"][0]["step"] == summary["best"]["step"]
    rows = _rows(out)
    assert len(rows) == n and sorted(int(r["index"]) for r in rows) == list(range(n))
    names = {str(i) for i in range(10)}
    assert {r["given_name"] for r in rows} == names and {r["suggested_name"] for r in rows} <= names
    flagged = [r for r in rows if r["is_flagged"] == "1"]
    assert rows[: len(flagged)] == flagged and meta["num_flagged"] == len(flagged) > 0
    for r in rows[:50]:
        i = int(r["index"])
        assert int(r["source_row"]) == ds.train.rows[i]
        assert int(r["given_label"]) == ds.train.labels[i]
    # The learned Q of the best parameters; Q* beside it (synthetic flips).
    best = restore.load_for_prediction(str(d), "best", ds=ds)
    np.testing.assert_allclose(np.load(out / "q.npy"), np.asarray(best.state.q), atol=1e-7)
    assert np.load(out / "q_estimate.npy").shape == (10, 10)
    with np.load(out / "predictions.npz") as z:
        assert z["pred_probs"].shape == z["posterior_probs"].shape == (n, 10)
        np.testing.assert_array_equal(z["noisy_labels"], ds.train.labels)
        np.testing.assert_array_equal(z["clean_labels"], ds.train.clean_labels)
        np.testing.assert_allclose(z["q"], np.load(out / "q.npy"))
    # The benchmark against cleanlab reads it as it is.
    spec = importlib.util.spec_from_file_location("bench_audit", REPO / "bench" /
                                                  "audit_vs_cleanlab.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    side = bench.nlnoise_side(bench.load(out / "predictions.npz"))
    assert side["flagged"]["nlnoise: find_label_issues (default)"]["num_flagged"] == len(flagged)
    health = (out / "health.md").read_text()
    assert "## Label health: 1237 examples" in health and "## Against the clean labels" in health
    m = meta["clean_metrics"]
    assert 0.5 < m["flagged"]["precision"] <= 1 and m["ranking_ap"] > 0.8
    assert f"{len(flagged)} of {n} training labels flagged" in done.stdout
    assert (out / "issues.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("relabelled_labels.npy", "pruned_labels.npy"):
        assert np.load(out / name).shape == (1437,)


def test_in_sample_audit_of_a_none_run_estimates_q(none_run, tmp_path):
    d, _ = none_run
    before = _listing(d)
    done = _audit(f"--workdir={d}", f"--out={tmp_path / 'audit'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert _listing(d) == before
    out = tmp_path / "audit"
    assert {p.name for p in out.iterdir()} == OUTPUTS  # no learned Q, so no q_estimate.npy
    meta = json.loads((out / "audit.json").read_text())
    assert meta["identity"]["params"] == "final" and meta["q_source"] == "estimate:confident_joint"
    with np.load(out / "predictions.npz") as z:
        assert "q" not in z.files and z["pred_probs"].shape == (1437, 10)
        q = audit.estimate_q(z["noisy_labels"], z["pred_probs"])
    np.testing.assert_allclose(np.load(out / "q.npy"), q, atol=1e-6)
    assert len(_rows(out)) == 1437


def test_rule_flag_flags_the_estimated_number(none_run, tmp_path):
    d, _ = none_run
    out = tmp_path / "audit"
    done = _audit(f"--workdir={d}", f"--out={out}", "--rule=estimated_count")
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((out / "audit.json").read_text())
    assert meta["identity"]["rule"] == "estimated_count"
    assert meta["num_flagged"] == round(1437 * meta["flip_rate_estimate"]) > 0
    assert sum(r["is_flagged"] == "1" for r in _rows(out)) == meta["num_flagged"]


def test_damaged_newest_checkpoint_is_skipped_and_the_run_is_not_touched(learned_run, tmp_path):
    src, _ = learned_run
    d = tmp_path / "copy"
    shutil.copytree(src, d)
    steps = sorted(int(p.name) for p in (d / "checkpoints").iterdir() if p.name.isdigit())
    for p in (d / "checkpoints" / str(steps[-1])).rglob("*"):
        if p.is_file() and p.stat().st_size:
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    before = _listing(d)
    done = _audit(f"--workdir={d}", f"--out={tmp_path / 'audit'}", "--params=final")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"step {steps[-1]} is damaged" in done.stderr and "left in place" in done.stderr
    meta = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert meta["runs"][0]["step"] == steps[-2]
    assert _listing(d) == before and not (d / "checkpoints-damaged").exists()
    # Nothing intact at all: a one-line error, and still nothing moved or written.
    for step in steps[:-1]:
        for p in (d / "checkpoints" / str(step)).rglob("*"):
            if p.is_file() and p.stat().st_size:
                p.write_bytes(b"garbage")
    before = _listing(d)
    done = _audit(f"--workdir={d}", f"--out={tmp_path / 'audit2'}", "--params=final")
    assert done.returncode == 2 and "could be read" in done.stderr.splitlines()[-1]
    assert _listing(d) == before and not (tmp_path / "audit2").exists()


def test_cross_fitted_audit_trains_resumes_and_predicts_each_example_once(tmp_path):
    root = tmp_path / "cf"
    config = "--config=configs/digits.py:runlocal,epochs=3,freeze=1"
    args = [config, "--folds=2", f"--workdir={root}", "--config.progress_bar=False",
            "--config.dataset.val_size=150"]
    # Stopped early (max_steps), then the same command without it resumes each fold.
    first = _audit(*args, "--config.max_steps=12")
    assert first.returncode == 0, first.stderr[-3000:]
    done = _audit(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("resumed from the checkpoint at step 12") == 2
    folds = [root / "fold-0", root / "fold-1"]
    summaries = [json.loads((f / "summary.json").read_text()) for f in folds]
    assert all(s["steps"] > 12 for s in summaries)
    # A third invocation trains nothing: the fold runs are read back as they are.
    before = [_listing(f) for f in folds]
    again = _audit(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [_listing(f) for f in folds] == before
    out = root / "audit"
    meta = json.loads((out / "audit.json").read_text())
    assert meta["identity"]["mode"] == "cross-fit" and meta["identity"]["folds"] == 2
    cfg = _cfg("runlocal,epochs=3,freeze=1", **{"dataset.val_size": 150})
    ref = resolve.load_dataset(audit_run.fold_config(cfg, 0, 0))
    with np.load(out / "predictions.npz") as z:
        fold, probs = z["fold"], z["pred_probs"]
        np.testing.assert_array_equal(z["source_row"], ref.train.rows)
    assert probs.shape == (len(ref.train), 10) and set(np.unique(fold)) == {0, 1}
    for i, f in enumerate(folds):
        fds = resolve.load_dataset(audit_run.fold_config(cfg, 2, i))
        mine = ref.train.rows[fold == i]
        # Predicted by the model that left them out, which trained on none of them.
        assert np.isin(mine, fds.fold_out.rows).all() and not np.isin(mine, fds.train.rows).any()
        which = "best" if (f / "best").is_dir() else "final"
        loaded = restore.load_for_prediction(str(f), which, ds=fds)
        own = audit_run.predict_probs(loaded.state, fds.fold_out,
                                      loaded.cfg.dataset, fds, progress=False)
        pos = np.searchsorted(fds.fold_out.rows, mine)
        np.testing.assert_allclose(probs[fold == i], own[pos], atol=1e-6)
    # The Q written is the mean of the folds' learned Qs.
    assert all(m["params"] == "best" for m in meta["runs"])
    qs = [np.asarray(restore.load_for_prediction(str(f), "best").state.q) for f in folds]
    np.testing.assert_allclose(np.load(out / "q.npy"), np.mean(qs, axis=0), atol=1e-6)
    assert len(_rows(out)) == len(ref.train) and "fold" in _rows(out)[0]


def test_label_files_round_trip_into_a_training_run(learned_run, learned_audit, tmp_path):
    d, _ = learned_run
    out, _ = learned_audit
    first = restore.load_for_prediction(str(d), "best").ds
    rows = _rows(out)
    flagged = np.array(sorted(int(r["index"]) for r in rows if r["is_flagged"] == "1"))
    suggested = {int(r["index"]): int(r["suggested_label"]) for r in rows}
    second = {}
    for name in ("relabelled", "pruned"):
        cfg = _cfg(LEARNED[0], **LEARNED[1], **{
            "dataset.train_labels_path": str(out / f"{name}_labels.npy"),
            "corruption.kind": "given", "dataset.clean_labels": "source"})
        second[name] = ds = resolve.load_dataset(cfg)
        # The held-out split is the same examples with the same noisy labels.
        np.testing.assert_array_equal(ds.val.rows, first.val.rows)
        np.testing.assert_array_equal(ds.val.labels, first.val.labels)
        np.testing.assert_array_equal(ds.train_clean_labels,
                                      first.train_clean_labels[np.isin(first.train.rows,
                                                                       ds.train.rows)])
    relabelled, pruned = second["relabelled"], second["pruned"]
    np.testing.assert_array_equal(relabelled.train.rows, first.train.rows)
    expect = first.train.labels.copy()
    expect[flagged] = [suggested[i] for i in flagged]
    np.testing.assert_array_equal(relabelled.train.labels, expect)
    # Pruned: the flagged examples (the -1 entries) are left out, the rest keep their labels.
    keep = np.setdiff1d(np.arange(len(first.train)), flagged)
    np.testing.assert_array_equal(pruned.train.rows, first.train.rows[keep])
    np.testing.assert_array_equal(pruned.train.labels, first.train.labels[keep])
    # And it trains: one epoch through nlnoise-train on the pruned labels.
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    cmd = [sys.executable, "-m", "nlnoise.main", "--config=configs/digits.py:runlocal,epochs=1,"
           "freeze=0", f"--workdir={tmp_path / 'stage2'}", "--config.progress_bar=False",
           "--config.dataset.val_size=200", "--config.noise.model=none",
           f"--config.dataset.train_labels_path={out / 'pruned_labels.npy'}",
           "--config.corruption.kind=given", "--config.dataset.clean_labels=source"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "stage2" / "summary.json").read_text())
    assert summary["steps"] == len(keep) // 64
    assert summary["realized_flip_rate"] < np.mean(first.train.labels != first.train_clean_labels)


@pytest.mark.parametrize(
    ("case", "message"),
    [("no run", r"no run in .*config.json is missing"),
     ("best without best/", r"--params=best: the run in .* kept no best parameters"),
     ("one fold", r"--folds: must be a whole number >= 2"),
     ("out inside the run", r"--out=.*: is inside the run directory"),
     ("out holds the run", r"--out=.*: holds the run directory"),
     ("bad params", r"--params: must be 'best' or 'final'")],
)
def test_bad_input_gets_a_one_line_error(case, message, none_run, tmp_path):
    d, _ = none_run
    args = {"no run": [f"--workdir={tmp_path / 'empty'}", f"--out={tmp_path / 'a'}"],
            "best without best/": [f"--workdir={d}", f"--out={tmp_path / 'a'}", "--params=best"],
            "one fold": ["--config=configs/digits.py:runlocal", "--folds=1",
                         f"--workdir={tmp_path / 'cf'}"],
            "out inside the run": [f"--workdir={d}", f"--out={d / 'audit'}"],
            "out holds the run": [f"--workdir={d}", f"--out={d.parent}"],
            "bad params": [f"--workdir={d}", f"--out={tmp_path / 'a'}", "--params=latest"]}[case]
    before = _listing(d)
    done = _audit(*args, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("nlnoise-audit:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert re.search(message, errors[0]), errors[0]
    assert _listing(d) == before and not list(tmp_path.iterdir())


def test_an_output_another_audit_is_writing_is_refused(none_run, tmp_path):
    """Two audits into one --out: the second stops with the holder's name and writes nothing;
    once the first is done the lock file is gone and the same command writes the audit."""
    from nlnoise import audit_cli

    d, _ = none_run
    out = tmp_path / "a"
    with audit_cli.out_lock(str(out)):
        assert (tmp_path / ".a.lock").exists()
        done = _audit(f"--workdir={d}", f"--out={out}", timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("nlnoise-audit:")]
    assert re.search(rf"--out={out}: another audit is writing it \(pid {os.getpid()} on host",
                     errors[0]), errors
    assert not list(tmp_path.iterdir())
    done = _audit(f"--workdir={d}", f"--out={out}", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["a"] and (out / "audit.json").exists()


def test_rule_flag_offers_exactly_the_library_rules():
    """``--rule`` lists its choices literally (so that ``--help`` needs no scikit-learn import);
    they must stay the rules :func:`nlnoise.audit.find_label_issues` knows."""
    from nlnoise import audit_cli
    assert set(audit_cli.flags.FLAGS["rule"].parser.enum_values) == set(audit.RULES)
