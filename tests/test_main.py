"""The nlnoise-train command: a real tiny run, and clean refusals of bad input; runs on your
own data (a folder, an npz, a label file) trained and then audited with ``nlnoise-audit``."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, timeout=600):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.run([sys.executable, "-m", "nlnoise.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_runs_and_reports(tmp_path):
    out = _run("--config=configs/digits.py:runlocal,epochs=2,freeze=1",
               f"--workdir={tmp_path}", "--config.progress_bar=False")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test_error=" in out.stdout and "q_rel_l1=" in out.stdout
    assert (tmp_path / "summary.json").exists() and (tmp_path / "plots" / "q.png").exists()
    assert "held-out" not in out.stdout  # no dataset.val_size, no selection to report


def test_cli_reports_the_selected_epoch_and_where_its_parameters_are(tmp_path):
    out = _run("--config=configs/digits.py:runlocal,epochs=2,freeze=1",
               "--config.dataset.val_size=200", f"--workdir={tmp_path}",
               "--config.progress_bar=False")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "lowest held-out noisy loss at epoch" in out.stdout
    assert f"its parameters: {tmp_path / 'best'}" in out.stdout and (tmp_path / "best").is_dir()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config=configs/digits.py", "--config.corruption.level=1.5"], "corruption.level"),
        (["--config=configs/digits.py", "--config.noise.modle=none"], "noise.modle"),
        (["--config=configs/digits.py:noize=0.3"], "noize"),
        (["--config=configs/digits.py", "--config.dataset.train_size=999999"],
         "dataset.train_size"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, args, message):
    work = tmp_path / "w"
    out = _run(*args, f"--workdir={work}", timeout=300)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert not work.exists() or not any(work.iterdir())


_BAD_FILES = {
    "syntax.py": "def get_config(arg=None)\n    return None\n",
    "name.py": "def get_config(arg=None):\n    return undefined_name\n",
    "noget.py": "x = 1\n",
}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config=configs/nope.py"], "--config=configs/nope.py: no config file at"),
        (["--config={d}/syntax.py"], "syntax.py, line 1: SyntaxError"),
        (["--config={d}/name.py"], "name.py, line 2: NameError: name 'undefined_name'"),
        (["--config={d}/noget.py"], "noget.py has no get_config(arg) function"),
        ([], "--config is required"),
        (["--config=configs/digits.py", "--workdir="], "--workdir is required and must not be"),
        (["--config=configs/digits.py", "--workdir={d}/file"], "file is a file, not a directory"),
        (["--config=configs/digits.py", "--workdir={d}/file/w"],
         "file/w cannot be created or written"),
    ],
    ids=["missing-file", "syntax", "name", "no-get_config", "no-config", "empty-workdir",
         "workdir-is-a-file", "workdir-under-a-file"],
)
def test_config_and_workdir_failures_are_one_line_naming_what_failed(tmp_path, args, message):
    for name, text in _BAD_FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "file").write_text("not a directory")
    args = [a.format(d=tmp_path) for a in args]
    if not any(a.startswith("--workdir") for a in args):
        args.append(f"--workdir={tmp_path / 'w'}")
    out = _run(*args, "--config.progress_bar=False" if len(args) > 1 else "--noverwrite",
               timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr[-2000:]
    assert "free disk space" not in out.stderr
    assert not (tmp_path / "w").exists() and (tmp_path / "file").read_text() == "not a directory"


def test_unwritable_workdir_is_named_not_blamed_on_the_disk(tmp_path):
    if os.geteuid() == 0:  # root writes anywhere a permission allows: use a system directory
        target = pathlib.Path("/sys/nlnoise-test-workdir")
        try:
            target.mkdir()
        except OSError:
            pass
        else:
            target.rmdir()
            pytest.skip("/sys is writable here")
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        target = tmp_path / "ro" / "w"
    out = _run("--config=configs/digits.py", f"--workdir={target}", timeout=300)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be created or written" in lines[0], out.stderr[-2000:]
    assert "disk" not in lines[0]


def test_ctrl_c_and_sigterm_stop_in_one_line_and_the_same_command_resumes(tmp_path):
    import signal
    import time

    d = tmp_path / "w"
    # 60 epochs (1320 steps): with a warm compilation cache runlocal's 10 epochs can end before
    # the signal sent at the first checkpoint arrives, and the run then rightly exits 0. The
    # child gets SIGINT's default disposition, as at a terminal: a suite started in the
    # background by a shell without job control passes SIGINT on as ignored, and Python then
    # rightly leaves it ignored.
    as_at_a_terminal = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                        "os.execv(sys.executable, [sys.executable, '-m', 'nlnoise.main', "
                        "*sys.argv[1:]])")
    args = [sys.executable, "-c", as_at_a_terminal, "--config=configs/digits.py:runlocal",
            f"--workdir={d}", "--config.progress_bar=False", "--config.mesh.data=1",
            "--config.checkpoint_every_steps=10", "--config.num_epochs=60"]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    resumed_past = 0
    for sig, code, said in ((signal.SIGINT, 130, "Ctrl-C (SIGINT)"),
                            (signal.SIGTERM, 143, "SIGTERM")):
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            steps = [int(p.name) for p in (d / "checkpoints").glob("*") if p.name.isdigit()] \
                if (d / "checkpoints").exists() else []
            if steps and max(steps) > resumed_past:
                break
            time.sleep(0.05)
        proc.send_signal(sig)
        err = proc.communicate(timeout=300)[1]
        assert proc.returncode == code, err[-2000:]
        ours = [line for line in err.splitlines() if line.startswith("nlnoise-train:")]
        assert ours == [f"nlnoise-train: stopped by {said}. Completed checkpoints in {d} are "
                        "kept; run the same command to resume."], err[-2000:]
        assert "Traceback" not in err and not (d / ".lock").exists()
        resumed_past = max(int(p.name) for p in (d / "checkpoints").iterdir()
                           if p.name.isdigit())
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from the checkpoint at step {resumed_past}" in done.stderr
    assert json.loads((d / "summary.json").read_text())["segments"] == 3


def test_a_full_disk_at_start_is_one_line_and_leaves_no_temporary_file(tmp_path):
    # Every write past 1 KiB fails (EFBIG), as on a full disk; set in the child before it
    # execs nlnoise-train (an ignored SIGXFSZ and the limit survive exec).
    full_disk = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, "
                 "signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024)); "
                 "os.execv(sys.executable, [sys.executable, '-m', 'nlnoise.main', "
                 "*sys.argv[1:]])")
    d = tmp_path / "w"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-c", full_disk,
                          "--config=configs/digits.py:runlocal", f"--workdir={d}",
                          "--config.progress_bar=False", "--config.compilation_cache_dir="],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "free disk space" in lines[0], out.stderr[-2000:]
    assert f"{d / 'config.json'}: a file-size limit" in lines[0]  # the write that failed
    leftovers = [p.name for p in d.rglob("*") if ".tmp" in p.name] if d.exists() else []
    assert leftovers == [] and not (d / ".lock").exists()


# ---- bring your own data: real digits written as a folder, an npz and label files ----------


def _summary(workdir):
    return json.loads((workdir / "summary.json").read_text())


def _audited(workdir: pathlib.Path) -> tuple[dict, list[dict]]:
    """``nlnoise-audit`` of a finished run, which it must leave exactly as it was: the audit's
    ``audit.json`` and the rows of its ``label_issues.csv``."""
    from test_run import _listing

    before, out = _listing(workdir), workdir.parent / "audit"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    done = subprocess.run([sys.executable, "-m", "nlnoise.audit_cli", "--progress=false",
                           f"--workdir={workdir}", f"--out={out}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _listing(workdir) == before, "the audit changed the run's directory"
    with open(out / "label_issues.csv") as f:
        return json.loads((out / "audit.json").read_text()), list(csv.DictReader(f))


def test_cli_trains_on_a_folder_of_images(tmp_path, make_digits_folder):
    from conftest import DIGIT_NAMES

    make_digits_folder(tmp_path / "digits", per_class=(8, 3))
    out = _run("--config=configs/digits.py:runlocal,epochs=2,freeze=1",
               "--config.dataset.name=folder", f"--config.dataset.data_dir={tmp_path / 'digits'}",
               f"--config.dataset.cache_dir={tmp_path / 'cache'}", "--config.corruption.kind=given",
               f"--workdir={tmp_path / 'w'}", "--config.progress_bar=False")
    assert out.returncode == 0, out.stderr[-3000:]
    s = _summary(tmp_path / "w")
    assert s["class_names"] == sorted(DIGIT_NAMES)  # the folder names reach every output
    # Folder labels are clean unless said otherwise: Q* is the realized identity.
    assert s["q_true"] == np.eye(10).tolist() and s["realized_flip_rate"] == 0.0
    assert "q_rel_l1=" in out.stdout
    meta, rows = _audited(tmp_path / "w")
    assert meta["class_names"] == sorted(DIGIT_NAMES) and len(rows) == meta["num_examples"]
    assert {r["given_name"] for r in rows} == set(DIGIT_NAMES)
    assert meta["clean_metrics"]["num_wrong"] == 0  # the folder's labels are the reference


def test_cli_trains_on_an_npz_with_noisy_labels_of_known_clean_ones(tmp_path, make_digits_npz,
                                                                    digits_arrays):
    from nlnoise import noise

    _, labels = digits_arrays
    noisy = noise.corrupt_labels(labels[:1437], noise.pair_flip(10, 0.3), seed=2)
    np.save(tmp_path / "noisy.npy", noisy)
    out = _run("--config=configs/digits.py:runlocal,epochs=2,freeze=1",
               "--config.dataset.name=arrays",
               f"--config.dataset.data_dir={make_digits_npz(tmp_path / 'd.npz')}",
               f"--config.dataset.train_labels_path={tmp_path / 'noisy.npy'}",
               "--config.dataset.clean_labels=source", "--config.corruption.kind=given",
               f"--workdir={tmp_path / 'w'}", "--config.progress_bar=False")
    assert out.returncode == 0, out.stderr[-3000:]
    s = _summary(tmp_path / "w")
    np.testing.assert_allclose(s["q_true"], noise.realized_transition(labels[:1437], noisy, 10))
    assert s["realized_flip_rate"] == pytest.approx(np.mean(noisy != labels[:1437]))
    assert "q_rel_l1" in s["final"] and s["class_names"][3] == "three"
    meta, rows = _audited(tmp_path / "w")
    wrong = [r for r in rows if r["given_label"] != r["clean_label"]]
    assert meta["clean_metrics"]["num_wrong"] == len(wrong) > 0
    assert meta["clean_metrics"]["realized_noise_rate"] == pytest.approx(len(wrong) / len(rows))
    assert {r["clean_name"] for r in wrong} <= set(s["class_names"])


def test_cli_without_clean_labels_leaves_clean_metrics_out(tmp_path, digits_arrays):
    _, labels = digits_arrays
    (tmp_path / "labels.csv").write_text(
        "label\n" + "\n".join(str((v + 1) % 10) for v in labels[:1437]) + "\n")
    out = _run("--config=configs/digits.py:runlocal,epochs=2,freeze=1",
               f"--config.dataset.train_labels_path={tmp_path / 'labels.csv'}",
               "--config.corruption.kind=given", f"--workdir={tmp_path / 'w'}",
               "--config.progress_bar=False")
    assert out.returncode == 0, out.stderr[-3000:]
    s = _summary(tmp_path / "w")
    assert s["realized_flip_rate"] is None and s["q_true"] is None
    assert "q_rel_l1" not in s["final"] and "q_trace" in s["final"]
    assert "q_rel_l1" not in out.stdout
    meta, rows = _audited(tmp_path / "w")  # no clean labels: those metrics are absent
    assert meta["clean_metrics"] is None and "clean_label" not in rows[0]
    assert meta["num_flagged"] == sum(r["is_flagged"] == "1" for r in rows)
    assert "precision" not in (tmp_path / "audit" / "health.md").read_text()


@pytest.mark.parametrize("bad", ["no_folder", "short_labels"])
def test_bad_data_is_refused_naming_the_file(tmp_path, bad):
    if bad == "no_folder":
        args = ["--config.dataset.name=folder", f"--config.dataset.data_dir={tmp_path / 'nope'}"]
        named = f"dataset.data_dir: no directory {tmp_path / 'nope'}"
    else:
        (tmp_path / "l.csv").write_text("1\n2\n")
        args = [f"--config.dataset.train_labels_path={tmp_path / 'l.csv'}"]
        named = f"dataset.train_labels_path ({tmp_path / 'l.csv'}): holds 2 labels"
    work = tmp_path / "w"
    out = _run("--config=configs/digits.py:runlocal", *args, "--config.corruption.kind=given",
               f"--config.dataset.cache_dir={tmp_path / 'cache'}", f"--workdir={work}",
               timeout=300)
    assert out.returncode != 0 and named in out.stderr and "Traceback" not in out.stderr
    assert not work.exists() or not any(work.iterdir())
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
