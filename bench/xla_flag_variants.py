"""Benchmark (not a test): item 1, what was tried -- XLA:CPU flags for the layers18pct step.

Each variant is a worker subprocess with its own ``XLA_FLAGS`` running nlnoise's jitted
train step (layers18pct, batch 128, 32x32x3, no noise layer; over all the process's devices,
so the device-count variants are data-parallel); all are timed in alternation and
compared with the default flags (median of per-repetition ratios). A variant whose flags XLA
rejects is reported as failed. Flags change how XLA compiles, not the model's definition;
``fast-math`` variants may change numerics and are listed for information only.

    .venv/bin/python bench/xla_flag_variants.py [--repeats 5]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

BATCH = 128
VARIANTS = {
    "default": "",
    "no YNNPACK convolutions":
        "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    "no YNNPACK convolutions or dots":
        "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot",
    "oneDNN": "--xla_cpu_use_onednn=true",
    "XNNPACK dot fusions": "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise",
    "single-threaded Eigen": "--xla_cpu_multi_thread_eigen=false",
    "concurrency-optimized scheduler": "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    "2 simulated devices, data-parallel": "--xla_force_host_platform_device_count=2",
    "4 simulated devices, data-parallel": "--xla_force_host_platform_device_count=4",
    "8 simulated devices, data-parallel": "--xla_force_host_platform_device_count=8",
    # nlnoise-train's default on a CPU host is the 8-device split: flags on top of it.
    "16 simulated devices, data-parallel": "--xla_force_host_platform_device_count=16",
    "8 devices, single-threaded Eigen":
        "--xla_force_host_platform_device_count=8 --xla_cpu_multi_thread_eigen=false",
    "8 devices, concurrency-optimized scheduler":
        "--xla_force_host_platform_device_count=8 "
        "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    "8 devices, oneDNN": "--xla_force_host_platform_device_count=8 --xla_cpu_use_onednn=true",
    "8 devices, no YNNPACK convolutions":
        "--xla_force_host_platform_device_count=8 "
        "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
}
_DEVICES = "--xla_force_host_platform_device_count="


def _env(flags: str) -> dict[str, str]:
    """Worker environment: one device unless the variant sets the device count itself."""
    devices, rest = 1, []
    for flag in flags.split():
        if flag.startswith(_DEVICES):
            devices = int(flag[len(_DEVICES):])
        else:
            rest.append(flag)
    return bl.device_env(devices, " ".join(rest))


def worker() -> None:
    """Worker side: the step under this process's XLA_FLAGS."""
    runner, _ = bl.nlnoise_step("layers18pct", batch=BATCH)
    runner(2)
    bl.serve(runner, {})


def run(quick: bool = False, repeats: int = 5) -> dict[str, Any]:
    """Alternated step times per flag variant; returns rows and details."""
    workers: dict[str, bl.Worker] = {}
    failed: dict[str, str] = {}
    try:
        for name, flags in VARIANTS.items():
            try:
                workers[name] = bl.Worker([sys.executable, __file__, "--worker"],
                                          env=_env(flags))
            except RuntimeError as exc:
                lines = str(exc).strip().splitlines()
                bad = [x for x in lines if "nknown" in x or "nvalid" in x or "rror" in x]
                failed[name] = (bad or lines)[0].strip()[:300]
                print(f"{name}: failed: {failed[name]}")
        times = bl.alternate(workers, steps=2 if quick else 4, repeats=repeats, warmup=1,
                             pause=0.2)
    finally:
        for w in workers.values():
            w.close()
    bl.print_times("layers18pct step under XLA flag variants", times, {n: BATCH for n in times})
    rel = {n: bl.paired_ratio(times, "default", n) for n in times}
    rows = [bl.row(f"XLA flags '{VARIANTS[n] or '(none)'}': throughput vs default", rel[n],
                   ".2f", "(tried)", None, n, item=1) for n in times if n != "default"]
    rows += [bl.row(f"XLA flags '{VARIANTS[n]}'", None, ".2f", "(tried)", None,
                    f"failed: {msg[:120]}", item=1) for n, msg in failed.items()]
    return {"rows": rows, "details": {"times": bl.summarize(times), "relative": rel,
                                      "failed": failed, "flags": VARIANTS}}


def main() -> None:
    bl.bench_main("xla_flag_variants", __doc__, run, worker)


if __name__ == "__main__":
    main()
