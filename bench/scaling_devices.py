"""Benchmark (not a test): item 7 -- images/s on 1, 2, 4 and 8 simulated CPU devices.

Each device count runs in its own worker subprocess (``XLA_FLAGS=
--xla_force_host_platform_device_count=N``): nlnoise's jitted train step of ``layers18pct``
(learned Q, batch 128 global, 32x32x3) over a mesh with the batch on the ``data`` axis of N
devices. The workers are timed in alternation. All N simulated devices share this machine's
2 cores, so this measures the overhead of partitioning the step N ways (per-device work, the
gradient all-reduce, smaller per-device convolutions), not a speedup from more hardware. (On
this machine N concurrent device programs turned out to keep both cores busier than one
program's intra-op threads, so images/s rose with N; see docs/performance.md.)

Each worker also reports per-device bytes of the batch (the global batch is sharded, so they
fall as 1/N) and the compiled step's per-device temporary memory.

    .venv/bin/python bench/scaling_devices.py [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

DEVICES = (1, 2, 4, 8)
BATCH = 128


def worker() -> None:
    """Worker side: build the step over all (simulated) devices and serve ``run N``."""
    import jax

    from nlnoise import sharding

    runner, h = bl.nlnoise_step("layers18pct", batch=BATCH, noise_model="learned")
    runner(2)
    compiled = h["step"].lower(h["state"][0], h["batch"]).compile()
    mem = compiled.memory_analysis()
    image = h["batch"]["image"]
    info = {"devices": jax.device_count(),
            "batch_image_bytes_per_device": sharding.per_device_bytes(image),
            "batch_image_bytes_global": int(image.nbytes),
            "batch_shard_shape": list(image.addressable_shards[0].data.shape),
            "step_temp_bytes_per_device": int(mem.temp_size_in_bytes),
            "step_argument_bytes_per_device": int(mem.argument_size_in_bytes)}
    bl.serve(runner, info)


def run(quick: bool = False, repeats: int = 5) -> dict[str, Any]:
    """Measures item 7; returns ``{"rows": [...], "details": {...}}``."""
    workers: dict[str, bl.Worker] = {}
    try:
        for n in DEVICES:
            workers[f"{n} devices"] = bl.Worker([sys.executable, __file__, "--worker"],
                                                env=bl.device_env(n))
        times = bl.alternate(workers, steps=2 if quick else 4, repeats=repeats, warmup=1,
                             pause=0.2)
        info = {name: w.info for name, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    bl.print_times("layers18pct step, global batch 128, simulated devices", times,
                   {n: BATCH for n in times})
    ips = {n: BATCH / bl.median(t) for n, t in times.items()}
    rel = {n: bl.paired_ratio(times, "1 devices", n) for n in times}
    for name, i in info.items():
        print(f"  {name}: batch shard {i['batch_shard_shape']}, image bytes/device "
              f"{i['batch_image_bytes_per_device']}, step temp/device "
              f"{i['step_temp_bytes_per_device'] / 2**20:.1f} MiB")
    sharded = all(info[f"{n} devices"]["batch_image_bytes_per_device"] * n
                  == info["1 devices"]["batch_image_bytes_per_device"] for n in DEVICES)
    rows = [bl.row(f"images/s on {n} simulated device{'s' if n > 1 else ''} "
                   f"(relative to 1: {rel[f'{n} devices']:.2f})",
                   ips[f"{n} devices"], ".0f", "(figure; same 2 cores: overhead, not speedup)",
                   None, "the 2 shared cores; N device programs run concurrently, which "
                   "uses them better than one program's intra-op threads",
                   item=7, unit="images/s") for n in DEVICES]
    rows.append(bl.row("batch bytes per device, 8 devices (global batch sharded)",
                       info["8 devices"]["batch_image_bytes_per_device"] / 2**10, ".0f",
                       "1/N of the global batch", sharded, "exact: batch split on data",
                       item=7, unit="KiB"))
    return {"rows": rows, "details": {"times": bl.summarize(times), "images_per_s": ips,
                                      "throughput_relative_to_1": rel, "workers": info}}


def main() -> None:
    bl.bench_main("scaling_devices", __doc__, run, worker)


if __name__ == "__main__":
    main()
