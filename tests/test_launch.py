"""Launch scripts: launch/local.py (a real 2-process run matches a 1-process run), the dry runs
of launch/tpu_pod.sh and bench/accelerator.sh, the latter's refusal without a GPU, and
bench/step_trace.py on a real run."""

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


def _stub(bin_dir: pathlib.Path, name: str, body: str) -> pathlib.Path:
    """An executable ``name`` in ``bin_dir`` (a stand-in for an external tool, not our code)."""
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def _path_with(bin_dir: pathlib.Path) -> str:
    # The stubs first, then the system's tools; nothing from a GPU or cloud SDK install.
    return f"{bin_dir}:/usr/bin:/bin"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_tpu_pod_dry_run_prints_every_workers_commands_and_calls_nothing(tmp_path, how):
    called = tmp_path / "gcloud-called"
    _stub(tmp_path, "gcloud", f"touch {called}")
    env = {**os.environ, "PATH": _path_with(tmp_path), "TPU": "pod-v4-32", "ZONE": "us-central2-b",
           "BUCKET": "gs://nl-bucket", "REPO_URL": "https://example.org/nlnoise.git"}
    args = ["configs/imagenet_alexnet.py:noise=0.5,model=learned", "run7",
            "--config.q.weight_decay=0.05"]
    if how == "flag":
        args.insert(2, "--dry_run")
    else:
        env["DRY_RUN"] = "1"
    proc = subprocess.run(["bash", "launch/tpu_pod.sh", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not called.exists()  # gcloud was never run
    out = proc.stdout
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.strip()
    for text in ("gcloud compute tpus tpu-vm ssh pod-v4-32 --zone=us-central2-b --worker=all",
                 "git clone 'https://example.org/nlnoise.git' nlnoise",
                 f"git checkout -q '{commit}'",
                 "--config='configs/imagenet_alexnet.py:noise=0.5,model=learned'",
                 "--workdir='gs://nl-bucket/runs/run7'",
                 "--config.dataset.data_dir='gs://nl-bucket/tfds'",
                 "--config.q.weight_decay=0.05", "nlnoise-train --distributed"):
        assert text in out, text
    assert "--dry_run" not in out.split("--- script sent to every worker ---")[1]


def test_tpu_pod_refuses_without_a_repository_url(tmp_path):
    env = {**os.environ, "PATH": _path_with(tmp_path), "TPU": "t", "ZONE": "z",
           "BUCKET": "gs://b", "GIT_DIR": str(tmp_path / "no-repo")}
    env.pop("REPO_URL", None)
    proc = subprocess.run(["bash", "launch/tpu_pod.sh", "configs/digits.py", "r", "--dry_run"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "REPO_URL" in proc.stderr


def test_accelerator_dry_run_prints_the_plan_on_any_machine(tmp_path):
    env = {**os.environ, "PATH": _path_with(tmp_path), "PYTHON": sys.executable,
           "NLNOISE_ACCELERATOR_VENV": str(tmp_path / "venvs")}
    proc = subprocess.run(["bash", "bench/accelerator.sh", "--dry_run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for text in ("nvidia-smi -L", "jax\\[cuda12\\]==0.10.2", "torch==2.13.0",
                 f"{tmp_path / 'venvs'}/jax", f"{tmp_path / 'venvs'}/torch",
                 "bench/accelerator.py", "matmul peak", "layers18pct, batch 128",
                 "AlexNet, batch 128, K=1000", "MFU", "no Q / learned Q", "PyTorch",
                 "Q update at K=21841"):
        assert text in out, text
    assert not (tmp_path / "venvs").exists()  # nothing installed


@pytest.mark.parametrize(("stub", "message"), [
    (None, "nvidia-smi not found"),
    ("exit 9", "nvidia-smi lists no GPU"),  # a driver without a device
    ("echo 'No devices were found'", "nvidia-smi lists no GPU"),
])
def test_accelerator_stops_at_once_without_a_gpu(tmp_path, stub, message):
    if stub is not None:
        _stub(tmp_path, "nvidia-smi", stub)
    elif any(pathlib.Path(d, "nvidia-smi").exists() for d in ("/usr/bin", "/bin")):
        pytest.skip("this machine has nvidia-smi: the run would install and measure")
    env = {**os.environ, "PATH": _path_with(tmp_path), "PYTHON": sys.executable,
           "NLNOISE_ACCELERATOR_VENV": str(tmp_path / "venvs")}
    proc = subprocess.run(["bash", "bench/accelerator.sh"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert not (tmp_path / "venvs").exists()  # it stopped before installing anything


def test_step_trace_records_every_step_of_a_real_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, "bench/step_trace.py", *ARGS, "--config.mesh.cpu_devices=-1",
         "--config.plots=False", f"--workdir={tmp_path / 'run'}", "--trace_every=1"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    lines = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith("step ")]
    steps = [int(ln[1]) for ln in lines]
    assert steps == list(range(1, summary["steps"] + 1))
    norms = [float(ln[5]) for ln in lines]
    assert all(np.isfinite(norms)) and max(norms) > 0
    head = f"step_trace: steps={len(steps)} max_grad_norm={max(norms):.3g} at step "
    assert head in proc.stdout
    peak = int(proc.stdout.split(head)[1].split(";")[0])
    assert norms[peak - 1] == max(norms)
