"""Benchmark (not a test): item 1, what was tried -- other ways to compute conv1 of layers18pct.

conv1 sees the 3-channel image, where XLA:CPU's kernels are least efficient. Timed in
alternation on ``[128, 32, 32, 3]`` input, 5x5 kernel, 32 filters, padding 2 (values checked
against ``lax.conv_general_dilated`` and its VJP):

* forward: XLA's convolution against im2col + one matmul, and against a row-wise im2col
  (5 matmuls of depth 15, summed);
* kernel gradient: XLA's own (the VJP of the convolution), nlnoise's row-wise im2col
  (``nlnoise.models.layers18pct._kernel_grad_rows``, what the model uses) and a variant that
  builds the W-shifted patches once in ``[H, B, W, kw*C]`` layout so each kernel row is a
  contiguous slice (contracting over the leading axis).

    .venv/bin/python bench/conv1_variants.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

PAD = ((2, 2), (2, 2))


def _conv(x, w):
    from jax import lax

    return lax.conv_general_dilated(x, w, (1, 1), PAD, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def fwd_im2col(x, w):
    """One ``[B*H*W, 75] @ [75, 32]`` matmul on stacked patches."""
    import jax.numpy as jnp

    kh, kw, cin, cout = w.shape
    b, h, wd, _ = x.shape
    xp = jnp.pad(x, ((0, 0), *PAD, (0, 0)))
    p = jnp.concatenate([xp[:, i:i + h, j:j + wd, :] for i in range(kh) for j in range(kw)], -1)
    return jnp.dot(p.reshape(-1, kh * kw * cin), w.reshape(-1, cout)).reshape(b, h, wd, cout)


def fwd_rows(x, w):
    """Per kernel row: ``[B*H*W, kw*C] @ [kw*C, 32]``, summed over rows."""
    import jax.numpy as jnp

    kh, kw, cin, cout = w.shape
    b, h, wd, _ = x.shape
    xp = jnp.pad(x, ((0, 0), *PAD, (0, 0)))
    cols = jnp.concatenate([xp[:, :, j:j + wd, :] for j in range(kw)], axis=-1)
    out = None
    for i in range(kh):
        t = jnp.dot(cols[:, i:i + h].reshape(-1, kw * cin), w[i].reshape(-1, cout))
        out = t if out is None else out + t
    return out.reshape(b, h, wd, cout)


def kgrad_xla(x, g):
    import jax
    import jax.numpy as jnp

    return jax.vjp(lambda w: _conv(x, w), jnp.zeros((5, 5, x.shape[-1], g.shape[-1])))[1](g)[0]


def kgrad_rows(x, g):
    from nlnoise.models import layers18pct

    return layers18pct._kernel_grad_rows(x, g, 5, 5, 1, PAD)


def kgrad_hbwc(x, g, kh: int = 5, kw: int = 5):
    """Patches ``[Hp, B, OW, kw*C]`` built once; row ``i`` is the slice ``[i:i+OH]``."""
    import jax.numpy as jnp
    from jax import lax

    _, oh, ow, cout = g.shape
    cin = x.shape[-1]
    xp = jnp.pad(jnp.transpose(x, (1, 0, 2, 3)), (PAD[0], (0, 0), PAD[1], (0, 0)))
    xw = jnp.concatenate([xp[:, :, j:j + ow, :] for j in range(kw)], axis=-1)
    gt = jnp.transpose(g, (1, 0, 2, 3)).reshape(-1, cout)
    rows = [lax.dot_general(xw[i:i + oh].reshape(-1, kw * cin), gt, (((0,), (0,)), ((), ())))
            for i in range(kh)]
    return jnp.stack(rows).reshape(kh, kw, cin, cout)


def _runner(f, *args) -> bl.Runner:
    def r(n: int) -> float:
        t0 = time.perf_counter()
        out = None
        for _ in range(n):
            out = f(*args)
        out.block_until_ready()
        return time.perf_counter() - t0

    return r


def run(quick: bool = False, repeats: int = 7) -> dict[str, Any]:
    """Alternated timings of the forward and kernel-gradient variants."""
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.key(0), (128, 32, 32, 3), jnp.float32)
    w = 0.01 * jax.random.normal(jax.random.key(1), (5, 5, 3, 32), jnp.float32)
    g = jax.random.normal(jax.random.key(2), (128, 32, 32, 32), jnp.float32)
    details: dict[str, Any] = {}
    rows = []
    for group, fns, args, ref in (
        ("forward", {"xla_conv": _conv, "im2col_matmul": fwd_im2col, "rowwise_im2col": fwd_rows},
         (x, w), "xla_conv"),
        ("kernel_grad", {"xla_vjp": kgrad_xla, "nlnoise_rowwise_im2col": kgrad_rows,
                         "hbwc_contiguous_rows": kgrad_hbwc}, (x, g), "nlnoise_rowwise_im2col"),
    ):
        jitted = {n: jax.jit(f) for n, f in fns.items()}
        base = jitted[next(iter(jitted))](*args)
        err = {n: float(jnp.max(jnp.abs(f(*args) - base)) / jnp.max(jnp.abs(base)))
               for n, f in jitted.items()}
        times = bl.alternate({n: _runner(f, *args) for n, f in jitted.items()},
                             steps=3 if quick else 5, repeats=repeats, warmup=1)
        bl.print_times(f"conv1 {group}", times, {})
        rel = {n: bl.paired_ratio(times, n, ref) for n in times}
        details[group] = {"times": bl.summarize(times), "time_over_used": rel,
                          "max_rel_diff": err}
        for n in times:
            if n != ref:
                rows.append(bl.row(f"conv1 {group}: {n} time / {ref} time", rel[n], ".2f",
                                   "(tried)", None, f"{bl.median(times[n]) * 1e3:.0f} ms vs "
                                   f"{bl.median(times[ref]) * 1e3:.0f} ms", item=1))
    return {"rows": rows, "details": details}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    out = run(args.quick, args.repeats)
    print(bl.markdown_table(out["rows"]))
    print(bl.write_json("conv1_variants", {"machine": bl.machine_info(), **out}))


if __name__ == "__main__":
    main()
