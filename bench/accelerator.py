"""Benchmark (not a test): issue 18, item 4 -- nlnoise on one NVIDIA GPU, in one table.

Run by ``bench/accelerator.sh``, which checks for the GPU, installs jax with CUDA (this
Python) and PyTorch (``--torch-python``) in venvs of their own, and gives this script what is
left of its 8 minutes (``--budget``). The measurements, in this order (``--plan`` prints them):

1. the GPU's float32 matmul peak (8192^2 at jax's default precision, TF32 on Ampere and later):
   the denominator of MFU;
2. nlnoise's jitted train step (``benchlib.nlnoise_step``, as ``nlnoise-train`` runs it) for
   layers-18pct (batch 128, 32x32x3, K = 10) and AlexNet (batch 128, 227x227x3, K = 1000),
   each without a noise layer and with learned Q (its decay and projection every step),
   alternated: images/s, and MFU from XLA's FLOP count of the compiled step;
3. the same two networks and steps in PyTorch on the same GPU (``bench/torch_step.py
   --device cuda``), alternated with nlnoise's;
4. the Q update at K = 21841 in passes over Q (``bench/q_update.py``).

Each figure is the median of ``--repeats`` alternated repetitions after a warm-up. What does
not fit in the budget is reported as skipped, never guessed.

    python bench/accelerator.py --torch-python /path/to/torch/venv/bin/python [--budget 400]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

BATCH = 128
NETWORKS = {"layers18pct": {"num_classes": 10, "image": (32, 32, 3)},
            "alexnet": {"num_classes": 1000, "image": (227, 227, 3)}}
Q_UPDATE_K = 21841
PLAN = (
    "matmul peak: float32 8192^2 on the GPU (jax default precision), TFLOP/s",
    "nlnoise layers18pct, batch 128, K=10: images/s and MFU, no Q / learned Q (alternated)",
    "nlnoise AlexNet, batch 128, K=1000: images/s and MFU, no Q / learned Q (alternated)",
    "PyTorch layers18pct and AlexNet, batch 128, same GPU (bench/torch_step.py --device cuda),"
    " alternated with nlnoise's step",
    f"Q update at K={Q_UPDATE_K}: time over one elementwise pass over Q (bench/q_update.py)",
)


class Budget:
    """Seconds left of the run; a measurement that would not fit is skipped."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def _gpu_or_die() -> str:
    import jax

    if jax.default_backend() != "gpu":
        sys.exit(f"accelerator.py: jax sees no GPU (backend {jax.default_backend()!r}, devices "
                 f"{jax.devices()}); install jax[cuda12] and run on an NVIDIA GPU.")
    return jax.devices()[0].device_kind


def peak(repeats: int) -> float:
    """Median FLOP/s of a float32 8192^2 matmul."""
    runner, flops = bl.matmul_runner(8192)
    times = bl.alternate({"matmul": runner}, steps=10, repeats=repeats, warmup=1)
    return flops / bl.median(times["matmul"])


def network(name: str, repeats: int, peak_flops: float, torch_python: str | None
            ) -> list[dict[str, Any]]:
    """Rows for one network: nlnoise without and with learned Q, and PyTorch."""
    import jax

    cfg = NETWORKS[name]
    runners: dict[str, Any] = {}
    flops: dict[str, float | None] = {}
    for noise in ("none", "learned"):
        runner, handles = bl.nlnoise_step(name, num_classes=cfg["num_classes"], batch=BATCH,
                                          image_shape=cfg["image"], noise_model=noise)
        runner(2)
        runners[f"nlnoise_{noise}"] = runner
        flops[f"nlnoise_{noise}"] = bl.step_flops(handles)
    worker = None
    if torch_python:
        worker = bl.Worker([torch_python, str(bl.BENCH / "torch_step.py"), "--model", name,
                            "--device", "cuda", "--batch", str(BATCH), "--num-classes",
                            str(cfg["num_classes"])])
        runners["pytorch"] = worker
    try:
        times = bl.alternate(runners, steps=5, repeats=repeats, warmup=1)
    finally:
        if worker is not None:
            worker.close()
    rows = []
    label = {"nlnoise_none": "nlnoise, no Q", "nlnoise_learned": "nlnoise, learned Q",
             "pytorch": "PyTorch"}
    for key, ts in times.items():
        step = bl.median(ts)
        mfu = flops.get(key) and flops[key] / step / peak_flops
        text = (f"MFU {mfu:.1%} of the measured peak ({flops[key] / 1e9:.1f} GFLOP/step, XLA)"
                if mfu else "")
        rows.append(bl.row(f"{name} K={cfg['num_classes']} batch {BATCH}: {label[key]}",
                           BATCH / step, ".0f", "(figure)", None, text, unit="images/s",
                           mfu=mfu or None, step_s=step))
    if "pytorch" in times:
        ratio = bl.paired_ratio(times, "pytorch", "nlnoise_none")
        rows.append(bl.row(f"{name}: nlnoise images/s over PyTorch's (no Q, paired)", ratio,
                           ".2f", "(figure)", None, "step time ratio PyTorch / nlnoise"))
    jax.clear_caches()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", action="store_true", help="print the measurements and exit")
    parser.add_argument("--torch-python", help="a Python with a CUDA build of torch")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for everything")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.plan:
        print("\n".join(f"{i}. {p}" for i, p in enumerate(PLAN, 1)))
        return
    budget = Budget(args.budget)
    gpu = _gpu_or_die()
    print(f"GPU: {gpu}; budget {args.budget:.0f} s", flush=True)
    flops = peak(args.repeats)
    rows = [bl.row("float32 matmul peak, 8192^2 (jax default precision)", flops / 1e12, ".1f",
                   "(figure)", None, "the denominator of MFU", unit="TFLOP/s")]
    # Rough costs on a current GPU, compilation included, to skip what cannot finish.
    needs = {"layers18pct": 40.0, "alexnet": 90.0, "q_update": 90.0}
    for name in NETWORKS:
        if budget.left() < needs[name]:
            rows.append(bl.row(f"{name}: skipped, {budget.left():.0f} s left of the budget",
                               None, ".0f", "", None, ""))
            continue
        rows += network(name, args.repeats, flops, args.torch_python)
    if budget.left() < needs["q_update"]:
        rows.append(bl.row(f"Q update K={Q_UPDATE_K}: skipped, {budget.left():.0f} s left",
                           None, ".2f", "", None, ""))
    else:
        import q_update

        r = q_update.passes(Q_UPDATE_K, args.repeats, warm_steps=10)
        rows.append(bl.row(f"Q update / one elementwise pass over Q, K={Q_UPDATE_K}",
                           r["passes"], ".2f", "<= 3", r["passes"] <= 3,
                           f"{r['times']['update']['median_s'] * 1e3:.1f} ms per update, "
                           f"{r['search_reads']} reads to find the thresholds",
                           unit="passes"))
    print(f"\nnlnoise on {gpu}\n")
    print(bl.markdown_table(rows))
    print(bl.write_json("accelerator", {"machine": bl.machine_info(), "gpu": gpu,
                                        "rows": rows}))


if __name__ == "__main__":
    main()
