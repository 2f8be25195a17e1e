"""Benchmark (not a test): item 6 -- memory and time of the noise layer and Q's update in K.

For K = 10, 100, 1000, 10000, 21841 (ImageNet-22k), on one device:

* ``noise layer``: value and gradient (w.r.t. logits and Q) of the mean
  ``nlnoise.losses.noisy_cross_entropy`` at batch 128;
* ``Q update``: ``nlnoise.optim.q_optimizer`` (decay, learning rate, per-column simplex
  projection, sort-free for K >= ``projection.NEWTON_MIN_K``) applied once, as in every train step
  after the freeze; without ``--quick`` also optax's sort projection alone for K <= 10000;
* memory: Q's bytes and the peak temporary bytes XLA allocates for each (``memory_analysis``).

Then, in a subprocess with 8 simulated devices, Q sharded by ``nlnoise.sharding`` over a
``model`` axis of N = 1, 2, 4, 8 devices: bytes of Q per device (allocated) and the
compiled Q update's per-device memory (K = 10000 and 21841; Q stored with its columns padded to
``sharding.q_storage_columns(K)``, so that every N divides them).

    .venv/bin/python bench/scaling_k.py [--quick: no timing of the sort projection alone]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

KS = (10, 100, 1000, 10000, 21841)
BATCH = 128


def _timed(fn, args, repeats: int) -> list[float]:
    import jax

    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        out.append(time.perf_counter() - t0)
    return out


def _mem(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    return {"argument_bytes": int(m.argument_size_in_bytes),
            "output_bytes": int(m.output_size_in_bytes),
            "temp_bytes": int(m.temp_size_in_bytes)}


def one_k(k: int, repeats: int, time_update: bool, sort_reference: bool) -> dict[str, Any]:
    """Time and memory of the noise layer and of Q's update for one K."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nlnoise import losses, optim, projection

    # A Q that is not on a face of the simplex, so the projection does real work.
    q = jnp.asarray(np.eye(k, dtype=np.float32) * 0.5 + 0.5 / k)
    logits = jax.random.normal(jax.random.key(0), (BATCH, k), jnp.float32)
    labels = jnp.arange(BATCH, dtype=jnp.int32) % k

    def loss(lg, qq):
        return jnp.mean(losses.noisy_cross_entropy(lg, qq, labels))

    layer = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(logits, q).compile()
    tx = optim.q_optimizer(1e-3, weight_decay=0.1, freeze_steps=0)
    opt_state = tx.init(q)

    def update(qq, g, st):
        u, st = tx.update(g, st, qq)
        return qq + u, st

    upd = jax.jit(update).lower(q, q, opt_state).compile()
    out: dict[str, Any] = {"k": k, "q_bytes": k * k * 4, "noise_layer_mem": _mem(layer),
                           "q_update_mem": _mem(upd)}
    layer(logits, q)  # warm-up, not timed
    lt = _timed(layer, (logits, q), repeats)
    out["noise_layer_s"] = {"median": bl.median(lt), "n": len(lt)}
    # Fewer timings at K >= 10^4: a scale, not an A/B comparison, and each update takes seconds.
    reps = repeats if k <= 1000 else max(1, repeats // 5 if k > 10000 else repeats // 2)
    if time_update:
        if k <= 1000:
            upd(q, q, opt_state)
        ut = _timed(upd, (q, q, opt_state), reps)
        out["q_update_s"] = {"median": bl.median(ut), "n": len(ut)}
    if sort_reference and k <= 10000:
        # optax's sort projection alone, the "before" of the update (too slow at 21841).
        srt = jax.jit(lambda x: projection.project_columns(x, "sort")).lower(q).compile()
        got = jax.jit(lambda x: projection.project_columns(x, "newton"))(q)
        st = _timed(srt, (q,), reps)
        out["sort_projection_s"] = {"median": bl.median(st), "n": len(st)}
        out["newton_vs_sort_max_abs_diff"] = float(jnp.max(jnp.abs(got - srt(q))))
    print(f"K={k:6d} Q {out['q_bytes'] / 2**20:9.1f} MiB  layer "
          f"{out['noise_layer_s']['median'] * 1e3:9.2f} ms  update "
          f"{out.get('q_update_s', {}).get('median', float('nan')) * 1e3:10.1f} ms  "
          f"update temp {out['q_update_mem']['temp_bytes'] / 2**20:9.1f} MiB", flush=True)
    del layer, upd
    jax.clear_caches()
    return out


def sharded_worker() -> None:
    """Runs under 8 simulated devices; prints one JSON line of per-device Q memory."""
    import jax
    import jax.numpy as jnp

    from nlnoise import optim, sharding

    res: dict[str, Any] = {"devices": jax.device_count(), "rows": []}
    for k in (10000, 21841):
        # Q as nlnoise stores it: columns padded to sharding.q_storage_columns(k).
        shape = (k, sharding.q_storage_columns(k))
        for n in (1, 2, 4, 8):
            mesh = sharding.make_mesh(1, n)
            abstract = {"params": {"q": jax.ShapeDtypeStruct(shape, jnp.float32)}}
            sh = sharding.state_shardings(mesh, abstract)["params"]["q"]
            r: dict[str, Any] = {"k": k, "n": n, "spec": str(sh.spec), "stored_shape": shape,
                                 "q_shard_shape": list(sh.shard_shape(shape))}
            tx = optim.q_optimizer(1e-3, weight_decay=0.1, freeze_steps=0)
            st_abs = jax.eval_shape(tx.init, abstract["params"]["q"])
            st_sh = jax.tree.map(lambda _, m=mesh: sharding.replicated(m), st_abs)

            def update(qq, g, st, tx=tx):
                u, st = tx.update(g, st, qq)
                return qq + u, st

            qa = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sh)
            compiled = jax.jit(update, in_shardings=(sh, sh, st_sh),
                               out_shardings=(sh, st_sh)).lower(qa, qa, st_abs).compile()
            r["q_update_mem_per_device"] = _mem(compiled)
            q = jax.jit(lambda kk=k: sharding.pad_q(jnp.eye(kk, dtype=jnp.float32)),
                        out_shardings=sh)()
            r["q_bytes_per_device_allocated"] = sharding.per_device_bytes(q)
            del q
            res["rows"].append(r)
    print(json.dumps(res), flush=True)


def run(quick: bool = False, repeats: int = 5) -> dict[str, Any]:
    """Measures item 6; returns ``{"rows": [...], "details": {...}}``."""
    per_k = []
    for k in KS:
        # Q's update uses the sort-free projection ("auto"), seconds even at 21841; quick mode
        # skips timing optax's sort alone (~25 s per call at K=10^4).
        per_k.append(one_k(k, repeats, time_update=True, sort_reference=not quick))
    proc = subprocess.run([sys.executable, __file__, "--sharded-worker"], capture_output=True,
                          text=True, env={**__import__("os").environ, **bl.device_env(8)},
                          cwd=bl.REPO, timeout=1800)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if not lines:
        raise RuntimeError(f"sharded worker failed:\n{proc.stderr[-3000:]}")
    shard = json.loads(lines[-1])
    for r in shard["rows"]:
        print(f"K={r['k']:6d} N={r['n']} spec={r['spec']:22s} Q/device "
              f"{r['q_bytes_per_device_allocated'] / 2**20:9.1f} MiB  update temp "
              f"{r['q_update_mem_per_device'].get('temp_bytes', 0) / 2**20:9.1f} MiB")

    by = {(r["k"], r["n"]): r for r in shard["rows"]}

    def falls(k: int, key) -> bool:
        return all(key(by[(k, n)]) * n <= key(by[(k, 1)]) for n in (2, 4, 8))

    alloc = lambda r: r["q_bytes_per_device_allocated"]
    temp = lambda r: r["q_update_mem_per_device"].get("temp_bytes", 0)
    big = per_k[-1]
    rows = [
        bl.row("noise layer fwd+bwd, batch 128, K=21841", big["noise_layer_s"]["median"] * 1e3,
               ".0f", "(figure)", None, "dense [K, K] gradient of Q (1.9 GB) written every step",
               item=6, unit="ms"),
        bl.row("Q update (decay + projection), K=1000", per_k[2]["q_update_s"]["median"] * 1e3,
               ".1f", "(figure)", None, "sort-free Newton projection (projection.project_columns)",
               item=6, unit="ms"),
        bl.row("Q update (decay + projection), K=10000", per_k[3]["q_update_s"]["median"],
               ".2f", "(figure)", None, "sort-free Newton projection", item=6, unit="s"),
        bl.row("Q update, K=21841", big.get("q_update_s", {}).get("median"), ".1f", "(figure)",
               None, "sort-free Newton projection of 4.8e8 floats", item=6, unit="s"),
        bl.row("per-device Q memory, Q sharded on N=1,2,4,8 (K=10000, allocated)",
               alloc(by[(10000, 8)]) / 2**20, ".1f", "falls as 1/N", falls(10000, alloc),
               "exact: Q split by columns (stored 10000 x 10112)", item=6, unit="MiB at N=8"),
        bl.row("per-device Q memory, K=21841 (allocated)", alloc(by[(21841, 8)]) / 2**20,
               ".0f", "falls as 1/N", falls(21841, alloc),
               "columns padded to 21888 (sharding.q_storage_columns) so N divides them",
               item=6, unit="MiB at N=8"),
        bl.row("Q update temporaries per device, K=21841", temp(by[(21841, 8)]) / 2**20, ".0f",
               "(figure)", None, f"{temp(by[(21841, 1)]) / 2**20:.0f} MiB on one device",
               item=6, unit="MiB at N=8"),
    ]
    return {"rows": rows, "details": {"per_k": per_k, "sharded": shard}}


def main() -> None:
    bl.bench_main("scaling_k", __doc__, run, sharded_worker, worker_flag="--sharded-worker")


if __name__ == "__main__":
    main()
