"""Benchmark (not a test): input-pipeline throughput next to the train step's consumption rate.

For each dataset (local sources) it measures, at global batch size ``--batch-size``:

1. ``pipeline``: images/s delivered by ``nlnoise.data.train_iterator`` alone (read, shuffle,
   mean subtraction, batching; grain threads as configured), after a warm-up;
2. ``step``: images/s of a jitted forward + backward + SGD-momentum step of the paper's CIFAR
   network (``layers18pct``) on one fixed batch: the rate training consumes images;
3. ``fed step``: the same step fed from the pipeline (``next(it)`` + ``jax.device_put``), so
   any contention between the two on this machine's cores shows up as a lower rate.

``headroom = pipeline / step``; the target is >= 5. Prints a markdown table and writes
``bench/results/input_pipeline.json``. ``bench/run_all.py`` uses :func:`headroom_rows`
instead: the pipeline and nlnoise's real train step timed in alternation.

    .venv/bin/python bench/input_pipeline.py [--datasets fashion_mnist cifar10]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import nlnoise.data as data

RESULTS = Path(__file__).resolve().parent / "results" / "input_pipeline.json"


def get_network(num_classes: int, which: str = "auto"):
    """The paper's CIFAR network: ``nlnoise.models.get_model`` if present, else the
    ``Layers18pct`` module, else (or with ``which="standin"``) a stand-in with the same layer
    sizes but no response normalization."""
    if which == "standin":
        return _stand_in(num_classes), "stand-in (bench/input_pipeline.py, no rnorm)"
    try:
        from nlnoise.models import get_model

        return get_model("layers18pct", num_classes), "nlnoise.models.get_model('layers18pct')"
    except ImportError:
        pass
    try:
        from nlnoise.models.layers18pct import Layers18pct

        return Layers18pct(num_classes=num_classes), "nlnoise.models.layers18pct.Layers18pct"
    except ImportError:
        pass
    return _stand_in(num_classes), "stand-in (bench/input_pipeline.py, no rnorm)"


def _stand_in(num_classes: int):
    import flax.linen as nn

    class StandIn(nn.Module):
        """conv5x5/32 - maxpool - conv5x5/32 - avgpool - conv5x5/64 - avgpool - fc (no rnorm)."""

        @nn.compact
        def __call__(self, x, train: bool = False):
            for feats, pool in ((32, nn.max_pool), (32, nn.avg_pool), (64, nn.avg_pool)):
                x = nn.relu(nn.Conv(feats, (5, 5), padding=2)(x))
                x = pool(x, (3, 3), (2, 2), padding="SAME")
            return nn.Dense(num_classes)(x.reshape(x.shape[0], -1))

    return StandIn()


def make_step(model, lr: float = 1e-3):
    tx = optax.sgd(lr, momentum=0.9)

    def loss_fn(params, images, labels):
        logits = model.apply(params, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(params, opt_state, images, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return tx, step


def rate(fn, n_images: int, repeats: int) -> float:
    """Median images/s over ``repeats`` timed calls of ``fn`` (each processing n_images)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n_images / statistics.median(times)


def bench_dataset(name: str, args) -> dict:
    cfg = data.default_dataset_config()
    cfg.name = name
    cfg.cache_dir = args.cache_dir
    cfg.num_threads = args.threads
    t0 = time.perf_counter()
    ds = data.load(cfg, noise_kind="symmetric", noise_level=0.3, noise_seed=0)
    load_s = time.perf_counter() - t0
    b = args.batch_size
    it = data.train_iterator(ds, cfg, global_batch_size=b, seed=0)
    for _ in range(20):
        next(it)

    def pull():
        for _ in range(args.batches):
            next(it)

    pipeline = rate(pull, args.batches * b, args.repeats)

    model, model_name = get_network(ds.num_classes, args.model)
    batch = next(it)
    params = model.init(jax.random.key(0), jnp.asarray(batch["image"]))
    tx, step = make_step(model)
    opt_state = tx.init(params)
    images, labels = jax.device_put(batch["image"]), jax.device_put(batch["label"])
    state = [params, opt_state]

    def run_fixed():
        p, o = state
        for _ in range(args.steps):
            p, o, loss = step(p, o, images, labels)
        loss.block_until_ready()
        state[:] = [p, o]

    def run_fed():
        p, o = state
        for _ in range(args.steps):
            bt = next(it)
            p, o, loss = step(p, o, jax.device_put(bt["image"]), jax.device_put(bt["label"]))
        loss.block_until_ready()
        state[:] = [p, o]

    run_fixed()  # compile + warm up
    # Interleaved, so load from other users of this shared machine hits both alike.
    fixed_t, fed_t = [], []
    for _ in range(args.repeats):
        for fn, times in ((run_fixed, fixed_t), (run_fed, fed_t)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    step_rate = args.steps * b / statistics.median(fixed_t)
    fed_rate = args.steps * b / statistics.median(fed_t)
    return {
        "dataset": name,
        "train_examples": len(ds.train),
        "image_shape": list(ds.image_shape),
        "load_seconds": round(load_s, 3),
        "pipeline_images_per_s": round(pipeline, 1),
        "step_images_per_s": round(step_rate, 1),
        "fed_step_images_per_s": round(fed_rate, 1),
        "headroom": round(pipeline / step_rate, 2),
        "fed_over_fixed": round(fed_rate / step_rate, 3),
        "model": model_name,
    }


def headroom_rows(datasets: tuple[str, ...] = ("cifar10",), batch: int = 128,
                  repeats: int = 5, pipeline_batches: int = 100, steps: int = 3) -> dict:
    """Item 4 for ``bench/run_all.py``: pipeline images/s over nlnoise's real train step.

    The pipeline (``nlnoise.data.train_iterator``) and the train step (``benchlib.nlnoise_step``,
    layers18pct, learned Q, the dataset's image shape) are timed in alternation, median of
    ``repeats`` after a warm-up; the headroom is the median per-repetition ratio.
    """
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import benchlib as bl

    rows, details = [], {}
    for name in datasets:
        cfg = data.default_dataset_config()
        cfg.name = name
        ds = data.load(cfg, noise_kind="symmetric", noise_level=0.3, noise_seed=0)
        it = data.train_iterator(ds, cfg, global_batch_size=batch, seed=0)

        def pull(n: int, it=it) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                next(it)
            return time.perf_counter() - t0

        step, _ = bl.nlnoise_step("layers18pct", num_classes=ds.num_classes, batch=batch,
                                  image_shape=tuple(ds.image_shape), noise_model="learned")
        step(1)
        times = bl.alternate({"pipeline": pull, "step": step},
                             steps={"pipeline": pipeline_batches, "step": steps},
                             repeats=repeats, warmup=1)
        bl.print_times(f"input pipeline vs train step, {name}", times,
                       {"pipeline": batch, "step": batch})
        ratio = bl.paired_ratio(times, "step", "pipeline")
        details[name] = {"times": bl.summarize(times), "headroom": ratio,
                         "pipeline_images_per_s": batch / bl.median(times["pipeline"]),
                         "step_images_per_s": batch / bl.median(times["step"])}
        rows.append(bl.row(f"input headroom, {name} (pipeline img/s / train step img/s)", ratio,
                           ".0f", ">= 5", ratio >= 5, "the train step: the pipeline is "
                           "numpy slicing of in-memory arrays", item=4, unit="x"))
    return {"rows": rows, "details": details}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["fashion_mnist", "cifar10"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=200, help="pipeline batches per timing")
    parser.add_argument("--steps", type=int, default=10, help="train steps per timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="dataset.num_threads")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument(
        "--model", choices=("auto", "standin"), default="auto", help="network for the step rate"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows = [bench_dataset(name, args) for name in args.datasets]
    print(
        f"\nInput pipeline vs train step, batch {args.batch_size}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__} ({jax.default_backend()}), model: {rows[0]['model']}\n"
    )
    print(
        "| dataset | pipeline img/s | train step img/s | step fed by pipeline img/s "
        "| headroom (pipeline / step) |"
    )
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['pipeline_images_per_s']:.0f} | {r['step_images_per_s']:.0f} "
            f"| {r['fed_step_images_per_s']:.0f} | {r['headroom']:.1f}x |"
        )
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
