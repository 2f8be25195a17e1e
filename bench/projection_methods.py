"""Benchmark (not a test): item 6 -- column simplex projection, optax's sort vs sort-free Newton.

For each K, ``nlnoise.projection.project_columns`` on a ``[K, K]`` float32 Q with ``method="sort"``
(optax ``projection_simplex``, vmapped over columns) and ``method="newton"`` (Michelot/Newton
threshold search, no sort), jitted, timed in alternation (median of ``--repeats`` after a
warm-up), with the largest difference between the two. ``--big`` also times the Newton method
alone at K = 10000 and 21841 (the sort takes ~25 s and ~4 min there; see ``scaling_k.py``).
Picks ``nlnoise.projection.NEWTON_MIN_K``.

    .venv/bin/python bench/projection_methods.py [--ks 10 32 64 100 1000] [--big]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl


def _q(k: int):
    """A Q one SGD step off the simplex, as the projection sees it in training."""
    import jax
    import jax.numpy as jnp

    base = jnp.eye(k, dtype=jnp.float32) * 0.5 + 0.5 / k
    return base + 1e-3 * jax.random.normal(jax.random.key(0), (k, k), jnp.float32)


def _runner(fn, q, calls: int):
    import jax

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n * calls):
            jax.block_until_ready(fn(q))
        return (time.perf_counter() - t0) / calls

    return run


def compare(k: int, repeats: int) -> dict[str, Any]:
    """Alternated seconds per projection of both methods at one K, and their max difference."""
    import jax
    import jax.numpy as jnp

    from nlnoise import projection

    q = _q(k)
    fns = {m: jax.jit(lambda x, m=m: projection.project_columns(x, m)).lower(q).compile()
           for m in ("sort", "newton")}
    # Small K is microseconds: several calls per timing so the clock resolves them.
    calls = max(1, 2000 // k)
    times = bl.alternate({m: _runner(f, q, calls) for m, f in fns.items()}, steps=1,
                         repeats=repeats, warmup=1)
    got = {m: f(q) for m, f in fns.items()}
    out = {"k": k, "times": bl.summarize(times), "ratio_sort_over_newton":
           bl.paired_ratio(times, "sort", "newton"),
           "max_abs_diff": float(jnp.max(jnp.abs(got["sort"] - got["newton"]))),
           "newton_col_sum_err": float(jnp.max(jnp.abs(got["newton"].sum(0) - 1)))}
    print(f"K={k:6d} sort {bl.median(times['sort']) * 1e3:9.3f} ms  newton "
          f"{bl.median(times['newton']) * 1e3:9.3f} ms  sort/newton "
          f"{out['ratio_sort_over_newton']:6.2f}  max|diff| {out['max_abs_diff']:.1e}",
          flush=True)
    jax.clear_caches()
    return out


def newton_alone(k: int, repeats: int) -> dict[str, Any]:
    """Seconds per Newton projection at a K where the sort takes minutes."""
    import jax
    import jax.numpy as jnp

    from nlnoise import projection

    q = _q(k)
    fn = jax.jit(lambda x: projection.project_columns(x, "newton")).lower(q).compile()
    got = fn(q)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(q))
        ts.append(time.perf_counter() - t0)
    out = {"k": k, "newton_s": {"median": bl.median(ts), "n": len(ts)},
           "newton_col_sum_err": float(jnp.max(jnp.abs(got.sum(0) - 1))),
           "newton_min": float(got.min())}
    print(f"K={k:6d} newton {out['newton_s']['median']:.2f} s (median of {len(ts)})  "
          f"max|colsum-1| {out['newton_col_sum_err']:.1e}", flush=True)
    del got, q
    jax.clear_caches()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 32, 64, 100, 300, 1000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--big", action="store_true", help="also Newton alone at 1e4, 21841")
    args = parser.parse_args()
    start = bl.load_average()
    res: dict[str, Any] = {"compare": [compare(k, args.repeats) for k in args.ks]}
    if args.big:
        res["newton_alone"] = [newton_alone(k, r) for k, r in ((10000, 3), (21841, 3))]
    res["load_average_start_end"] = [start, bl.load_average()]
    print(bl.write_json("projection_methods", {"machine": bl.machine_info(), **res}))


if __name__ == "__main__":
    main()
