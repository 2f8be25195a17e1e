"""``nlnoise-train`` that records every step's loss and gradient norm, for diagnosing instabilities.

    python bench/step_trace.py --config=configs/fashion_mnist.py:runlocal --workdir=/tmp/x \\
        --config.mesh.cpu_devices=-1 [--trace_every=1] [other nlnoise-train flags]

Same flags and behaviour as ``nlnoise-train``. Every step's mean noisy loss, the network's
gradient norm (``grad_norm``, as the train step reports it) and the spread of its logits over
the batch are sent to the host with ``jax.debug.callback``; each ``--trace_every``-th step is
printed, and at the end one ``step_trace:`` line gives the largest gradient norm, its step and the
last step's loss (``ln K`` for a model whose outputs collapsed to uniform). Run it on one
device (``--config.mesh.cpu_devices=-1``): on a split CPU each device would report.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp

from nlnoise import main
from nlnoise import step as step_lib

TRACE: list[tuple[int, float, float, float]] = []


def _every(argv: list[str]) -> tuple[int, list[str]]:
    every, rest = 1, []
    for a in argv:
        if a.startswith("--trace_every="):
            every = int(a.split("=", 1)[1])
        else:
            rest.append(a)
    return every, rest


def traced_step(original):
    """``original`` (:func:`nlnoise.step.train_step`) plus a host callback of its diagnostics."""

    def step(state, batch, rng):
        new, metrics = original(state, batch, rng)
        logits = state.apply_fn({"params": state.params["net"]}, batch["image"], train=False)
        spread = jnp.mean(jnp.std(logits.astype(jnp.float32), axis=0))
        jax.debug.callback(lambda s, loss, g, sp: TRACE.append(
            (int(s), float(loss), float(g), float(sp))), state.step + 1, metrics["loss"],
            metrics["grad_norm"], spread)
        return new, metrics

    return step


if __name__ == "__main__":
    every, sys.argv = _every(sys.argv)
    step_lib.train_step = traced_step(step_lib.train_step)
    try:
        main.run()
    except SystemExit as e:
        code = e.code
    else:
        code = 0
    for s, loss, g, sp in TRACE:
        if s % every == 0:
            print(f"step {s} loss {loss:.4f} grad_norm {g:.3g} logit_spread {sp:.3g}")
    if TRACE:
        s_max, _, g_max, _ = max(TRACE, key=lambda t: t[2])
        print(f"step_trace: steps={len(TRACE)} max_grad_norm={g_max:.3g} at step {s_max}; "
              f"last loss {TRACE[-1][1]:.4f}")
    sys.exit(code)
