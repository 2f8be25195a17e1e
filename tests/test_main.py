"""The nlnoise-train command: a real tiny run, and clean refusals of bad input."""

import os
import pathlib
import subprocess
import sys

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
