"""Preemption soak: SIGKILL a training run at random moments, resume it, compare bit for bit.

    python bench/soak_preemption.py --kills=12 --config=configs/digits.py --workdir=/tmp/soak

The run is ``bench/traced_train.py`` (``nlnoise-train`` with a phase callback), so it announces
on stderr when it is training, evaluating or writing an asynchronous checkpoint. Each kill waits
for one of these phases (cycling mid-step, mid-evaluation, mid-checkpoint-write), then for a
random delay, then sends SIGKILL; the same command is started again. After the planned kills the
run is left to finish. Its final parameters (sha256 over every array), Q and metrics.jsonl are
compared with an uninterrupted run of the same config on the same device count.

Prints a JSON report (kills made, kills survived, equality) and writes it to
``bench/results/soak_preemption.json``. ``tests/test_reliability.py`` runs a short version.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
PHASES = ("train", "eval", "checkpoint-writing")


def _cmd(config: str, workdir: pathlib.Path, extra: list[str]) -> list[str]:
    return [sys.executable, str(REPO / "bench" / "traced_train.py"), f"--config={config}",
            f"--workdir={workdir}", "--config.progress_bar=False", *extra]


def _env(devices: int) -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def _run_to_end(cmd, env, timeout) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"run failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return out


def _kill_at(cmd, env, phase: str, delay: float, timeout: float, target: int = 0) -> dict:
    """Starts the run; SIGKILLs it ``delay`` s after it announces ``phase`` at a step past
    ``target`` and past the step it resumed from, so every kill lands on new work and the
    kills spread over the whole run (a kill while the first checkpoint is written would
    otherwise send every restart back to step 0)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    start, resumed_from, seen, min_step = time.time(), None, None, target
    try:
        for line in proc.stderr:
            if "resumed from the checkpoint at step" in line:
                resumed_from = int(line.rsplit("step", 1)[1].strip(" .\n"))
                min_step = max(target, resumed_from + 5)
            if line.startswith("nlnoise-phase:"):
                name, step = line.split()[1], int(line.split("step=")[1])
                if name == phase and step > min_step:
                    seen = step
                    time.sleep(delay)
                    break
            if time.time() - start > timeout:
                break
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    killed = seen is not None and proc.returncode == -signal.SIGKILL
    outcome = "killed" if killed else ("finished" if proc.returncode == 0 else "crashed")
    return {"phase": phase, "target_step": target, "at_step": seen, "delay_s": round(delay, 3),
            "outcome": outcome,
            "returncode": proc.returncode, "resumed_from": resumed_from}


def _metrics(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(x) for x in open(workdir / "metrics.jsonl")]


def soak(config: str, workdir: pathlib.Path, kills: int, *, seed: int = 0, devices: int = 1,
         extra: list[str] | None = None, timeout: float = 900.0) -> dict:
    """Runs the reference and the killed run; returns the report."""
    extra = list(extra or [])
    rng = random.Random(seed)
    ref_dir, run_dir = workdir / "reference", workdir / "killed"
    for d in (ref_dir, run_dir):
        shutil.rmtree(d, ignore_errors=True)
    env = _env(devices)
    t0 = time.time()
    _run_to_end(_cmd(config, ref_dir, extra), env, timeout)
    ref_time = time.time() - t0
    reference = json.load(open(ref_dir / "summary.json"))
    total = reference["steps"]

    events = []
    for i in range(kills):
        phase = PHASES[i % len(PHASES)]
        delay = rng.uniform(0.0, 0.25) if phase != "checkpoint-writing" else 0.0
        target = (i + 1) * total // (kills + 1)
        ev = _kill_at(_cmd(config, run_dir, extra), env, phase, delay, timeout, target)
        events.append(ev)
        if ev["outcome"] != "killed":
            break
    last_ok, final_resumed = True, None
    try:
        out = _run_to_end(_cmd(config, run_dir, extra), env, timeout)
        for line in out.stderr.splitlines():
            if "resumed from the checkpoint at step" in line:
                final_resumed = int(line.rsplit("step", 1)[1].strip(" ."))
    except RuntimeError:
        last_ok = False
    final = json.load(open(run_dir / "summary.json")) if last_ok else {}
    made = sum(e["outcome"] == "killed" for e in events)
    # A kill is survived when the next start of the same command carried on (it was alive
    # when we killed it in turn, or it finished) instead of failing.
    successors_ok = [e["outcome"] in ("killed", "finished") for e in events[1:]] + [last_ok]
    survived = sum(ok for e, ok in zip(events, successors_ok, strict=True)
                   if e["outcome"] == "killed")
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "config": config,
        "devices": devices,
        "steps": total,
        "kills_made": made,
        "kills_survived": survived,
        # Starts after a kill that carried on from a checkpoint (not from step 0).
        "restarts_resumed_from_checkpoint": sum(e["resumed_from"] is not None for e in events)
        + (final_resumed is not None),
        "final_start_resumed_from": final_resumed,
        "params_equal": final.get("params_sha256") == reference["params_sha256"],
        "q_equal": final.get("q") == reference["q"],
        "metrics_equal": last_ok and _metrics(run_dir) == _metrics(ref_dir),
        "reference_wall_s": round(ref_time, 1),
        "events": events,
    }
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/digits.py")
    p.add_argument("--workdir", default="/tmp/nlnoise-soak")
    p.add_argument("--kills", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("extra", nargs="*", help="more --config.key=value overrides")
    a = p.parse_args()
    report = soak(a.config, pathlib.Path(a.workdir), a.kills, seed=a.seed, devices=a.devices,
                  extra=a.extra)
    out = REPO / "bench" / "results" / "soak_preemption.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "events"}, indent=1))
    ok = report["params_equal"] and report["metrics_equal"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
