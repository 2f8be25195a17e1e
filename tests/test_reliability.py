"""Fault injection: preemption, damaged checkpoints, non-finite values, bad input, full disk,
and who owns a workdir (one process; its own config; refusal instead of a silent restart).

Fast versions of the reliability guarantees of docs/reliability.md; ``bench/soak_preemption.py``
is the long soak. Runs use the digits config (seconds each). The command-line side (one-line
errors, Ctrl-C) is in tests/test_main.py, the sweep's in tests/test_sweep.py.
"""

import gzip
import json
import os
import pathlib
import resource
import shutil
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from nlnoise import checkpoint, config, data, lock, noise, resolve, run, workdir
from nlnoise.step import NonFiniteError

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from test_config import load  # noqa: E402


def _cfg(arg="runlocal", **overrides):
    cfg = load("digits", arg)
    cfg.progress_bar = False
    cfg.mesh.data = 1
    for key, value in overrides.items():
        config.set_path(cfg, key, value)
    return cfg


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    return d, run.train_and_evaluate(_cfg(), str(d))


def _metrics(d):
    return [json.loads(x) for x in open(pathlib.Path(d) / "metrics.jsonl")]


# 1. Preemption ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_mid_step_mid_eval_mid_checkpoint_then_identical_result(tmp_path):
    import soak_preemption

    report = soak_preemption.soak("configs/digits.py:runlocal", tmp_path, kills=3, seed=1,
                                  extra=["--config.checkpoint_every_steps=10",
                                         "--config.mesh.data=1"])
    phases = [e["phase"] for e in report["events"]]
    assert phases == ["train", "eval", "checkpoint-writing"]
    assert report["kills_made"] == report["kills_survived"] == 3
    # Kills spread over the run: every restart carried on from a checkpoint, none from step 0.
    assert report["restarts_resumed_from_checkpoint"] == 3
    assert [e["at_step"] for e in report["events"]] == sorted(e["at_step"]
                                                             for e in report["events"])
    assert report["params_equal"] and report["q_equal"] and report["metrics_equal"]


# 2. Damaged checkpoints -------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["truncate", "half-written"])
def test_damaged_latest_checkpoint_falls_back_and_result_is_unchanged(tmp_path, reference, how,
                                                                      caplog):
    ref_dir, ref = reference
    run.train_and_evaluate(_cfg(max_steps=66), str(tmp_path))
    ckpts = tmp_path / "checkpoints"
    assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())[-1] == 66
    files = [p for p in (ckpts / "66").rglob("*") if p.is_file() and p.stat().st_size]
    for p in files:
        if how == "truncate":
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        else:
            p.unlink()
    with caplog.at_level("WARNING", logger="nlnoise"):
        out = run.train_and_evaluate(_cfg(), str(tmp_path))
    assert "step 66 is damaged" in caplog.text and "Falling back" in caplog.text
    assert "resumed from step 44, not the newest checkpoint (66)" in caplog.text
    # The damaged one was moved aside (kept), not deleted, and not reused.
    assert [p.name.split("-")[0] for p in (tmp_path / "checkpoints-damaged").iterdir()] == ["66"]
    assert out["params_sha256"] == ref["params_sha256"]
    assert _metrics(tmp_path) == _metrics(ref_dir)


# 3. Non-finite values ---------------------------------------------------------------------------

def test_poisoned_batch_stops_the_run_naming_step_and_keeps_last_good_checkpoint(
        tmp_path, monkeypatch):
    real = data.make_global_batch
    calls = {"train": 0}

    def poisoned(local, sharding):
        if "image" in local and "mask" not in local:  # a training batch
            calls["train"] += 1
            if calls["train"] == 31:  # the batch of step 30 (steps count from 0)
                local = {**local, "image": np.full_like(local["image"], np.nan)}
        return real(local, sharding)

    monkeypatch.setattr(data, "make_global_batch", poisoned)
    with pytest.raises(NonFiniteError, match=r"non-finite .*at step 30") as e:
        run.train_and_evaluate(_cfg(checkpoint_every_steps=10), str(tmp_path))
    assert "loss" in str(e.value) or "gradients" in str(e.value)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] == 30  # saved before the bad step ran; nothing after it
    assert not (tmp_path / "summary.json").exists()


# 4. Bad configuration and input -----------------------------------------------------------------

def _idx(path: pathlib.Path, images: np.ndarray, labels: np.ndarray, prefix: str) -> None:
    with gzip.open(path / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, *images.shape) + images.tobytes())
    with gzip.open(path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, labels.size) + labels.tobytes())


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    labels_dir = d / "labels"
    labels_dir.mkdir()
    imgs = rng.integers(0, 255, (40, 28, 28), dtype=np.uint8)
    _idx(labels_dir, imgs, np.full(40, 12, np.uint8), "train")  # labels outside [0, 10)
    _idx(labels_dir, imgs, np.zeros(40, np.uint8), "t10k")
    trunc = d / "truncated"
    trunc.mkdir()
    _idx(trunc, imgs, np.zeros(40, np.uint8), "train")
    _idx(trunc, imgs, np.zeros(40, np.uint8), "t10k")
    raw = gzip.decompress((trunc / "train-images-idx3-ubyte.gz").read_bytes())
    with gzip.open(trunc / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[: len(raw) // 2])
    np.save(d / "rows.npy", np.full((10, 10), 0.1) + np.eye(10) * 0.5)  # columns sum to 1.5
    np.save(d / "small.npy", noise.symmetric(3, 0.2))
    return d


BAD_INPUTS = [
    ("corruption.level", 1.2, "corruption.level"),
    ("corruption.level", -0.5, "corruption.level"),
    ("noise.alpha", 1.5, "noise.alpha"),
    ("noise.alpha_scale", 0.0, "noise.alpha_scale"),
    ("noise.model", "magic", "noise.model"),
    ("corruption.kind", "gaussian", "corruption.kind"),
    ("corruption.kind", "custom", "corruption.matrix_path"),
    ("q.regularizer", "nuclear", "q.regularizer"),
    ("q.init", "random", "q.init"),
    ("q.freeze_epochs", 99.0, "q.freeze_epochs"),
    ("q.freeze_epochs", 10.0, "q.freeze_epochs"),  # == num_epochs: Q would never be learned
    ("batch_size", 63, "batch_size"),  # not divisible by the 4 data devices
    ("learning_rate", -0.1, "learning_rate"),
    ("momentum", 1.5, "momentum"),
    ("num_epochs", 0, "num_epochs"),
    ("model.name", "vgg", "model.name"),
    ("mesh.model", 3, "mesh"),
    ("mesh.data", 64, "mesh"),
    ("keep_checkpoints", 0, "keep_checkpoints"),
    ("dataset.name", "mnist", "dataset.name"),
    ("dataset.train_size", 50_000, "dataset.train_size"),
    ("dataset.num_outliers", 10, "dataset.num_outliers"),
    ("dataset.data_dir", "/nonexistent/fashion", "apt-get install dataset-fashion-mnist"),
    ("file:labels", None, "labels"),
    ("file:truncated", None, "truncated"),
    ("file:rows.npy", None, "column 0 sums to 1.5"),
    ("file:small.npy", None, "shape"),
]


@pytest.mark.parametrize(("field", "value", "named"), BAD_INPUTS,
                         ids=[f"{f}={v}" for f, v, _ in BAD_INPUTS])
def test_bad_input_is_rejected_before_training_and_leaves_no_output(tmp_path, bad_files, field,
                                                                    value, named):
    cfg = _cfg("runlocal", **{"mesh.data": 4})
    if field.startswith("file:"):
        name = field[5:]
        if name.endswith(".npy"):
            config.set_path(cfg, "corruption.kind", "custom")
            config.set_path(cfg, "corruption.matrix_path", str(bad_files / name))
        else:
            config.set_path(cfg, "dataset.name", "fashion_mnist")
            config.set_path(cfg, "dataset.data_dir", str(bad_files / name))
    elif field == "dataset.data_dir":
        config.set_path(cfg, "dataset.name", "fashion_mnist")
        config.set_path(cfg, field, value)
    else:
        try:
            config.set_path(cfg, field, value)
        except config.ConfigError as e:  # a wrong type is refused already here
            assert named in str(e)
            return
    work = tmp_path / "work"
    with pytest.raises((config.ConfigError, data.DataError, noise.NoiseMatrixError)) as e:
        run.train_and_evaluate(cfg, str(work))
    assert named in str(e.value), str(e.value)
    assert not work.exists() or not any(work.iterdir())


def test_wrong_type_and_unknown_key_are_refused():
    cfg = _cfg()
    with pytest.raises(config.ConfigError, match="batch_size"):
        config.set_path(cfg, "batch_size", "many")
    with pytest.raises(config.ConfigError, match="noise.levl"):
        config.set_path(cfg, "noise.levl", 0.3)


# 5. Workdir safety (see also test_run) ---------------------------------------------------

def test_different_config_is_refused_and_finished_results_untouched(tmp_path, reference):
    ref_dir, _ = reference
    d = tmp_path / "w"
    shutil.copytree(ref_dir, d)
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    with pytest.raises(workdir.WorkdirError, match="different config"):
        run.train_and_evaluate(_cfg("runlocal,noise=0.2"), str(d))
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before


# 6. Disk full -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_disk_full_mid_run_gives_clear_error_and_previous_checkpoint_resumes(tmp_path,
                                                                            reference):
    _, ref = reference
    d = tmp_path / "run"
    cmd = [sys.executable, "-m", "nlnoise.main", "--config=configs/digits.py:runlocal",
           f"--workdir={d}", "--config.progress_bar=False", "--config.mesh.data=1"]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        done = [p for p in (d / "checkpoints").glob("*") if p.name.isdigit()] \
            if (d / "checkpoints").exists() else []
        if done:  # a finalised checkpoint
            break
        time.sleep(0.02)
    # From now on the disk is full for this process: every write past 64 bytes fails.
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (64, 64))
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (proc.returncode, err[-1500:])
    # One line says what failed: no orbax, tensorstore or TensorBoard tracebacks before it
    # (the other lines are the run's own evaluation log lines).
    ours = [line for line in err.splitlines() if line.startswith("nlnoise-train: error:")]
    assert len(ours) == 1 and ("resume" in ours[0] or "checkpoint" in ours[0]), err[-3000:]
    assert "Traceback" not in err and not [
        line for line in err.splitlines() if line.strip() and line not in ours
        and not (line[0] in "IW" and "eval step=" in line)], err[-3000:]
    assert not (d / "summary.json").exists() and not (d / ".lock").exists()
    assert not [p for p in d.rglob("*.tmp-*")]  # no temporary file left by a failed write
    intact = checkpoint.CheckpointStore(str(d / "checkpoints")).steps()
    assert intact and intact[0] >= 22
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.load(open(d / "summary.json"))["params_sha256"] == ref["params_sha256"]


# 7. Ownership, config identity, refusal instead of a silent restart (issue 17) --------------

def _files(d: pathlib.Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in d.rglob("*") if p.is_file()}


def test_checkpoints_of_another_config_are_never_resumed(tmp_path):
    d = tmp_path / "w"
    run.train_and_evaluate(_cfg(max_steps=44), str(d))
    (d / "summary.json").unlink()  # as if killed after its last checkpoint
    (d / "config.json").unlink()
    other = _cfg("runlocal,noise=0.3", max_steps=44)
    before = _files(d)
    with pytest.raises(workdir.WorkdirError, match=r"checkpoints, metrics.jsonl but no "
                       r"config.json.*Restore its config.json, or pass --overwrite"):
        run.train_and_evaluate(other, str(d))
    assert _files(d) == before
    # A config.json that names another run than the checkpoints: the checkpoints say whose
    # they are, and the run is refused before anything is written.
    workdir.RunDir(str(d)).start(other, resolve.load_dataset(other).label_fingerprint)
    before = _files(d)
    with pytest.raises(checkpoint.ForeignCheckpointError, match="step 44 .*another run "
                       r"\(its config and training labels fingerprints differ"):
        run.train_and_evaluate(other, str(d))
    assert _files(d) == before
    # --overwrite moves that run aside and starts afresh.
    out = run.train_and_evaluate(other, str(d), overwrite=True)
    assert out["steps"] == 44 and out["config"]["corruption"]["level"] == 0.3
    (archived,) = (d / "archive").iterdir()
    assert sorted(p.name for p in (archived / "checkpoints").iterdir() if p.name.isdigit()) \
        == ["22", "44"]
    assert all(r["q_star_trace"] == _metrics(d)[0]["q_star_trace"] for r in _metrics(d))


def test_a_busy_workdir_is_refused_naming_its_process_and_a_killed_one_never_blocks(tmp_path):
    d = tmp_path / "w"
    cmd = [sys.executable, "-m", "nlnoise.main", "--config=configs/digits.py:runlocal",
           f"--workdir={d}", "--config.progress_bar=False", "--config.mesh.data=1",
           "--config.num_epochs=40", "--config.checkpoint_every_steps=20"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = _cfg(num_epochs=40, checkpoint_every_steps=20)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not [
                p for p in (d / "checkpoints").glob("*") if p.name.isdigit()]:
            assert proc.poll() is None
            time.sleep(0.05)
        with pytest.raises(lock.WorkdirBusyError, match=rf"in use by pid {proc.pid} on host "
                           r".*\(since .*--break_lock"):
            run.train_and_evaluate(cfg, str(d))
    finally:
        proc.kill()  # SIGKILL: its lock file stays, its flock dies with it
        proc.wait()
    assert (d / lock.LOCK_NAME).exists()
    done = max(int(p.name) for p in (d / "checkpoints").iterdir() if p.name.isdigit())
    out = run.train_and_evaluate(_cfg(num_epochs=40, checkpoint_every_steps=20,
                                      max_steps=done + 20), str(d))
    assert out["steps"] == done + 20 and not (d / lock.LOCK_NAME).exists()
    # The wall time is the whole run's: the killed start's seconds count too.
    segments = json.load(open(d / "segments.json"))
    assert out["segments"] == len(segments) == 2 and segments[0]["to_step"] >= 20
    assert out["wall_time_s"] == pytest.approx(sum(s["wall_s"] for s in segments))
    assert out["wall_time_s"] > segments[1]["wall_s"]


def test_no_intact_checkpoint_stays_an_error_on_every_retry(tmp_path):
    d = tmp_path / "w"
    run.train_and_evaluate(_cfg(max_steps=44), str(d))
    for step in ("22", "44"):
        for p in (d / "checkpoints" / step).rglob("*"):
            if p.is_file() and p.stat().st_size:
                p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    before = _files(d)
    for _ in range(2):  # a scheduler's automatic retry of the same command
        with pytest.raises(checkpoint.NoIntactCheckpointError, match="none of the checkpoints "
                           r"\[22, 44\].*--overwrite"):
            run.train_and_evaluate(_cfg(), str(d))
        assert _files(d) == before
    out = run.train_and_evaluate(_cfg(max_steps=22), str(d), overwrite=True)
    assert out["steps"] == 22 and len(_metrics(d)) == 1
    (archived,) = (d / "archive").iterdir()
    assert (archived / "checkpoints" / "44").is_dir()


def test_a_run_past_the_shorter_length_asked_is_refused_not_misreported(tmp_path, reference):
    ref_dir, _ = reference
    d = tmp_path / "w"
    shutil.copytree(ref_dir, d)
    before = _files(d)
    with pytest.raises(workdir.WorkdirError, match=r"at step 220 \(epoch 10\), past the 110 "
                       r"steps .*num_epochs >= 10"):
        run.train_and_evaluate(_cfg(num_epochs=5), str(d))
    assert _files(d) == before  # config.json still says 10 epochs, summary.json 220 steps


def test_an_empty_workdir_is_refused_and_nothing_lands_in_the_current_directory(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(workdir.WorkdirError, match="--workdir: empty"):
        run.train_and_evaluate(_cfg(), "")
    assert not any(tmp_path.iterdir())


def test_a_damaged_summary_is_named_and_overwrite_gets_past_it(tmp_path):
    d = tmp_path / "w"
    cfg = _cfg(max_steps=22)
    run.train_and_evaluate(cfg, str(d))
    (d / "summary.json").write_text('{"final": ')
    with pytest.raises(workdir.WorkdirError, match="summary.json is damaged.*--overwrite"):
        run.train_and_evaluate(cfg, str(d))
    assert run.train_and_evaluate(cfg, str(d), overwrite=True)["steps"] == 22
    assert json.load(open(d / "summary.json"))["steps"] == 22
