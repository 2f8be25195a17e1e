"""Start an N-process nlnoise run on this machine (CPU, gloo collectives) and wait for it.

    python launch/local.py --num_processes=2 -- --config=configs/fashion_mnist.py:runlocal \
        --workdir=/tmp/run

Each process gets ``NLNOISE_COORDINATOR``, ``NLNOISE_NUM_PROCESSES`` and ``NLNOISE_PROCESS_ID``
(read by ``nlnoise-train``) and ``--xla_force_host_platform_device_count`` devices. Process 0's
output is shown; the others go to ``<workdir>/logs/process_<i>.log``. The exit code is the first
non-zero one of the processes (all are stopped if one fails).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(train_args: list[str], num_processes: int, devices_per_process: int = 1,
           python: str = sys.executable, timeout: float | None = None) -> int:
    """Runs ``python -m nlnoise.main *train_args`` as ``num_processes`` processes."""
    workdir = next((a.split("=", 1)[1] for a in train_args if a.startswith("--workdir=")), None)
    log_dir = os.path.join(workdir or ".", "logs")
    os.makedirs(log_dir, exist_ok=True)
    port = _free_port()
    procs, logs = [], []
    for i in range(num_processes):
        env = dict(os.environ)
        env.update({
            "NLNOISE_COORDINATOR": f"127.0.0.1:{port}",
            "NLNOISE_NUM_PROCESSES": str(num_processes),
            "NLNOISE_PROCESS_ID": str(i),
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                          f"{devices_per_process}").strip(),
        })
        if i == 0:
            out = None
        else:
            out = open(os.path.join(log_dir, f"process_{i}.log"), "w")
            logs.append(out)
        procs.append(subprocess.Popen([python, "-m", "nlnoise.main", *train_args], env=env,
                                      stdout=out, stderr=subprocess.STDOUT if out else None))
    deadline = None if timeout is None else time.time() + timeout
    code = 0
    try:
        while any(p.poll() is None for p in procs):
            failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if failed or (deadline and time.time() > deadline):
                code = failed[0] if failed else 124
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs:
            f.close()
    return code or next((p.returncode for p in procs if p.returncode), 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    train_args = [a for a in args.train_args if a != "--"]
    return launch(train_args, args.num_processes, args.devices_per_process,
                  timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
