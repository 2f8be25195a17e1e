"""Benchmark (not a test): item 5 -- a short real training run's wall time over its step time.

Runs ``nlnoise.run.train_and_evaluate`` with real configs in a temporary workdir, timing the
whole call: ``configs/fashion_mnist.py:runlocal`` (layers18pct, learned Q, 2000 training
images, batch 100, 3 epochs, evaluation on 2000 test images and a checkpoint every epoch), the
main job ``configs/fashion_mnist.py`` (30000 training images, batch 128, 5 epochs = 1170
steps, evaluation on the 10000 test images and a checkpoint after every epoch) and 3 epochs of
the sweeps' 60000 training images (1404 steps); metrics, TensorBoard and plots as configured.
In the same process the run's train step (``benchlib.nlnoise_step`` with the same model, batch
and image shape) is then timed, median of ``--repeats``.
``efficiency = wall / (steps x median step)``.

To say where the rest goes, the library's own functions are wrapped from here (nothing in
``nlnoise`` is changed): the first call of the step made by ``nlnoise.step.jit_train_step``
(start-up: data load, state init and compilation end there), ``eval_loop.Evaluator.__call__``
(every evaluation, the first one including the one-time preprocessing of the splits onto the
devices) and ``CheckpointStore.save``.

Each config runs in its own process (jax fixes its CPU device count at its first operation,
and ``mesh.cpu_devices`` auto picks it from the config's batch sizes), twice, with one fresh
``compilation_cache_dir``: cold (nothing cached) and warm (compiled steps loaded from jax's
persistent cache, as for a sweep's next cell or a resumed run); both must end with
bit-identical parameters. The process starts with no device setting, so the runs use what
``nlnoise-train`` would.

    .venv/bin/python bench/end_to_end.py [--quick] [--configs CONFIG ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

# A tiny run (fixed costs dominate), the main job as the README runs it (5 epochs of 30k
# images, evaluation on the 10k test images after each) and a short run of the sweeps' shape
# (3 epochs of 60k images, docs/results.md).
DEFAULT_CONFIGS = ("configs/fashion_mnist.py:runlocal",
                   "configs/fashion_mnist.py",
                   "configs/fashion_mnist.py:size=60000,epochs=3,freeze=1")


def load_config(spec: str):
    """``path.py:arg`` -> the ConfigDict of ``get_config(arg)``."""
    path, _, arg = spec.partition(":")
    mod_spec = importlib.util.spec_from_file_location("bench_cfg", bl.REPO / path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.get_config(arg or None)


def timed_run(cfg) -> dict[str, Any]:
    """Runs ``train_and_evaluate`` once, with wall time and a breakdown of where it went."""
    import jax

    from nlnoise import checkpoint, eval_loop, resolve, run
    from nlnoise import step as step_lib

    marks: dict[str, float] = {"eval_s": 0.0, "checkpoint_save_s": 0.0}
    orig_jit, orig_eval, orig_save, orig_load = (step_lib.jit_train_step,
                                                 eval_loop.Evaluator.__call__,
                                                 checkpoint.CheckpointStore.save,
                                                 resolve.load_dataset)
    t_start = time.perf_counter()

    def jit_train_step(*a, **k):
        train_fn = orig_jit(*a, **k)

        def first_call_blocks(*args):
            out = train_fn(*args)
            if "startup_s" not in marks:
                jax.block_until_ready(out)  # so start-up ends where the first step does
                marks["startup_s"] = time.perf_counter() - t_start
            return out

        return first_call_blocks

    def load_dataset(*a, **k):
        ds = orig_load(*a, **k)
        marks["image_shape"], marks["num_classes"] = tuple(ds.image_shape), int(ds.num_classes)
        return ds

    def evaluate(self, *a, **k):
        t0 = time.perf_counter()
        out = orig_eval(self, *a, **k)
        marks["eval_s"] += time.perf_counter() - t0
        return out

    def save(self, *a, **k):
        t0 = time.perf_counter()
        out = orig_save(self, *a, **k)
        marks["checkpoint_save_s"] += time.perf_counter() - t0
        return out

    step_lib.jit_train_step, eval_loop.Evaluator.__call__ = jit_train_step, evaluate
    resolve.load_dataset = load_dataset
    checkpoint.CheckpointStore.save = save
    try:
        with tempfile.TemporaryDirectory() as workdir:
            summary = run.train_and_evaluate(cfg, workdir)
    finally:
        step_lib.jit_train_step, eval_loop.Evaluator.__call__ = orig_jit, orig_eval
        resolve.load_dataset = orig_load
        checkpoint.CheckpointStore.save = orig_save
    marks["wall_s"] = time.perf_counter() - t_start
    marks["steps"] = int(summary["steps"])
    marks["loop_images_per_s"] = summary.get("train_images_per_s")
    marks["test_error"] = summary.get("final", {}).get("test_error")
    marks["params_sha256"] = summary.get("params_sha256")
    marks["num_devices"] = summary.get("num_devices")
    return marks


def measure(config: str, repeats: int, cache_dir: str) -> dict[str, Any]:
    """Two real runs of ``config`` (compilation cache cold, then warm) and its step time."""
    cfg = load_config(config)
    cfg.progress_bar = False  # no terminal here; everything else as configured
    cfg.compilation_cache_dir = cache_dir
    runs = {"cold": timed_run(cfg), "warm": timed_run(cfg)}
    same = runs["cold"]["params_sha256"] == runs["warm"]["params_sha256"]
    marks = runs["cold"]
    runner, _ = bl.nlnoise_step(cfg.model.name, num_classes=marks["num_classes"],
                                batch=cfg.batch_size, image_shape=marks["image_shape"],
                                noise_model=cfg.noise.model)
    runner(2)
    times = bl.alternate({"step": runner}, steps=5, repeats=repeats, warmup=1)
    step_s = bl.median(times["step"])
    details: dict[str, Any] = {"config": config, "step_s": bl.summarize(times)["step"],
                               "ideal_s": marks["steps"] * step_s,
                               "cold_and_warm_bit_identical": same}
    for name, m in runs.items():
        rest = (m["wall_s"] - m["startup_s"] - m["eval_s"] - m["checkpoint_save_s"]
                - (m["steps"] - 1) * step_s)
        # The run's own training time (its loop times the windows between host syncs, eval
        # and checkpoints excluded): the same ratio without drift between run and timing.
        loop_s = (m["steps"] * cfg.batch_size / m["loop_images_per_s"]
                  if m.get("loop_images_per_s") else None)
        details[name] = {**m, "other_s": rest, "loop_train_s": loop_s,
                         "efficiency_in_run": m["wall_s"] / loop_s if loop_s else None,
                         "efficiency": m["wall_s"] / (m["steps"] * step_s),
                         "efficiency_after_startup": (m["wall_s"] - m["startup_s"])
                         / ((m["steps"] - 1) * step_s)}
        print(name, {k: (round(v, 3) if isinstance(v, float) else v)
                     for k, v in details[name].items()}, flush=True)
    return details


CHILD_RESULT = "END_TO_END_RESULT "


def measure_in_child(config: str, repeats: int, cache_dir: str) -> dict[str, Any]:
    """:func:`measure` in a fresh Python process (its own device count); its details."""
    cmd = [sys.executable, __file__, "--child", config, "--repeats", str(repeats),
           "--cache_dir", cache_dir]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=bl.REPO,
                          timeout=3 * 3600)
    lines = proc.stdout.splitlines()
    print("\n".join(x for x in lines if not x.startswith(CHILD_RESULT)), flush=True)
    results = [x[len(CHILD_RESULT):] for x in lines if x.startswith(CHILD_RESULT)]
    if proc.returncode or not results:
        raise RuntimeError(f"the run of {config} exited with {proc.returncode}; see the log")
    return json.loads(results[-1])


def run(quick: bool = False, repeats: int = 5,
        configs: tuple[str, ...] = DEFAULT_CONFIGS) -> dict[str, Any]:
    """Measures item 5; returns ``{"rows": [...], "details": {...}}``."""
    rows, details = [], {}
    with tempfile.TemporaryDirectory() as cache_dir:
        for config in configs[:1] if quick else configs:
            try:
                details[config] = measure_in_child(config, repeats, cache_dir)
            except Exception as exc:  # keep the other config's figures
                rows.append(bl.row(f"end-to-end `{config}`: failed ({type(exc).__name__}: "
                                   f"{exc})"[:200], None, ".2f", "<= 1.10", None,
                                   "see the log", item=5))
                continue
            for name, text in (("cold", "first run, compilation cache empty"),
                               ("warm", "rerun, compilation cache warm (a sweep's next cell, "
                                        "a resumed run)")):
                d = details[config][name]
                why = (f"start-up {d['startup_s']:.1f} s (data load, init, compile), "
                       f"evaluation {d['eval_s']:.1f} s, checkpoint saves "
                       f"{d['checkpoint_save_s']:.1f} s, rest {d['other_s']:.1f} s (summary, "
                       f"plots, waits); {d['num_devices']} devices")
                rows.append(bl.row(f"end-to-end wall / (steps x median step), `{config}`, "
                                   f"{text} ({d['steps']} steps, {d['wall_s']:.0f} s)",
                                   d["efficiency"], ".2f", "<= 1.10", d["efficiency"] <= 1.10,
                                   why, item=5))
            d = details[config]["warm"]
            if d.get("efficiency_in_run"):
                rows.append(bl.row(f"in-run: wall / the run's own training time (its loop's "
                                   f"rate x steps), `{config}`, warm", d["efficiency_in_run"],
                                   ".2f", "<= 1.10 (drift-free diagnostic)",
                                   d["efficiency_in_run"] <= 1.10,
                                   f"evaluation {d['eval_s']:.1f} s, start-up "
                                   f"{d['startup_s']:.1f} s of {d['wall_s']:.0f} s", item=5))
            d = details[config]["cold"]
            rows.append(bl.row(f"the same from the end of the first step (no start-up), "
                               f"`{config}`", d["efficiency_after_startup"], ".2f",
                               "<= 1.10 (diagnostic)", d["efficiency_after_startup"] <= 1.10,
                               "evaluation after every epoch", item=5))
            rows.append(bl.row(f"cold and warm runs of `{config}` end with bit-identical "
                               "parameters", 1.0 if details[config]["cold_and_warm_bit_identical"]
                               else 0.0, ".0f", "1 (yes)",
                               details[config]["cold_and_warm_bit_identical"],
                               "the cache changes compile time, not results", item=5))
    return {"rows": rows, "details": details}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    parser.add_argument("--quick", action="store_true", help="only the first config")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        logging.getLogger("nlnoise").setLevel(logging.WARNING)
        out = measure(args.child, args.repeats, args.cache_dir)
        print(CHILD_RESULT + json.dumps(out, default=float), flush=True)
        return
    out = run(args.quick, args.repeats, tuple(args.configs))
    print(bl.markdown_table(out["rows"]))
    print(bl.write_json("end_to_end", {"machine": bl.machine_info(), **out}))


if __name__ == "__main__":
    main()
