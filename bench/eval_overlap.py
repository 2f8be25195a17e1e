"""Benchmark (not a test): issue 18, item 3 (item 5 of the benchmarks) -- what an evaluation
costs next to an epoch, and whether running it beside the next epoch's steps hides it.

On the main job's shapes (``configs/fashion_mnist.py``: layers18pct with learned Q, K = 10,
28x28x1 images, batch 128, on the CPU split that ``nlnoise-train`` picks for these batch
sizes), four variants alternated, median over ``--repeats``:

* ``train``: one epoch of the main job, 211 steps of ``nlnoise.step.jit_train_step`` (fed one
  fixed batch; a ``DispatchWindow`` bounds the steps in flight, as the run's loop does);
* ``eval``: one evaluation, the main job's 10k test and 3k held-out images as 13 batches of
  1000 already on the devices, in one jitted ``lax.map`` of ``step.eval_step`` (what
  ``eval_loop.Evaluator`` runs);
* ``sequential``: the evaluation, then the epoch (what the run does);
* ``overlapped``: the evaluation dispatched on a copy of the state, then the epoch's steps
  dispatched at once, both awaited at the end (so the two share the cores).

``sequential / train - 1`` is what the evaluation adds to an epoch; ``overlapped / train - 1``
what it would add if it ran beside the next epoch. The images are random (the cost does not
depend on them).

    .venv/bin/python bench/eval_overlap.py [--repeats 5]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

IMAGE_SHAPE = (28, 28, 1)
BATCH, EVAL_BATCH = 128, 1000
EPOCH_STEPS = 27_000 // BATCH  # the main job: 30k training images, 3k of them held out
EVAL_BATCHES = 13  # 10k test + 3k held-out images


def run(quick: bool = False, repeats: int = 5) -> dict[str, Any]:
    """Times the four variants; returns ``{"rows": [...], "details": {...}}``."""
    from nlnoise import sharding

    sharding.configure_cpu_devices(0, batch_sizes=(BATCH, EVAL_BATCH))
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from nlnoise import step as step_lib

    _, h = bl.nlnoise_step("layers18pct", batch=BATCH, image_shape=IMAGE_SHAPE,
                           noise_model="learned")
    mesh, state_sh, step = h["mesh"], h["state_sharding"], h["step"]
    stacked = NamedSharding(mesh, P(None, sharding.DATA))
    rng = np.random.default_rng(0)
    n = EVAL_BATCHES if not quick else 3
    batches = jax.device_put({
        "image": rng.standard_normal((n, EVAL_BATCH, *IMAGE_SHAPE), np.float32),
        "label": rng.integers(0, 10, (n, EVAL_BATCH)).astype(np.int32),
        "mask": np.ones((n, EVAL_BATCH), bool)}, stacked)
    evaluate = jax.jit(lambda s, b: jax.lax.map(lambda x: step_lib.eval_step(s, x), b),
                       in_shardings=(state_sh, stacked), out_shardings=stacked)
    copy = jax.jit(lambda s: jax.tree.map(jnp.copy, s), in_shardings=(state_sh,),
                   out_shardings=state_sh)
    epoch = EPOCH_STEPS if not quick else 20

    def steps() -> None:
        window, s = step_lib.DispatchWindow(), h["state"][0]
        for _ in range(epoch):
            s, m = step(s, h["batch"])
            window.push(m)
        jax.block_until_ready((s, m))
        h["state"][0] = s

    def timed(fn):
        def runner(_: int) -> float:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        return runner

    def overlapped() -> None:
        out = evaluate(copy(h["state"][0]), batches)
        steps()
        jax.block_until_ready(out)

    runs = {"train": timed(steps),
            "eval": timed(lambda: jax.block_until_ready(evaluate(h["state"][0], batches))),
            "sequential": timed(lambda: (jax.block_until_ready(evaluate(h["state"][0], batches)),
                                         steps())),
            "overlapped": timed(overlapped)}
    times = bl.alternate(runs, steps=1, repeats=repeats, warmup=1)
    added = bl.paired_ratio(times, "sequential", "train") - 1
    hidden = bl.paired_ratio(times, "overlapped", "train") - 1
    eval_share = bl.paired_ratio(times, "eval", "train")
    rates = {"train_images_per_s": epoch * BATCH / bl.median(times["train"]),
             "eval_images_per_s": n * EVAL_BATCH / bl.median(times["eval"])}
    print(f"{jax.device_count()} devices; epoch {bl.median(times['train']):.2f} s, evaluation "
          f"{bl.median(times['eval']):.2f} s ({eval_share:.3f} of the epoch); added to the epoch "
          f"in sequence {added:.3f}, overlapped {hidden:.3f}; images/s: train "
          f"{rates['train_images_per_s']:.0f}, evaluation {rates['eval_images_per_s']:.0f}",
          flush=True)
    rows = [bl.row("evaluation after an epoch, in sequence: (eval + epoch) / epoch - 1",
                   added, ".3f", "<= 0.10 with start-up", added <= 0.10,
                   f"{jax.device_count()} devices; eval {n}k images at "
                   f"{rates['eval_images_per_s']:.0f} images/s", item=5),
            bl.row("the same, evaluation dispatched beside the next epoch's steps", hidden,
                   ".3f", "(what overlap would leave)", None,
                   "the cores are shared, not idle", item=5)]
    return {"rows": rows, "details": {"times": bl.summarize(times), "added": added,
                                      "overlapped": hidden, "eval_over_epoch": eval_share,
                                      "devices": jax.device_count(), **rates}}


if __name__ == "__main__":
    bl.bench_main("eval_overlap", __doc__, run)
