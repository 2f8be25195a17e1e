"""The train state and the pure train/eval steps, for ``nlnoise-train`` and for users' own loops.

Importing this module needs jax, flax and optax only (not ml_collections, orbax, grain or
:mod:`nlnoise.data`), so a TPU user or a notebook can take :func:`jit_train_step` alone.

Q in the state is ``state.q``, ``[K_noisy, K_true]``, column-stochastic
(``q[j, i] = p(noisy=j | true=i)``); ``params["q"]`` is its storage form, padded for
K >= 1024. Evaluation and prediction never use it: the noise layer is removed and
predictions are ``softmax(f(x))``.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from nlnoise import losses, sharding

# The noise models on top of the softmax (``noise.model`` in a config).
NOISE_MODELS = ("none", "learned", "true", "outlier")

# Bits of TrainState.bad_what: which quantity was non-finite at TrainState.bad_step.
BAD_LOSS, BAD_GRADS, BAD_Q, BAD_PARAMS = 1, 2, 4, 8
_BAD_NAMES = {BAD_LOSS: "loss", BAD_GRADS: "gradients", BAD_Q: "Q", BAD_PARAMS: "parameters"}
# TrainState's array fields that make a resumable checkpoint (the logging window is not one).
CHECKPOINT_FIELDS = ("step", "params", "opt_state", "rng", "bad_step", "bad_what", "q_stats")


class NonFiniteError(FloatingPointError):
    """Training produced NaN/inf; the message names the step and the quantity."""


class TrainState(struct.PyTreeNode):
    """Everything that changes during training, as one pytree.

    ``params`` is ``{"net": <network params>, "q": [K_noisy, K_true]}``; for K >= 1024 Q is
    stored with zero columns appended (``sharding.q_storage_columns``) so that it shards
    evenly; :attr:`q` is always the square ``[K, K]`` matrix. ``rng`` is the base
    key; step ``t`` uses ``fold_in(rng, t)``, so a resumed run draws the same dropout masks.
    ``bad_step`` is -1 while every step has been finite; otherwise the first step whose loss,
    gradients or new Q were not (``bad_what`` says which, as ``BAD_*`` bits). From that step
    on the parameters are held at their last finite values, so no bad state can be saved.

    ``q_stats`` (``[K_noisy, K_true]``) accumulates ``sum_n onehot(noisy_n) softmax(f(x_n))^T``
    over steps ``[q_stats_from, q_init_step)``; at step ``q_init_step`` Q is set to its
    column-normalised value ``P(noisy = j | network says i)`` (the ``confusion`` start of
    learned Q, see :func:`confusion_q`). ``q_init_step = -1`` disables it.

    ``window`` holds on-device sums over the steps since it was last zeroed
    (:func:`zero_window`): ``loss`` and ``noisy_error`` (sums of the per-step means) and
    ``count`` (steps). A loop reads them only when it logs, so no step waits for the host.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    bad_step: jax.Array
    bad_what: jax.Array
    q_stats: jax.Array
    window: dict[str, jax.Array]
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    noise_model: str = struct.field(pytree_node=False)
    num_classes: int = struct.field(pytree_node=False)
    q_init_step: int = struct.field(pytree_node=False, default=-1)
    q_stats_from: int = struct.field(pytree_node=False, default=0)

    @property
    def q(self) -> jax.Array:
        """The noise matrix ``[K_noisy, K_true]``, ``q[j, i] = p(noisy=j | true=i)``, unpadded."""
        return sharding.unpad_q(self.params["q"])

    def checkpoint_items(self) -> dict[str, Any]:
        """The pytree that resumes training: every array field but ``window``, no functions.

        Also works on a ``TrainState`` of shardings or abstract arrays (a restore target).
        """
        return {f: getattr(self, f) for f in CHECKPOINT_FIELDS}


def zero_window() -> dict[str, jax.Array]:
    """Empty logging-window sums (see :class:`TrainState`): float32 ``loss`` and
    ``noisy_error``, int32 ``count``, all scalars."""
    return {"loss": jnp.zeros((), jnp.float32), "noisy_error": jnp.zeros((), jnp.float32),
            "count": jnp.zeros((), jnp.int32)}


def window_means(window: dict[str, Any]) -> dict[str, float]:
    """Host-side means of a fetched window: ``train_loss`` and ``noisy_train_error``."""
    n = max(int(window["count"]), 1)
    return {"train_loss": float(window["loss"]) / n,
            "noisy_train_error": float(window["noisy_error"]) / n}


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    input_shape: tuple[int, ...],
    q_init: np.ndarray | jax.Array,
    noise_model: str,
    num_classes: int,
    seed: int = 0,
    q_init_step: int = -1,
    q_stats_from: int = 0,
) -> TrainState:
    """Initialises the network from ``seed`` and Q to ``q_init`` (``[K_out, K_out]``).

    ``noise_model`` is one of :data:`NOISE_MODELS`; only ``learned`` lets ``tx`` change Q.
    ``num_classes`` is the number of inlier classes K (the model may output K+1).
    ``input_shape`` is one example's ``(H, W, C)``. ``q_init_step``/``q_stats_from``: see
    :class:`TrainState` (learned Q only). Q is stored padded for K >= 1024 (see
    :class:`TrainState`).
    """
    if noise_model not in NOISE_MODELS:
        raise ValueError(f"noise.model: must be one of {NOISE_MODELS}, got {noise_model!r}.")
    init_key, rng = jax.random.split(jax.random.key(seed))
    variables = model.init(init_key, jnp.zeros((1, *input_shape), jnp.float32), train=False)
    params = {"net": variables["params"],
              "q": sharding.pad_q(jnp.asarray(q_init, jnp.float32))}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(rng),
        bad_step=jnp.full((), -1, jnp.int32),
        bad_what=jnp.zeros((), jnp.int32),
        q_stats=jnp.zeros(params["q"].shape, jnp.float32),
        window=zero_window(),
        apply_fn=model.apply,
        tx=tx,
        noise_model=noise_model,
        num_classes=num_classes,
        q_init_step=int(q_init_step) if noise_model == "learned" else -1,
        q_stats_from=int(q_stats_from),
    )


def confusion_q(stats: jax.Array) -> jax.Array:
    """Column-normalised soft confusion ``P(noisy = j | network predicts i)``, ``[Kn, Kt]``.

    From ``stats[j, i] = sum_n onehot(noisy_n)_j p_n[i]``. If the network is accurate on the
    true classes this is ``Q* R`` with ``R`` close to the identity, so learned Q starts near Q*
    instead of diffusing away from the identity (an estimate that needs no clean labels, cf.
    Goldberger & Ben-Reuven 2017). A column without mass falls back to the identity's.
    """
    totals = stats.sum(axis=0, keepdims=True)
    eye = jnp.eye(*stats.shape, dtype=stats.dtype)
    return jnp.where(totals > 0, stats / jnp.where(totals > 0, totals, 1), eye)


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else True


def _confusion_start(state: TrainState) -> TrainState:
    """At step ``q_init_step``, Q becomes :func:`confusion_q` of the gathered statistics, before
    that step's forward pass (exactly once); other steps are unchanged."""
    if state.q_init_step < 0:
        return state
    at_init = state.step == state.q_init_step
    q0 = jnp.where(at_init, confusion_q(state.q_stats), state.params["q"])
    return state.replace(params={**state.params, "q": q0})


def _update(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
    """The SGD update on the mean noisy cross entropy (Eqn 3).

    Returns ``(loss, logits, grads, new_params, new_opt_state)``; Q gets gradients only for the
    ``learned`` model, and the noise layer is skipped for ``none``.
    """
    use_q = state.noise_model != "none"

    def loss_fn(params):
        logits = state.apply_fn({"params": params["net"]}, batch["image"], train=True,
                                rngs={"dropout": rng})
        q = sharding.unpad_q(params["q"])
        q = q if state.noise_model == "learned" else jax.lax.stop_gradient(q)
        per_example = losses.noisy_cross_entropy(logits, q if use_q else None, batch["label"])
        return jnp.mean(per_example), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    return loss, logits, grads, optax.apply_updates(state.params, updates), opt_state


def _finite_guard(state: TrainState, loss, grads, params):
    """Whether this step may be applied, and the ``bad_step``/``bad_what`` to record.

    Returns ``(ok, bad_step, bad_what)``: ``ok`` is False for a non-finite step and for every
    step after the first one (everything is held until :func:`check_finite` reports it).
    """
    finite = {BAD_LOSS: jnp.isfinite(loss), BAD_GRADS: _all_finite(grads),
              BAD_Q: _all_finite(params["q"]), BAD_PARAMS: _all_finite(params["net"])}
    step_ok = functools.reduce(jnp.logical_and, finite.values())
    what = sum(jnp.where(v, 0, bit) for bit, v in finite.items())
    first = (state.bad_step < 0) & ~step_ok
    ok = step_ok & (state.bad_step < 0)
    return (ok, jnp.where(first, state.step, state.bad_step),
            jnp.where(first, what, state.bad_what))


def _q_stats(state: TrainState, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``q_stats`` plus this batch's ``sum_n onehot(noisy_n) softmax(f(x_n))^T`` while the step
    lies in ``[q_stats_from, q_init_step)`` (the confusion start's statistics)."""
    q_stats = state.q_stats
    if state.q_init_step < 0:
        return q_stats
    in_window = (state.step >= state.q_stats_from) & (state.step < state.q_init_step)
    counts = jax.ops.segment_sum(jax.nn.softmax(logits.astype(jnp.float32), -1), labels,
                                 num_segments=q_stats.shape[0])
    counts = jnp.pad(counts, ((0, 0), (0, q_stats.shape[1] - counts.shape[1])))
    return q_stats + jnp.where(in_window, counts, 0)


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on the noisy-label loss (Eqn 3). Pure; jit it (see :func:`jit_train_step`).

    Args:
      state: the train state.
      batch: ``image`` ``[B, H, W, C]`` float32 and ``label`` ``[B]`` int32 noisy labels in
        ``[0, K_noisy)``. Clean labels and outlier flags, if present, are ignored.
      rng: a PRNG key for dropout.

    Returns:
      The new state (its ``window`` sums include this step) and device scalars: ``loss``
      (mean noisy cross entropy), ``noisy_error`` (the combined model's error on the noisy
      labels), ``q_trace`` and ``grad_norm``.
    """
    state = _confusion_start(state)
    loss, logits, grads, params, opt_state = _update(state, batch, rng)
    ok, bad_step, bad_what = _finite_guard(state, loss, grads, params)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    q_stats = _q_stats(state, logits, batch["label"])

    use_q = state.noise_model != "none"
    pred = jnp.argmax(losses.noisy_probs(logits, state.q) if use_q else logits, -1)
    metrics = {
        "loss": loss,
        "noisy_error": jnp.mean(pred != batch["label"]),
        "q_trace": jnp.trace(state.q),
        "grad_norm": optax.tree.norm(grads["net"]),
    }
    w = state.window
    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        bad_step=bad_step,
        bad_what=bad_what,
        q_stats=jnp.where(ok, q_stats, state.q_stats),
        window={"loss": w["loss"] + loss, "noisy_error": w["noisy_error"]
                + metrics["noisy_error"], "count": w["count"] + 1},
    )
    return new_state, metrics


def predict(state: TrainState, images: jax.Array) -> jax.Array:
    """Clean-label logits ``f(x)`` with the noise layer removed: ``[B, K_out]``."""
    return state.apply_fn({"params": state.params["net"]}, images, train=False)


def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-example predictions with the noise layer removed. Pure; jit it.

    Returns ``pred`` (argmax over the K inlier classes), ``correct`` (against ``batch["label"]``,
    the clean label), ``outlier_score`` (the K+1-th softmax output for models with an outlier
    class, else the softmax entropy, the paper's proxy) and ``mask`` (False for padding).
    """
    logits = predict(state, batch["image"]).astype(jnp.float32)
    k = state.num_classes
    pred = jnp.argmax(logits[:, :k], axis=-1)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    if logits.shape[-1] > k:
        score = jnp.exp(log_p[:, k])
    else:
        score = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
    mask = batch.get("mask", jnp.ones(pred.shape, bool))
    return {"pred": pred, "correct": (pred == batch["label"]) & mask, "outlier_score": score,
            "mask": mask}


def val_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-example fit of the *combined* model to noisy labels (Eqn 3's terms). Pure; jit it.

    ``batch["label"]`` are noisy labels of held-out training examples. Returns ``nll``
    (``-log (Q p)_label``, or ``-log p_label`` for ``noise_model="none"``), ``noisy_correct``
    (the combined model's argmax equals the label) and ``mask``. Its mean over a held-out
    split scores a model against noisy labels only, so it can select among epochs or runs
    without a clean label: a Q more diffuse than the noise, or a network that memorised
    training flips, both raise it.
    """
    logits = predict(state, batch["image"]).astype(jnp.float32)
    q = state.q if state.noise_model != "none" else None
    nll = losses.noisy_cross_entropy(logits, q, batch["label"])
    pred = jnp.argmax(losses.noisy_probs(logits, q) if q is not None else logits, -1)
    mask = batch.get("mask", jnp.ones(pred.shape, bool))
    return {"nll": nll, "noisy_correct": (pred == batch["label"]) & mask, "mask": mask}


def jit_train_step(mesh: jax.sharding.Mesh, state_sharding: Any
                   ) -> Callable[[TrainState, dict[str, jax.Array]],
                                 tuple[TrainState, dict[str, jax.Array]]]:
    """``train_step`` jitted over ``mesh``: ``step(state, batch) -> (state, metrics)``.

    The state is sharded as ``state_sharding`` (``sharding.state_shardings``) and donated; the
    batch is split over ``data``; the metrics are replicated. The per-step dropout key is
    ``fold_in(state.rng, state.step)``. ``nlnoise-train``, the tests and the benchmarks all
    run this one function; the logging window's sums stay on device in ``state.window``. In
    your own loop on a CPU host split into several devices, pass each step's metrics to a
    :class:`DispatchWindow`: XLA:CPU can deadlock when the host runs 32 steps ahead.
    """
    batch_sh = sharding.batch_sharding(mesh)
    repl = sharding.replicated(mesh)

    def step(state, batch):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        return train_step(state, batch, rng)

    return jax.jit(step, in_shardings=(state_sharding, batch_sh),
                   out_shardings=(state_sharding, repl), donate_argnums=(0,))


def jit_eval_step(mesh: jax.sharding.Mesh, state_sharding: Any, fn: Callable = eval_step
                  ) -> Callable[[TrainState, dict[str, jax.Array]], dict[str, jax.Array]]:
    """``eval_step`` (or ``fn``, e.g. :func:`val_step`) jitted over ``mesh``; outputs stay
    sharded over ``data``."""
    batch_sh = sharding.batch_sharding(mesh)
    return jax.jit(fn, in_shardings=(state_sharding, batch_sh), out_shardings=batch_sh)


# Steps a loop may dispatch ahead of the device. XLA:CPU (jaxlib 0.10.2) runs each device's share
# of a multi-device program on a client thread pool of max(cores, devices) threads, and a
# device takes at most 32 computations in flight: once the host is 32 launches ahead, the next
# launch's per-device tasks take pool threads and block on that limit, while the oldest launch
# needs every device at its all-reduce at once. With fewer cores than devices (a CPU host split
# by mesh.cpu_devices) the all-reduce then waits forever and XLA ends the process after 40 s.
# Two or three steps ahead keep the device fed; more buys nothing.
MAX_STEPS_IN_FLIGHT = 3


class DispatchWindow:
    """Bounds how many dispatched steps may still be running; use it in any loop over
    :func:`jit_train_step` on a multi-device CPU mesh (see ``MAX_STEPS_IN_FLIGHT``).

    ``push(out)`` takes an output of the newest step that is not donated to the next one (its
    metrics) and waits for the step ``limit`` launches back to finish.
    """

    def __init__(self, limit: int | None = None):
        limit = MAX_STEPS_IN_FLIGHT if limit is None else limit
        if limit < 1:
            raise ValueError(f"DispatchWindow: limit={limit}; it must be >= 1.")
        self.limit = limit
        self._pending: collections.deque = collections.deque()

    def push(self, out: Any) -> None:
        """Records ``out`` and blocks until at most ``limit`` pushed outputs are unfinished."""
        self._pending.append(out)
        while len(self._pending) > self.limit:
            jax.block_until_ready(self._pending.popleft())

    def __len__(self) -> int:
        return len(self._pending)


def check_finite(state: TrainState) -> None:
    """Raises :class:`NonFiniteError` if any step so far produced NaN/inf."""
    bad_step = int(jax.device_get(state.bad_step))
    if bad_step >= 0:
        what = int(jax.device_get(state.bad_what))
        names = [name for bit, name in _BAD_NAMES.items() if what & bit]
        raise NonFiniteError(
            f"non-finite {' and '.join(names)} at step {bad_step}. Parameters and Q were held at "
            f"their values before that step and nothing after it was checkpointed. Lower the "
            f"learning rate, check the input data, or resume from the last checkpoint."
        )


def host_params(state: TrainState) -> Any:
    """The parameters as numpy arrays on every process (gathered if sharded across hosts)."""
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(state.params, tiled=True))


def params_digest(params: Any) -> str:
    """sha256 over every parameter's bytes: equal digests mean bit-identical parameters."""
    import hashlib

    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()
