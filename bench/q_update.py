"""Benchmark (not a test): issue 18, item 1 -- the Q update in passes over Q; its share of a step.

* **Passes.** The time of nlnoise's Q update (``q_optimizer``'s update and its application,
  jitted, Q and the optimizer state donated as in the train step) divided by the time of one
  elementwise pass over Q (``q * 0.99``, jitted, donated, same shape), the two alternated in one
  run, median of the per-repetition ratios: a hardware-neutral cost. Every variant that writes Q
  does so in a buffer that lives across repetitions, as Q's does across train steps. Q is not a
  synthetic matrix: it starts at the identity and takes ``--warm-steps`` learned-Q steps on
  gradients of the noisy cross entropy (``nlnoise.losses``) for batches of 128 synthetic
  predictions (the true class boosted) whose labels are flipped with probability 0.5 to one of
  10 other classes, as the paper's ImageNet noise; the timed update uses a fresh gradient of the
  same kind and starts its threshold search where the trajectory left it. Q is stored as nlnoise
  stores it (``sharding.q_storage_columns``). Targets: <= 3 passes at K = 21841 (ImageNet-22k);
  K = 4096 and 8192 show the trend. Also reported: whether the timed update found its thresholds
  from the support (``nlnoise.support``) rather than by the search over Q, how many warm steps
  did, and the largest support (entries above zero) of a column; the full threshold search alone
  (``projection.simplex_thresholds`` on the pre-projection values, the step's fallback, timed in
  the same alternation) in the same passes, and how many reads of Q it took; and floors in the
  same alternation: one read of the search (``projection.column_stats`` at one threshold, the
  least an exact update reads besides its output pass) and XLA's own column sum
  (``jnp.sum(q, axis=0)``), which shows why the search reads in row blocks; and the dense
  gradient's floor, ``q * c - lr * g`` timed as the update is (Q and the gradient read, Q
  written: what any update that takes the gradient as a dense array pays). And the same exact
  update with its pre-projection values written out first as a ``[K, K]`` array (the form
  ``decay_step_project`` avoids), over the update, in the same alternation.
* **Share of an AlexNet step.** The Q update at K = 1000 over nlnoise's jitted AlexNet train
  step (learned Q, K = 1000, batch ``--alexnet-batch``, 128 as Krizhevsky et al.), alternated.
  Target <= 5%.

    .venv/bin/python bench/q_update.py [--quick] [--ks 4096 8192 21841] [--alexnet-batch 128]
    .venv/bin/python bench/q_update.py --ks 21841 --growth 60   # the support along 60 steps

``--quick`` takes fewer warm-up steps and skips the AlexNet share.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

KS = (4096, 8192, 21841)
BATCH = 128
LR, WEIGHT_DECAY = 0.01, 0.1  # AlexNet's learning rate (configs/imagenet_alexnet.py), paper's decay


def _trajectory(k: int, warm_steps: int, seed: int = 0, report=None):
    """Q after ``warm_steps`` learned-Q steps from the identity, its optimizer state, a fresh
    gradient, and the jitted update ``(q, g, state) -> (q, state)`` (q and state donated)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nlnoise import losses, optim, sharding

    rng = np.random.default_rng(seed)
    tx = optim.q_optimizer(LR, weight_decay=WEIGHT_DECAY)
    q = jax.jit(lambda: sharding.pad_q(jnp.eye(k, dtype=jnp.float32)))()
    state = tx.init(q)

    @jax.jit
    def grad(q, logits, labels):
        return jax.grad(lambda qq: jnp.mean(losses.noisy_cross_entropy(
            logits, sharding.unpad_q(qq), labels)))(q)

    def batch():
        true = rng.integers(0, k, BATCH)
        logits = rng.standard_normal((BATCH, k)).astype(np.float32)
        logits[np.arange(BATCH), true] += 4.0
        flip = rng.random(BATCH) < 0.5
        labels = np.where(flip, (true + rng.integers(1, 11, BATCH)) % k, true)
        return jnp.asarray(logits), jnp.asarray(labels, jnp.int32)

    def update(q, g, st):
        u, st = tx.update(g, st, q)
        return q + u, st

    upd = jax.jit(update, donate_argnums=(0, 2))
    for i in range(warm_steps):
        q, state = upd(q, grad(q, *batch()), state)
        if report is not None:
            report(i + 1, q, state)
    g = grad(q, *batch())
    jax.block_until_ready((q, g, state))
    return q, g, state, upd


def _steps_from_support(state, upd, q, g, copy) -> bool:
    """Whether the timed update took its thresholds from the support (not the search)."""
    import jax
    import optax

    before = int(optax.tree.get(state, "support").fast)
    _, st = upd(copy(q), g, jax.tree.map(copy, state))
    return int(optax.tree.get(st, "support").fast) > before


def passes(k: int, repeats: int, warm_steps: int) -> dict[str, Any]:
    """The Q update's time over one elementwise pass over Q, alternated, at one K."""
    import jax
    import jax.numpy as jnp
    import optax

    from nlnoise import projection, support

    q, g, state, upd = _trajectory(k, warm_steps)
    tau = optax.tree.get(state, "tau")
    def pre_projection(q, g):
        return q + (-LR) * (g + WEIGHT_DECAY * q)

    y = jax.jit(pre_projection)(q, g)
    find = jax.jit(lambda y, t: projection.simplex_thresholds(y, t).tau)
    search = int(projection.simplex_thresholds(y, tau).passes)
    read = jax.jit(lambda y, t: projection.column_stats(y, t).n)

    def materialised(q, g, t):
        v = pre_projection(q, g)
        th = projection.simplex_thresholds(v, t)
        return projection.apply_thresholds(v, th, rescale=None), th.tau

    written_out = jax.jit(materialised, donate_argnums=(0,))
    col_sum = jax.jit(lambda y: jnp.sum(y, axis=0))
    copy = jax.jit(jnp.copy)
    scale = jax.jit(lambda x: x * 0.99, donate_argnums=(0,))
    # Every variant that writes Q works in a buffer of its own that lives from repetition to
    # repetition, as the train step's donation keeps Q's buffer from step to step: on this VM a
    # freshly allocated Q-sized buffer streams more slowly, by a varying amount, so fresh copies
    # would time the allocation rather than the work. ``refill`` copies Q into such a buffer in
    # place (donated) before each timed call.
    refill = jax.jit(lambda dst, src: jnp.copy(src), donate_argnums=(0,))
    holder = {name: copy(q) for name in ("scaled", "update", "dense_floor", "written_out")}

    def run_scale(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            holder["scaled"] = scale(holder["scaled"])
        jax.block_until_ready(holder["scaled"])
        return time.perf_counter() - t0

    def in_place(name, fn, *args, state_too: bool = False):
        def run(n: int) -> float:
            total = 0.0
            for _ in range(n):
                # Every repetition starts from the same Q (and state): the inputs are donated.
                qq = holder[name] = jax.block_until_ready(refill(holder[name], q))
                extra = ((jax.block_until_ready(jax.tree.map(copy, state)),)
                         if state_too else ())
                t0 = time.perf_counter()
                out = jax.block_until_ready(fn(qq, *args, *extra))
                total += time.perf_counter() - t0
                holder[name] = out[0] if isinstance(out, tuple) else out
            return total
        return run

    def timer(fn):
        def run(n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                jax.block_until_ready(fn())
            return time.perf_counter() - t0
        return run

    # The least an update with a dense gradient does: read Q and the gradient, write Q.
    dense_floor = jax.jit(lambda q, g: q * (1 - LR * WEIGHT_DECAY) - LR * g, donate_argnums=(0,))
    run_update = in_place("update", upd, g, state_too=True)
    run_dense_floor = in_place("dense_floor", dense_floor, g)
    run_written_out = in_place("written_out", written_out, g, tau)

    sup = optax.tree.get(state, "support")
    small = jax.jit(lambda q, g, s, t: support.thresholds(q, g, pre_projection, s, t, BATCH))
    touched = jax.jit(lambda g: jnp.einsum("ij,ij->i", g, g) != 0)
    runs = {"update": run_update, "pass": run_scale, "search": timer(lambda: find(y, tau)),
            "support": timer(lambda: small(q, g, sup, tau)),
            "touched": timer(lambda: touched(g)),
            "written_out": run_written_out, "dense_floor": run_dense_floor,
            "one_read": timer(lambda: read(y, tau)), "xla_col_sum": timer(lambda: col_sum(y))}
    for fn in runs.values():
        fn(1)
    times = bl.alternate(runs, steps=1, repeats=repeats, warmup=1)
    out = {"k": k, "stored_shape": list(q.shape), "warm_steps": warm_steps,
           "times": bl.summarize(times), "passes": bl.paired_ratio(times, "update", "pass"),
           "search_passes": bl.paired_ratio(times, "search", "pass"),
           "search_reads": search,
           "support_passes": bl.paired_ratio(times, "support", "pass"),
           "touched_passes": bl.paired_ratio(times, "touched", "pass"),
           "one_read_passes": bl.paired_ratio(times, "one_read", "pass"),
           "dense_floor_passes": bl.paired_ratio(times, "dense_floor", "pass"),
           "xla_col_sum_passes": bl.paired_ratio(times, "xla_col_sum", "pass"),
           "update_over_written_out": bl.paired_ratio(times, "update", "written_out"),
           "support_mean": float(jnp.mean(jnp.sum(q > 0, axis=0))),
           "support_max": int(jnp.max(jnp.sum(q > 0, axis=0)[:k])),
           "steps_from_support": _steps_from_support(state, upd, q, g, copy),
           "warm_steps_from_support": int(optax.tree.get(state, "support").fast)}
    print(f"K={k:6d} update {bl.median(times['update']) * 1e3:9.1f} ms  pass "
          f"{bl.median(times['pass']) * 1e3:8.1f} ms  update/pass {out['passes']:6.2f}  "
          f"of which the search {out['search_passes']:6.2f} ({search} reads); one read "
          f"{out['one_read_passes']:.2f}, XLA's column sum {out['xla_col_sum_passes']:.2f}, "
          f"q * c - lr * g (the dense gradient's floor) {out['dense_floor_passes']:.2f}; "
          f"update / values written out {out['update_over_written_out']:.2f}; the support's "
          f"search and next lists {out['support_passes']:.2f}, of which finding the touched rows"
          f" {out['touched_passes']:.2f}; thresholds from "
          f"the support: {out['steps_from_support']} (warm steps {out['warm_steps_from_support']}"
          f"/{warm_steps}), support max {out['support_max']}",
          flush=True)
    jax.clear_caches()
    return out


def support_growth(k: int, steps: int) -> list[dict[str, Any]]:
    """The largest support of a column and the steps that took their thresholds from the
    support, every 5 steps of the benchmark's trajectory."""
    import jax.numpy as jnp
    import optax

    out = []

    def report(n, q, state):
        if n % 5:
            return
        row = {"step": n, "support_max": int(jnp.max(jnp.sum(q[:, :k] > 0, axis=0))),
               "steps_from_support": int(optax.tree.get(state, "support").fast)}
        print(f"K={k} after {n} steps: largest support {row['support_max']}, steps from the "
              f"support {row['steps_from_support']}", flush=True)
        out.append(row)

    _trajectory(k, steps, report=report)
    return out


def alexnet_share(repeats: int, batch: int) -> dict[str, Any]:
    """The Q update at K = 1000 over nlnoise's AlexNet train step (learned Q), alternated."""
    import jax
    import jax.numpy as jnp

    k = 1000
    q, g, state, upd = _trajectory(k, warm_steps=10)
    copy = jax.jit(jnp.copy)

    def run_update(n: int) -> float:
        total = 0.0
        for _ in range(n):
            qq, st = jax.block_until_ready((copy(q), jax.tree.map(copy, state)))
            t0 = time.perf_counter()
            jax.block_until_ready(upd(qq, g, st))
            total += time.perf_counter() - t0
        return total

    step, _ = bl.nlnoise_step("alexnet", num_classes=k, batch=batch, image_shape=(227, 227, 3),
                              noise_model="learned")
    step(1)
    run_update(1)
    times = bl.alternate({"q_update": run_update, "alexnet_step": step}, steps=1,
                         repeats=repeats, warmup=1)
    share = bl.paired_ratio(times, "q_update", "alexnet_step")
    bl.print_times(f"AlexNet K={k} batch {batch}", times, {"alexnet_step": batch})
    print(f"Q update / AlexNet step: {share:.2%}", flush=True)
    return {"times": bl.summarize(times), "share": share, "batch": batch}


def run(quick: bool = False, repeats: int = 5, ks: tuple[int, ...] = KS,
        alexnet_batch: int = 128) -> dict[str, Any]:
    """Measures item 1 of issue 18; returns ``{"rows": [...], "details": {...}}``."""
    per_k = [passes(k, repeats, warm_steps=3 if quick else 10) for k in ks]
    top = per_k[-1]
    rows = [bl.row(f"Q update / one elementwise pass over Q, K={top['k']}", top["passes"],
                   ".2f", "<= 3", top["passes"] <= 3,
                   f"thresholds from the support: {top['steps_from_support']} (largest "
                   f"support {top['support_max']}); the full search, its fallback, alone "
                   f"{top['search_passes']:.1f} passes ({top['search_reads']} reads of Q, one "
                   f"read {top['one_read_passes']:.1f})",
                   item=18.1, unit="passes")]
    rows += [bl.row(f"Q update / one pass over Q, K={r['k']}", r["passes"], ".2f", "(figure)",
                    None, f"search {r['search_passes']:.1f} passes ({r['search_reads']} reads)",
                    item=18.1, unit="passes")
             for r in per_k[:-1]]
    rows.append(bl.row(f"floor: one read of the threshold search / one pass, K={top['k']}",
                       top["one_read_passes"], ".2f", "(figure)", None,
                       f"XLA's own column sum jnp.sum(q, axis=0): {top['xla_col_sum_passes']:.1f}"
                       " passes; an exact update reads Q at least once and writes it once",
                       item=18.1, unit="passes"))
    rows.append(bl.row(f"floor: Q and a dense gradient read, Q written (q * c - lr * g) / one "
                       f"pass, K={top['k']}", top["dense_floor_passes"], ".2f", "(figure)", None,
                       "timed as the update is (a fresh copy of Q, donated); any exact update "
                       "that takes the gradient as a dense array pays it", item=18.1,
                       unit="passes"))
    details: dict[str, Any] = {"per_k": per_k}
    if not quick:
        share = alexnet_share(repeats, alexnet_batch)
        details["alexnet"] = share
        rows.append(bl.row(f"Q update / AlexNet step, K=1000, batch {alexnet_batch}",
                           share["share"] * 100, ".2f", "<= 5%", share["share"] <= 0.05,
                           "the update is a few passes over a 4 MB Q; the step is convolutions",
                           item=18.1, unit="%"))
    return {"rows": rows, "details": details}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS))
    parser.add_argument("--alexnet-batch", type=int, default=128)
    parser.add_argument("--growth", type=int, default=0, metavar="STEPS",
                        help="only follow the support along STEPS steps of the trajectory, at "
                             "the last of --ks")
    args = parser.parse_args()
    if args.growth:
        support_growth(args.ks[-1], args.growth)
        return
    out = run(args.quick, args.repeats, tuple(args.ks), args.alexnet_batch)
    print(bl.markdown_table(out["rows"]))
    print(bl.write_json("q_update", {"machine": bl.machine_info(), **out}))


if __name__ == "__main__":
    main()
