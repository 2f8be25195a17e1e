"""launch/local.py: a real 2-process run (gloo on localhost) matches a 1-process run."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--config=configs/digits.py:runlocal", "--config.progress_bar=False"]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    single = subprocess.run([sys.executable, "-m", "nlnoise.main", *ARGS, f"--workdir={one}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = subprocess.run([sys.executable, "launch/local.py", "--num_processes=2",
                            "--timeout=900", "--", *ARGS, f"--workdir={two}"],
                           cwd=REPO, capture_output=True, text=True, timeout=960)
    assert multi.returncode == 0, multi.stdout[-2000:] + multi.stderr[-3000:]
    s1 = json.load(open(one / "summary.json"))
    s2 = json.load(open(two / "summary.json"))
    assert s2["num_processes"] == 2 and s1["num_processes"] == 1
    assert s1["num_devices"] == s2["num_devices"] == 2
    np.testing.assert_allclose(s2["q"], s1["q"], atol=1e-4)
    for key in ("test_error", "noisy_train_error", "train_loss", "q_rel_l1"):
        assert s2["final"][key] == pytest.approx(s1["final"][key], abs=1e-3), key
    # Each process saved its own data-iterator position in the shared checkpoint.
    latest = max(int(p.name) for p in (two / "checkpoints").iterdir() if p.name.isdigit())
    names = {p.name for p in (two / "checkpoints" / str(latest) / "data").iterdir()}
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= names
