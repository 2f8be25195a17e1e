"""Shared pieces of the benchmarks: A/B-alternated timing, workers, the real nlnoise step.

Every comparison in ``bench/`` is a ratio of two (or more) variants timed *side by side*: the
variants run in alternation, repetition after repetition, after a warm-up that is not timed,
and each variant's figure is the median over at least 5 repetitions. Ratios are the median of
the per-repetition ratios, so a change of load on this shared machine hits both sides of each
ratio alike.

A variant is a ``runner``: ``runner(n)`` runs ``n`` steps, waits for them and returns the
elapsed seconds. Variants that need another Python or another device count (PyTorch,
simulated devices) run in a :class:`Worker` subprocess that speaks a one-line protocol.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"

Runner = Callable[[int], float]

# Pythons tried, in order, for the PyTorch reference when the current one has no torch.
TORCH_PYTHONS = ("/tmp/torchvenv/bin/python", "/tmp/nlm/tv/bin/python")


# ---------------------------------------------------------------------------------------------
# Timing.


def alternate(runners: Mapping[str, Runner], *, steps: int | Mapping[str, int], repeats: int,
              warmup: int = 1, pause: float = 0.0) -> dict[str, list[float]]:
    """Seconds per step of every runner, measured in alternation.

    Each repetition calls every runner once (``steps[name]`` steps each), rotating the order
    so no variant always follows the same one. ``warmup`` repetitions are run first and
    dropped. ``pause`` seconds of sleep before each call let other thread pools go idle.
    """
    names = list(runners)
    per = {n: (steps if isinstance(steps, int) else steps[n]) for n in names}
    out: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(warmup + repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            if pause:
                time.sleep(pause)
            seconds = runners[name](per[name]) / per[name]
            if rep >= warmup:
                out[name].append(seconds)
    return out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def paired_ratio(times: Mapping[str, list[float]], num: str, den: str) -> float:
    """Median over repetitions of ``times[num][i] / times[den][i]``."""
    return median([a / b for a, b in zip(times[num], times[den], strict=True)])


def summarize(times: Mapping[str, list[float]]) -> dict[str, dict[str, float]]:
    """Median, min and max seconds per step for each variant."""
    return {n: {"median_s": median(t), "min_s": min(t), "max_s": max(t), "n": len(t)}
            for n, t in times.items()}


# ---------------------------------------------------------------------------------------------
# Worker subprocesses.


class Worker:
    """A subprocess that warms up, prints one JSON line, then answers ``run N`` with seconds.

    Used as a runner: ``worker(n)`` runs ``n`` steps in the subprocess.
    """

    def __init__(self, argv: list[str], env: Mapping[str, str] | None = None,
                 timeout: float = 900.0) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=REPO,
                                     env={**os.environ, **(env or {})})
        self.timeout = timeout
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"worker {self.argv} exited:\n{err[-3000:]}")
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)

    def __call__(self, n: int) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"run {n}\n")
        self.proc.stdin.flush()
        return float(self._read()["seconds"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(runner: Runner, info: Mapping[str, Any]) -> None:
    """The worker side of :class:`Worker`: announce ``info``, then serve ``run N`` lines."""
    print(json.dumps({"ready": True, **info}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        print(json.dumps({"seconds": runner(int(cmd[1]))}), flush=True)


def find_torch_python(explicit: str | None = None) -> str | None:
    """A Python with torch: ``explicit``, ``$NLNOISE_TORCH_PYTHON``, this one, or a known venv."""
    candidates = [explicit, os.environ.get("NLNOISE_TORCH_PYTHON"), sys.executable,
                  *TORCH_PYTHONS]
    for py in candidates:
        if not py or not Path(py).exists():
            continue
        ok = subprocess.run([py, "-c", "import torch"], capture_output=True).returncode == 0
        if ok:
            return py
    return None


def device_env(devices: int, extra_flags: str = "") -> dict[str, str]:
    """Environment for a subprocess with ``devices`` simulated CPU devices."""
    flags = f"--xla_force_host_platform_device_count={devices} {extra_flags}".strip()
    return {"XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}


# ---------------------------------------------------------------------------------------------
# The real nlnoise train step.


def nlnoise_step(model_name: str = "layers18pct", *, num_classes: int = 10, batch: int = 128,
                 image_shape: tuple[int, int, int] = (32, 32, 3), noise_model: str = "none",
                 mesh=None, q_sharded: bool = True, seed: int = 0,
                 model_kwargs: Mapping[str, Any] | None = None):
    """nlnoise's own jitted train step on one fixed random batch.

    The optimizer is the paper's: ``nlnoise.optim.net_optimizer`` (SGD, momentum 0.9, weight
    decay 0.004 on kernels) and, for ``noise_model="learned"``, ``q_optimizer`` with
    ``freeze_steps=0`` so Q's decay and column projection run every step. The step is
    ``nlnoise.step.jit_train_step`` over ``mesh`` (default: all devices on ``data``), the
    same function ``nlnoise-train`` runs (its logging window's sums included).

    Returns ``(runner, handles)``; ``handles`` holds the jitted step, the state (a one-element
    list, the state is donated) and the batch, for cost analysis and memory figures.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nlnoise import models, optim, sharding
    from nlnoise import step as step_lib

    mesh = mesh if mesh is not None else sharding.make_mesh(-1, 1)
    model = models.get_model(model_name, num_classes, **dict(model_kwargs or {}))
    lr = 1e-3
    net_tx = optim.net_optimizer(lr, momentum=0.9, weight_decay=0.004)
    q_tx = (optim.q_optimizer(lr, weight_decay=0.1, freeze_steps=0)
            if noise_model == "learned" else None)
    tx = optim.train_state_optimizer(net_tx, q_tx)

    def init():
        return step_lib.create_train_state(model, tx, input_shape=image_shape,
                                           q_init=np.eye(num_classes, dtype=np.float32),
                                           noise_model=noise_model, num_classes=num_classes,
                                           seed=seed)

    abstract = jax.eval_shape(init)
    state_sh = sharding.state_shardings(mesh, abstract)
    if not q_sharded:
        state_sh = state_sh.replace(params={**state_sh.params,
                                            "q": sharding.replicated(mesh)})
    state = jax.jit(init, out_shardings=state_sh)()
    rng = np.random.default_rng(seed)
    host = {"image": rng.standard_normal((batch, *image_shape), np.float32),
            "label": rng.integers(0, num_classes, batch).astype(np.int32)}
    batch_arrays = jax.device_put(host, sharding.batch_sharding(mesh))
    step = step_lib.jit_train_step(mesh, state_sh)
    holder = [state]

    def runner(n: int) -> float:
        t0 = time.perf_counter()
        s = holder[0]
        for _ in range(n):
            s, m = step(s, batch_arrays)
        jax.block_until_ready((s, m))
        holder[0] = s
        return time.perf_counter() - t0

    handles = {"step": step, "state": holder, "batch": batch_arrays, "mesh": mesh,
               "state_sharding": state_sh, "model": model, "jnp": jnp}
    return runner, handles


def step_flops(handles: Mapping[str, Any]) -> float | None:
    """FLOPs of one train step from XLA's cost analysis of the compiled step (per device)."""
    compiled = handles["step"].lower(handles["state"][0], handles["batch"]).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    return float(cost.get("flops", 0.0)) or None if cost else None


def matmul_runner(n: int = 2048):
    """Runner for one float32 ``[n, n] @ [n, n]`` matmul per step; FLOPs per step."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    jax.block_until_ready(f(a, b))

    def runner(k: int) -> float:
        t0 = time.perf_counter()
        out = None
        for _ in range(k):
            out = f(a, b)
        jax.block_until_ready(out)
        return time.perf_counter() - t0

    return runner, 2.0 * n ** 3


# ---------------------------------------------------------------------------------------------
# Machine and results.


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict[str, Any]:
    """Date, host, CPU model and count, load averages, versions."""
    import jax

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "load_average_1_5_15": load_average(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def write_json(name: str, obj: Any, path: Path | None = None) -> Path:
    """Writes ``obj`` to ``bench/results/<name>.json`` (or ``path``); returns the path."""
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=float))
    return path


def row(figure: str, value: float | None, fmt: str, target: str, met: bool | None,
        limit: str, **extra: Any) -> dict[str, Any]:
    """One line of the results table."""
    shown = "n/a" if value is None else format(value, fmt)
    status = "n/a" if met is None else ("met" if met else "missed")
    return {"figure": figure, "value": value, "shown": shown, "target": target,
            "status": status, "limits": limit, **extra}


def markdown_table(rows: list[Mapping[str, Any]]) -> str:
    """The results table in markdown."""
    lines = ["| # | figure | measured | target | status | what limits it |",
             "|---|---|---:|---|---|---|"]
    for r in rows:
        shown = f"{r['shown']} {r['unit']}" if r.get("unit") else r["shown"]
        lines.append(f"| {r.get('item', '')} | {r['figure']} | {shown} | {r['target']} "
                     f"| {r['status']} | {r['limits']} |")
    return "\n".join(lines)


def print_times(title: str, times: Mapping[str, list[float]], images: Mapping[str, int]
                ) -> None:
    """Prints median ms/step and images/s of each variant."""
    print(title)
    for name, ts in times.items():
        med = median(ts)
        ips = f"{images[name] / med:8.0f} img/s" if images.get(name) else ""
        print(f"  {name:32s} median {med * 1e3:8.2f} ms  (min {min(ts) * 1e3:8.2f}) {ips}")


def bench_main(name: str, doc: str, run: Callable[[bool, int], dict[str, Any]],
               worker: Callable[[], None] | None = None, worker_flag: str = "--worker") -> None:
    """The command line every benchmark module shares: ``--quick``, ``--repeats`` and a hidden
    flag that turns the process into a :class:`Worker`; prints the table, writes the JSON."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    if worker is not None:
        parser.add_argument(worker_flag, action="store_true", dest="worker",
                            help=argparse.SUPPRESS)
    args = parser.parse_args()
    if worker is not None and args.worker:
        worker()
        return
    out = run(args.quick, args.repeats)
    print(markdown_table(out["rows"]))
    print(write_json(name, {"machine": machine_info(), **out}))
