"""nlnoise.run on real data (digits): train_and_evaluate end to end (outputs, resume, SIGKILL,
device counts, loop phases), best_record, and load_for_prediction reading a run read-only."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from nlnoise import checkpoint, noise, q_schedule, resolve, restore, run, workdir
from nlnoise import step as step_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_config import load  # noqa: E402


def _cfg(arg="runlocal", **overrides):
    cfg = load("digits", arg)
    cfg.progress_bar = False
    cfg.mesh.data = 1
    for k, v in overrides.items():
        node = cfg
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return cfg


def _metrics(path):
    return [json.loads(line) for line in open(os.path.join(path, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("run"))
    summary = run.train_and_evaluate(_cfg(), d)
    return d, summary


def test_run_writes_everything(finished_run):
    d, summary = finished_run
    records = _metrics(d)
    assert len(records) == 10  # one evaluation per epoch
    for key in ("step", "epoch", "train_loss", "test_error", "noisy_train_error", "q_rel_l1",
                "q_trace", "q_star_trace"):
        assert key in records[-1], key
    for name in ("summary.json", "config.json", "plots/q.png", "plots/curves.png"):
        assert os.path.exists(os.path.join(d, name)), name
    assert os.listdir(os.path.join(d, "checkpoints"))
    assert any(f.startswith("events") for f in os.listdir(os.path.join(d, "tb")))
    assert summary["final"] == records[-1]
    assert summary["train_images_per_s"] > 0 and summary["wall_time_s"] > 0
    assert summary["config"]["noise"]["model"] == "learned"
    # Learning happened: better than chance on the clean test set despite 50% noise.
    assert records[-1]["test_error"] < 0.3


def test_same_command_on_finished_run_returns_summary_without_training(finished_run):
    d, summary = finished_run
    before = os.path.getmtime(os.path.join(d, "metrics.jsonl"))
    again = run.train_and_evaluate(_cfg(), d)
    assert again["params_sha256"] == summary["params_sha256"]
    assert os.path.getmtime(os.path.join(d, "metrics.jsonl")) == before


def test_different_config_in_same_workdir_is_refused(finished_run):
    d, _ = finished_run
    with pytest.raises(workdir.WorkdirError, match=r"corruption\.level"):
        run.train_and_evaluate(_cfg("runlocal,noise=0.3"), d)


def test_overwrite_archives_instead_of_deleting(tmp_path):
    d = str(tmp_path)
    run.train_and_evaluate(_cfg(**{"num_epochs": 1, "q.freeze_epochs": 0.0}), d)
    run.train_and_evaluate(_cfg(**{"num_epochs": 1, "q.freeze_epochs": 0.0,
                                      "seed": 3}), d, overwrite=True)
    archived = list((tmp_path / "archive").iterdir())
    assert len(archived) == 1 and (archived[0] / "summary.json").exists()
    assert json.load(open(tmp_path / "summary.json"))["config"]["seed"] == 3


def test_resume_after_interruption_is_bit_exact(tmp_path, finished_run):
    """Stop after 5 of 10 epochs (max_steps), then extend to 10: identical results."""
    _, full = finished_run
    d = str(tmp_path)
    part = run.train_and_evaluate(_cfg(**{"max_steps": 5 * 22}), d)
    assert part["steps"] == 110
    resumed = run.train_and_evaluate(_cfg(), d)
    assert resumed["params_sha256"] == full["params_sha256"]
    assert _metrics(d) == _metrics(finished_run[0])


def test_restore_onto_more_devices(tmp_path, finished_run):
    """Checkpointed on 1 device, resumed on 4 (data parallel): same results within tolerance."""
    _, full = finished_run
    d = str(tmp_path)
    run.train_and_evaluate(_cfg(**{"max_steps": 44}), d)
    resumed = run.train_and_evaluate(_cfg(**{"mesh.data": 4}), d)
    np.testing.assert_allclose(resumed["q"], full["q"], atol=2e-3)
    assert abs(resumed["final"]["test_error"] - full["final"]["test_error"]) <= 0.03


@pytest.mark.slow
def test_sigkill_mid_run_then_same_command_gives_identical_result(tmp_path, finished_run):
    _, full = finished_run
    d = tmp_path / "run"
    cmd = [sys.executable, "-m", "nlnoise.main", "--config=configs/digits.py:runlocal",
           f"--workdir={d}", "--config.progress_bar=False", "--config.mesh.data=1",
           "--config.checkpoint_every_steps=10"]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    ckpts = d / "checkpoints"
    while time.time() < deadline:
        steps = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.exists() \
            else []
        if steps and max(steps) >= 100:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (d / "summary.json").exists()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.load(open(d / "summary.json"))
    assert summary["params_sha256"] == full["params_sha256"]
    assert _metrics(str(d)) == _metrics(finished_run[0])


def test_outlier_run_logs_ap_and_uses_eqn9_with_alpha_from_counts(tmp_path):
    """Open-set digits: classes 0-4 inliers, 5-9 outliers with random labels + known ones."""
    cfg = _cfg("runlocal,model='outlier',kind='identity',noise=0.0", **{
        "dataset.inlier_classes": (0, 1, 2, 3, 4), "dataset.num_outliers": 300,
        "dataset.num_known_outliers": 100, "num_epochs": 4, "q.freeze_epochs": 0.0})
    summary = run.train_and_evaluate(cfg, str(tmp_path))
    alpha = 100 / 400
    assert summary["alpha"] == pytest.approx(alpha)
    np.testing.assert_allclose(summary["q"], noise.outlier_eqn9(5, alpha), atol=1e-6)
    final = summary["final"]
    assert 0.0 <= final["outlier_ap"] <= 1.0 and "test_error" in final
    assert (tmp_path / "plots" / "pr.png").exists()
    # Scores separate outliers better than their base rate (a random score's AP).
    assert final["outlier_ap"] > 0.6


def test_summary_confusion_makes_an_adversarial_qstar(finished_run, tmp_path):
    """summary.json's clean-test confusion feeds corruption.kind=adversarial (paper Table 1b)."""
    d, summary = finished_run
    conf = np.asarray(summary["test_confusion"])
    assert conf.shape == (10, 10)
    np.testing.assert_allclose(conf.sum(0), 1.0)
    # Its diagonal is the per-class accuracy: mean of it ~ 1 - test_error (classes ~balanced).
    assert abs(1 - np.diag(conf).mean() - summary["final"]["test_error"]) < 0.05
    cfg = _cfg(**{"corruption.kind": "adversarial", "corruption.level": 0.4, "num_epochs": 1,
                  "q.freeze_epochs": 0, "noise.model": "true",
                  "corruption.confusion_path": os.path.join(d, "summary.json")})
    adv = run.train_and_evaluate(cfg, str(tmp_path / "adv"))
    np.testing.assert_allclose(adv["q_true"], noise.adversarial(conf, 0.4), atol=1e-12)


def test_warm_compilation_cache_changes_nothing_and_cpu_is_split_by_default(tmp_path):
    """The second nlnoise-train run loads its compiled steps from the persistent cache the
    first one filled, and must end bit-identical. With no device flags, the CPU host is split
    into 8 devices (mesh.cpu_devices=0, auto: 8 divides the batch 64 and eval batch 200)."""
    cache = tmp_path / "xla-cache"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",
                                                            "JAX_COMPILATION_CACHE_DIR")}
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    summaries = []
    for which in ("cold", "warm"):
        d = tmp_path / which
        cmd = [sys.executable, "-m", "nlnoise.main", "--config=configs/digits.py:runlocal",
               f"--workdir={d}", "--config.progress_bar=False", "--config.plots=False",
               f"--config.compilation_cache_dir={cache}"]
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        summaries.append(json.load(open(d / "summary.json")))
        if which == "cold":
            assert any(cache.iterdir()), "the first run filled the compilation cache"
    cold, warm = summaries
    assert cold["num_devices"] == warm["num_devices"] == (8 if (os.cpu_count() or 1) > 1 else 1)
    assert cold["params_sha256"] == warm["params_sha256"]
    assert cold["final"] == warm["final"]


def test_true_model_without_flips_uses_the_identity_as_q_star(tmp_path):
    """The level-0 point of a noise sweep: no flips were injected, so Q* is the identity."""
    cfg = _cfg(**{"corruption.level": 0.0, "noise.model": "true", "num_epochs": 1,
                  "q.freeze_epochs": 0})
    summary = run.train_and_evaluate(cfg, str(tmp_path / "run"))
    np.testing.assert_array_equal(summary["q_true"], np.eye(10))
    np.testing.assert_array_equal(summary["q"], np.eye(10))  # fixed Q never moves
    assert summary["final"]["test_error"] < 0.5


def test_plateau_rule_lowers_the_decay_once_the_trace_settles(tmp_path, monkeypatch):
    # With the tolerance at 1000% per epoch and no comparison with the fastest move, every
    # evaluation from the third after the freeze is a plateau, but the plateau lowers the
    # decay once; the rise branch is off (a 1000x rise). The scale is logged (and kept in the
    # optimizer state, so in checkpoints).
    monkeypatch.setattr(q_schedule, "PLATEAU_PEAK_FRACTION", float("inf"))
    cfg = _cfg("runlocal,epochs=6,freeze=1", **{"q.decay_rule": "lower_on_plateau",
                                                "q.plateau_tolerance": 10.0,
                                                "q.decay_tolerance": 1000.0,
                                                "q.decay_factor": 0.5})
    run.train_and_evaluate(cfg, str(tmp_path / "run"))
    scales = [r.get("q_decay_scale") for r in _metrics(str(tmp_path / "run"))]
    assert scales == [None, 1.0, 1.0, 0.5, 0.5, 0.5]


VAL_RUN = ("runlocal,epochs=4,freeze=1", {"dataset.val_size": 300})


@pytest.fixture(scope="module")
def val_run(tmp_path_factory):
    """A finished run with a held-out noisy split, so with best parameters."""
    d = tmp_path_factory.mktemp("val") / "run"
    return d, run.train_and_evaluate(_cfg(VAL_RUN[0], **VAL_RUN[1]), str(d))


def test_held_out_noisy_split_selects_an_epoch_without_clean_labels(val_run):
    d, summary = val_run
    recs = _metrics(str(d))
    losses = [r["val_noisy_loss"] for r in recs]
    assert all(np.isfinite(losses)) and all(0 <= r["val_noisy_error"] <= 1 for r in recs)
    assert summary["best"] == recs[int(np.argmin(losses))]
    # The selected model is kept.
    assert checkpoint.BestParams(summary["best_params_dir"]).restore()[1] == summary["best"]["step"]
    # The held-out examples are not trained on: the training split minus 300, in batches of 64.
    n_train = len(resolve.load_dataset(_cfg()).train)
    assert summary["steps"] == 4 * ((n_train - 300) // 64) < 4 * (n_train // 64)


def test_best_params_are_the_selected_steps_bit_for_bit(tmp_path, monkeypatch):
    # On digits the held-out loss still falls at the last epoch, so the selection is pinned to
    # the first evaluation: the kept parameters must be those of a run stopped there, not the
    # final ones.
    monkeypatch.setattr(run, "best_record", lambda records, key="val_noisy_loss": records[0])
    arg, val = "runlocal,epochs=3,freeze=1", {"dataset.val_size": 300}
    summary = run.train_and_evaluate(_cfg(arg, **val), str(tmp_path / "run"))
    params, step = checkpoint.BestParams(summary["best_params_dir"]).restore()
    assert step == summary["best"]["step"] < summary["steps"]
    stopped = run.train_and_evaluate(_cfg(arg, max_steps=step, **val), str(tmp_path / "stop"))
    digest = step_lib.params_digest(jax.tree.map(np.asarray, params))
    assert digest == stopped["params_sha256"] != summary["params_sha256"]


def test_best_record_is_the_lowest_held_out_noisy_loss():
    recs = [{"epoch": 1, "val_noisy_loss": 2.0}, {"epoch": 2, "val_noisy_loss": 1.5},
            {"epoch": 3, "val_noisy_loss": 1.5}, {"epoch": 4, "val_noisy_loss": 1.7}]
    assert run.best_record(recs)["epoch"] == 2  # the earliest of equals
    assert run.best_record([{"epoch": 1, "test_error": 0.1}]) is None
    assert run.best_record([]) is None


def test_loop_announces_its_phases_to_the_callback(tmp_path):
    phases = []
    cfg = _cfg("runlocal,epochs=2,freeze=1", checkpoint_every_steps=10)
    summary = run.train_and_evaluate(cfg, str(tmp_path / "run"),
                                     on_phase=lambda name, step: phases.append((name, step)))
    total = summary["steps"]
    assert [s for name, s in phases if name == "train"] == list(range(1, total + 1))
    assert [s for name, s in phases if name == "eval"] == [total // 2, total]
    assert [s for name, s in phases if name == "checkpoint-writing"] == [
        *range(10, total, 10), total]
    # At a step that evaluates and checkpoints: the step, then the evaluation, then the save.
    assert phases[-3:] == [("train", total), ("eval", total), ("checkpoint-writing", total)]


def _listing(d: pathlib.Path) -> dict[str, tuple]:
    """Every path under ``d`` (and ``d``) with its kind, size and mtime."""
    return {str(p.relative_to(d)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in [d, *d.rglob("*")]}


def _reevaluate(loaded):
    """The logged evaluation fields of a loaded run's state, on one device."""
    from nlnoise import eval_loop, sharding

    mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
    evaluator = eval_loop.Evaluator(loaded.cfg.dataset, loaded.ds, mesh,
                                    sharding.state_shardings(mesh, loaded.state),
                                    num_classes=loaded.spec.num_classes,
                                    q_true=loaded.spec.q_true)
    return evaluator(loaded.state)


@pytest.fixture(scope="module")
def pinned_run(tmp_path_factory):
    """A finished run whose best parameters are pinned to its first evaluation, so that the
    best and the final parameters differ."""
    d = tmp_path_factory.mktemp("pinned") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run, "best_record", lambda records, key="val_noisy_loss": records[0])
        summary = run.train_and_evaluate(_cfg("runlocal,epochs=3,freeze=1",
                                              **{"dataset.val_size": 300}), str(d))
    return d, summary


def test_load_for_prediction_gives_the_trained_parameters_and_changes_nothing(pinned_run):
    d, summary = pinned_run
    before = _listing(d)
    final = restore.load_for_prediction(str(d), "final")
    assert final.step == summary["steps"] and final.source == str(d / "checkpoints" /
                                                                  str(summary["steps"]))
    assert step_lib.params_digest(step_lib.host_params(final.state)) == summary["params_sha256"]
    np.testing.assert_array_equal(np.asarray(final.state.q, np.float64), summary["q"])
    best = restore.load_for_prediction(str(d), "best", ds=final.ds)
    assert best.step == summary["best"]["step"] < summary["steps"] and best.ds is final.ds
    # Their predictions are those the run logged for the trained state at those steps.
    for loaded, record in ((final, summary["final"]), (best, summary["best"])):
        got = _reevaluate(loaded)
        assert got["test_error"] == record["test_error"]
        assert got["val_noisy_loss"] == pytest.approx(record["val_noisy_loss"], rel=1e-6)
        assert got["q_trace"] == pytest.approx(record["q_trace"], rel=1e-6)
    logits = step_lib.predict(best.state, jax.numpy.zeros((2, *best.ds.image_shape)))
    assert logits.shape == (2, 10)
    assert _listing(d) == before


def test_load_for_prediction_skips_a_damaged_newest_checkpoint_read_only(pinned_run, tmp_path,
                                                                        caplog):
    import shutil

    src, _ = pinned_run
    d = tmp_path / "copy"
    shutil.copytree(src, d)
    steps = sorted(int(p.name) for p in (d / "checkpoints").iterdir() if p.name.isdigit())
    for p in (d / "checkpoints" / str(steps[-1])).rglob("*"):
        if p.is_file() and p.stat().st_size:
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    before = _listing(d)
    with caplog.at_level("WARNING", logger="nlnoise"):
        loaded = restore.load_for_prediction(str(d), "final")
    assert loaded.step == steps[-2]
    assert f"step {steps[-1]} is damaged" in caplog.text and "left in place" in caplog.text
    assert _listing(d) == before
    assert not (d / "checkpoints-damaged").exists()
    # Nothing intact at all: a clear error, and still nothing moved.
    for step in steps[:-1]:
        for p in (d / "checkpoints" / str(step)).rglob("*"):
            if p.is_file() and p.stat().st_size:
                p.write_bytes(b"garbage")
    before = _listing(d)
    with pytest.raises(checkpoint.CheckpointError, match="could be read.*Resume the run"):
        restore.load_for_prediction(str(d), "final", ds=loaded.ds)
    assert _listing(d) == before


def test_load_for_prediction_refuses_what_is_not_there(finished_run, tmp_path):
    d, _ = finished_run
    with pytest.raises(checkpoint.CheckpointError, match="no best parameters"):
        restore.load_for_prediction(d, "best")  # this run has no held-out split
    with pytest.raises(workdir.WorkdirError, match="config.json is missing"):
        restore.load_for_prediction(str(tmp_path), "final")
    with pytest.raises(ValueError, match="params: must be 'best' or 'final'"):
        restore.load_for_prediction(d, "latest")
    assert not any(tmp_path.iterdir())
