"""Train state, the pure train/eval steps, and the config-driven training loop.

Users' own loops need only :class:`TrainState`, :func:`create_train_state`, :func:`train_step`
and :func:`eval_step`; :func:`train_and_evaluate` is the full system (data, mesh, checkpoints,
metrics, plots) behind ``nlnoise-train``.

Q in the state is ``state.q``, ``[K_noisy, K_true]``, column-stochastic
(``q[j, i] = p(noisy=j | true=i)``); ``params["q"]`` is its storage form, padded for
K >= 1024. Evaluation and prediction never use it: the noise layer is removed and
predictions are ``softmax(f(x))``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from nlnoise import config as config_lib
from nlnoise import losses, noise, optim, sharding

log = logging.getLogger("nlnoise")

# Bits of TrainState.bad_what: which quantity was non-finite at TrainState.bad_step.
BAD_LOSS, BAD_GRADS, BAD_Q, BAD_PARAMS = 1, 2, 4, 8
_BAD_NAMES = {BAD_LOSS: "loss", BAD_GRADS: "gradients", BAD_Q: "Q", BAD_PARAMS: "parameters"}


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
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    bad_step: jax.Array
    bad_what: jax.Array
    q_stats: jax.Array
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
        """The pytree that is saved: every array field, no functions."""
        return _items(self)


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

    ``noise_model`` is ``none`` | ``learned`` | ``true`` | ``outlier``; only ``learned`` lets
    ``tx`` change Q. ``num_classes`` is the number of inlier classes K (the model may output
    K+1). ``input_shape`` is one example's ``(H, W, C)``. ``q_init_step``/``q_stats_from``:
    see :class:`TrainState` (learned Q only). Q is stored padded for K >= 1024 (see
    :class:`TrainState`).
    """
    if noise_model not in config_lib.NOISE_MODELS:
        raise ValueError(f"noise.model: must be one of {config_lib.NOISE_MODELS}, "
                         f"got {noise_model!r}.")
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


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on the noisy-label loss (Eqn 3). Pure; jit it (see :func:`jit_train_step`).

    Args:
      state: the train state.
      batch: ``image`` ``[B, H, W, C]`` float32 and ``label`` ``[B]`` int32 noisy labels in
        ``[0, K_noisy)``. Clean labels and outlier flags, if present, are ignored.
      rng: a PRNG key for dropout.

    Returns:
      The new state and device scalars: ``loss`` (mean noisy cross entropy), ``noisy_error``
      (the combined model's error on the noisy labels), ``q_trace`` and ``grad_norm``.
    """
    use_q = state.noise_model != "none"
    if state.q_init_step >= 0:
        # The confusion start: replace Q before this step's forward pass, exactly once.
        at_init = state.step == state.q_init_step
        q0 = jnp.where(at_init, confusion_q(state.q_stats), state.params["q"])
        state = state.replace(params={**state.params, "q": q0})

    def loss_fn(params):
        logits = state.apply_fn({"params": params["net"]}, batch["image"], train=True,
                                rngs={"dropout": rng})
        q = sharding.unpad_q(params["q"])
        q = q if state.noise_model == "learned" else jax.lax.stop_gradient(q)
        per_example = losses.noisy_cross_entropy(logits, q if use_q else None, batch["label"])
        return jnp.mean(per_example), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    finite = {BAD_LOSS: jnp.isfinite(loss), BAD_GRADS: _all_finite(grads),
              BAD_Q: _all_finite(params["q"]), BAD_PARAMS: _all_finite(params["net"])}
    step_ok = functools.reduce(jnp.logical_and, finite.values())
    what = sum(jnp.where(v, 0, bit) for bit, v in finite.items())
    first = (state.bad_step < 0) & ~step_ok
    ok = step_ok & (state.bad_step < 0)  # after a bad step, hold everything until checked
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)

    q_stats = state.q_stats
    if state.q_init_step >= 0:
        in_window = (state.step >= state.q_stats_from) & (state.step < state.q_init_step)
        counts = jax.ops.segment_sum(jax.nn.softmax(logits.astype(jnp.float32), -1),
                                     batch["label"], num_segments=q_stats.shape[0])
        counts = jnp.pad(counts, ((0, 0), (0, q_stats.shape[1] - counts.shape[1])))
        q_stats = q_stats + jnp.where(in_window, counts, 0)

    pred = jnp.argmax(losses.noisy_probs(logits, state.q) if use_q else logits, -1)
    metrics = {
        "loss": loss,
        "noisy_error": jnp.mean(pred != batch["label"]),
        "q_trace": jnp.trace(state.q),
        "grad_norm": optax.tree.norm(grads["net"]),
    }
    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        bad_step=jnp.where(first, state.step, state.bad_step),
        bad_what=jnp.where(first, what, state.bad_what),
        q_stats=jnp.where(ok, q_stats, state.q_stats),
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


def jit_train_step(mesh, state_sharding):
    """``train_step`` jitted over ``mesh``: state sharded as given, batch over ``data``.

    The per-step dropout key is ``fold_in(state.rng, state.step)``; the state is donated. In
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
    ``jit_train_step`` on a multi-device CPU mesh (see ``MAX_STEPS_IN_FLIGHT``).

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
        self._pending.append(out)
        while len(self._pending) > self.limit:
            jax.block_until_ready(self._pending.popleft())

    def __len__(self) -> int:
        return len(self._pending)


def jit_eval_step(mesh, state_sharding, fn: Callable = eval_step):
    """``eval_step`` (or ``fn``, e.g. :func:`val_step`) jitted over ``mesh``; outputs stay
    sharded over ``data``."""
    batch_sh = sharding.batch_sharding(mesh)
    return jax.jit(fn, in_shardings=(state_sharding, batch_sh), out_shardings=batch_sh)


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


# ---------------------------------------------------------------------------------------------
# Building a run from a config.


@dataclasses.dataclass
class RunSpec:
    """What a config resolves to once the data is loaded (shared by training and tools)."""

    num_classes: int  # K, inlier classes
    num_outputs: int  # K, or K+1 for the outlier model
    q_true: np.ndarray | None  # the Q* of the combined model's output space, if known
    q_init: np.ndarray
    steps_per_epoch: int
    total_steps: int
    freeze_steps: int
    alpha: float | None
    q_init_step: int  # -1: Q starts as q_init and is never replaced
    q_stats_from: int


def resolve_run(cfg: ml_collections.ConfigDict, ds) -> RunSpec:
    """Derives class counts, Q*, the initial Q and the step counts from config + dataset."""
    k = int(ds.num_classes)
    has_known = bool(np.any(ds.train_labels == k))
    outlier = cfg.noise.model == "outlier"
    num_outputs = k + 1 if (outlier or has_known) else k
    alpha = None
    if outlier:
        alpha = cfg.noise.alpha if cfg.noise.alpha is not None else ds.alpha
        alpha = float(np.clip(alpha * cfg.noise.alpha_scale, 0.0, 1.0))
    if outlier:
        q_true = noise.outlier_eqn9(k, ds.alpha) if ds.alpha is not None else None
    elif ds.q_true is not None:
        q_true = np.asarray(ds.q_true)
        if num_outputs == k + 1:  # known outliers keep their label K
            q_true = np.pad(q_true, ((0, 1), (0, 1)))
            q_true[k, k] = 1.0
    elif cfg.corruption.kind == "identity" or (not cfg.corruption.level
                                                and cfg.corruption.kind != "given"):
        # No flips were injected: the noise process is the identity (the level-0 point of a
        # noise sweep, where `true` and `learned` start from the same Q as `none`).
        q_true = np.eye(num_outputs)
    else:
        q_true = None
    if cfg.noise.model == "true":
        if q_true is None:
            raise config_lib.ConfigError(
                "noise.model: 'true' needs the Q* that made the noise, and this dataset's "
                "is not known; use noise.model='learned' or 'none'.")
        q_init = q_true
    elif outlier:
        q_init = noise.outlier_eqn9(k, alpha)
    else:
        q_init = np.eye(num_outputs)
    from nlnoise import data

    spe = data.steps_per_epoch(ds, cfg.batch_size)
    if spe < 1:
        raise config_lib.ConfigError(
            f"batch_size: {cfg.batch_size} exceeds the {len(ds.train)} training examples.")
    total = spe * cfg.num_epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    freeze = round(cfg.q.freeze_epochs * spe)
    confusion = cfg.noise.model == "learned" and cfg.q.init == "confusion"
    return RunSpec(
        num_classes=k, num_outputs=num_outputs, q_true=q_true,
        q_init=noise.validate_transition(q_init, num_outputs, name="noise (initial Q)"),
        steps_per_epoch=spe, total_steps=total,
        freeze_steps=freeze, alpha=alpha,
        q_init_step=freeze if confusion else -1,
        q_stats_from=max(0, freeze - round(cfg.q.stats_epochs * spe)),
    )


def build_optimizer(cfg: ml_collections.ConfigDict, spec: RunSpec) -> optax.GradientTransformation:
    """The paper's recipe: SGD+momentum with per-layer decay for the net; Q's own chain."""
    lr = optim.schedule_from_epochs(cfg.learning_rate, spec.steps_per_epoch,
                                    tuple(cfg.lr_boundaries_epochs), cfg.lr_decay_factor)
    net_tx = optim.net_optimizer(lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                 layer_weight_decay=dict(cfg.layer_weight_decay),
                                 bias_lr_scale=cfg.bias_lr_scale)
    q_tx = None
    if cfg.noise.model == "learned":
        q_lr = cfg.q.learning_rate if cfg.q.learning_rate is not None else lr
        q_tx = optim.q_optimizer(q_lr, weight_decay=cfg.q.weight_decay,
                                 freeze_steps=spec.freeze_steps,
                                 momentum=cfg.q.momentum or None,
                                 regularizer=cfg.q.regularizer,
                                 grad_clip=cfg.q.grad_clip)
    return optim.train_state_optimizer(net_tx, q_tx)


def load_dataset(cfg: ml_collections.ConfigDict):
    """Loads the dataset with the config's label corruption (``corruption.*``).

    ``corruption.seed`` and ``dataset.subset_seed`` left at None follow ``seed``, so varying
    ``seed`` alone varies the flips, the subsets and the network together.
    """
    from nlnoise import data

    c = cfg.corruption
    kwargs: dict[str, Any] = {}
    if c.kind == "sparse_random":
        kwargs["m"] = c.m
    if c.kind == "block":
        kwargs["groups"] = tuple(tuple(g) for g in c.groups)
    if c.kind == "adversarial":
        kwargs["confusion"] = _load_confusion(c.confusion_path)
    if c.kind == "custom":
        kwargs["q"] = c.matrix_path
    dataset_cfg = cfg.dataset.to_dict()
    if dataset_cfg.get("subset_seed") is None:
        dataset_cfg["subset_seed"] = cfg.seed
    return data.load(dataset_cfg, noise_kind=c.kind, noise_level=c.level,
                     noise_seed=cfg.seed if c.seed is None else c.seed, noise_kwargs=kwargs)


def _load_confusion(path: str) -> np.ndarray:
    if not path or not os.path.exists(path):
        raise config_lib.ConfigError(
            f"corruption.confusion_path: no file at {path!r}. Train a clean model and save its "
            "confusion matrix (confusion[pred, true], .npy or .json) there, or point at that "
            "run's summary.json.")
    if path.endswith(".json"):
        with open(path) as f:
            obj = json.load(f)
        if isinstance(obj, dict):  # a finished run's summary.json
            if obj.get("test_confusion") is None:
                raise config_lib.ConfigError(
                    f"corruption.confusion_path: {path} has no 'test_confusion' (a summary.json of "
                    "a finished run has it); give a run's summary.json or a [K, K] matrix.")
            obj = obj["test_confusion"]
        return np.asarray(obj, dtype=np.float64)
    return np.load(path, allow_pickle=False)


# ---------------------------------------------------------------------------------------------
# The training loop.

# Keys a resumed run may change without being refused as a different run: how it is shown,
# the device layout (restoring onto another device count is supported) and its length.
RESUMABLE_KEYS = ("progress_bar", "tensorboard", "plots", "log_every_steps", "mesh",
                  "num_epochs", "max_steps", "compilation_cache_dir")


def _jitted_loop_fns(mesh, state_sh, acc_sh):
    """Jitted (train step + on-device metric sums) and eval step, for the loop."""
    batch_sh = sharding.batch_sharding(mesh)

    def step(state, acc, batch):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        state, m = train_step(state, batch, rng)
        acc = {"loss": acc["loss"] + m["loss"], "noisy_error": acc["noisy_error"]
               + m["noisy_error"], "count": acc["count"] + 1}
        return state, acc, m

    repl = sharding.replicated(mesh)
    train_fn = jax.jit(step, in_shardings=(state_sh, acc_sh, batch_sh),
                       out_shardings=(state_sh, acc_sh, repl), donate_argnums=(0, 1))
    return train_fn, {"eval": jit_eval_step(mesh, state_sh),
                      "val": jit_eval_step(mesh, state_sh, val_step)}


def next_decay_scale(losses_since_unfreeze: list[float], scale: float, *, factor: float,
                     tolerance: float) -> float:
    """The ``lower_on_rise`` rule: the decay multiplier after the newest window's train loss.

    Over-diffusing Q (``tr(Q) < tr(Q*)``) makes the combined model fit the noisy labels worse,
    so the noisy training loss climbs; the paper then lowered the decay on Q. Here: if the
    newest loss exceeds the best earlier one (since the freeze ended) by more than
    ``tolerance`` (relative), multiply the decay by ``factor``. Uses noisy labels only.
    """
    if len(losses_since_unfreeze) < 2:
        return scale
    *earlier, newest = losses_since_unfreeze
    return scale * factor if newest > min(earlier) * (1 + tolerance) else scale


# A plateau is a rate of change this far below the fastest one since the freeze, so that a Q
# that has not yet started to move (or moves slowly and steadily) is not taken as settled.
PLATEAU_PEAK_FRACTION = 0.25


def trace_plateaued(traces: list[float], epochs: list[float], tolerance: float) -> bool:
    """Whether ``tr(Q)`` has settled: over the newest evaluation window it moved by less than
    ``tolerance`` of its value per epoch (either way), and by less than a quarter of its
    fastest move per epoch over the earlier windows of ``traces``.

    Under a constant decay ``tr(Q)`` falls from ``K`` until the decay's pull balances the data
    term's; from then on the decay no longer moves Q toward ``Q*`` but only biases it further
    (``nlnoise.optim.decay_fixed_point``), so the ``lower_on_plateau`` rule lowers the decay
    there. Uses Q alone: no labels, clean or noisy.
    """
    if len(traces) < 3 or any(b <= a for a, b in itertools.pairwise(epochs)):
        return False
    rates = [abs(b - a) / max(abs(a), 1e-12) / (eb - ea)
             for (a, b), (ea, eb) in zip(itertools.pairwise(traces), itertools.pairwise(epochs),
                                         strict=True)]
    *earlier, newest = rates
    return newest < tolerance and newest < PLATEAU_PEAK_FRACTION * max(earlier)


def _zero_acc():
    return {"loss": jnp.zeros((), jnp.float32), "noisy_error": jnp.zeros((), jnp.float32),
            "count": jnp.zeros((), jnp.int32)}


def evaluate_source(state: TrainState, eval_fn, source, cfg, ds, mesh) -> dict[str, np.ndarray]:
    """Runs ``eval_fn`` over a whole split; returns host arrays for the real (unpadded) rows."""
    from jax.experimental import multihost_utils

    from nlnoise import data

    outs: dict[str, list[np.ndarray]] = {}
    batch_sh = sharding.batch_sharding(mesh)
    for local in data.eval_batches(source, cfg.dataset, ds, global_batch_size=cfg.dataset
                                   .eval_batch_size, process_index=jax.process_index(),
                                   process_count=jax.process_count()):
        batch = data.make_global_batch(
            {"image": local["image"], "label": local["label"], "mask": local["mask"]}, batch_sh)
        o = eval_fn(state, batch)
        extra = data.make_global_batch(
            {"is_outlier": local["is_outlier"], "label": local["label"]}, batch_sh)
        o = multihost_utils.process_allgather({**o, **extra}, tiled=True)
        for k, v in o.items():
            outs.setdefault(k, []).append(np.asarray(v))
    out = {k: np.concatenate(v) for k, v in outs.items()}
    keep = out["mask"].astype(bool)
    return {k: v[keep] for k, v in out.items()}


def _evaluate(state, eval_fns, cfg, ds, mesh, spec: RunSpec) -> dict[str, Any]:
    from nlnoise import evaluate

    eval_fn = eval_fns["eval"]
    res = evaluate_source(state, eval_fn, ds.test, cfg, ds, mesh)
    out: dict[str, Any] = {"test_error": 1.0 - float(res["correct"].mean()),
                           "_confusion": evaluate.confusion(res["pred"], res["label"],
                                                            spec.num_classes)}
    if ds.test_noisy is not None:
        noisy = evaluate_source(state, eval_fn, ds.test_noisy, cfg, ds, mesh)
        det = evaluate.outlier_detection(noisy["outlier_score"], noisy["is_outlier"])
        out["outlier_ap"] = det["average_precision"]
        out["_pr"] = det
    if ds.val is not None:
        val = evaluate_source(state, eval_fns["val"], ds.val, cfg, ds, mesh)
        out["val_noisy_loss"] = float(val["nll"].mean())
        out["val_noisy_error"] = 1.0 - float(val["noisy_correct"].mean())
    if state.noise_model != "none":
        q = np.asarray(jax.device_get(state.q), np.float64)
        out.update(evaluate.q_metrics(q, spec.q_true))
    return out


def best_record(records: list[dict[str, Any]], key: str = "val_noisy_loss"
                ) -> dict[str, Any] | None:
    """The evaluation with the lowest ``key`` (the earliest on ties), or None if no record has
    it. With ``val_noisy_loss`` this is label-free early stopping: it picks an epoch by the
    fit to held-out noisy labels, never by a clean one."""
    scored = [r for r in records if r.get(key) is not None]
    return min(scored, key=lambda r: r[key]) if scored else None


def enable_compilation_cache(path: str) -> str | None:
    """Points jax's persistent compilation cache at ``path`` (``~`` expanded); "" = off.

    Returns the directory in use. An unusable directory is not fatal: the run compiles as
    usual and a warning says why.
    """
    if not path:
        return None
    path = os.path.abspath(os.path.expanduser(path))
    current = jax.config.jax_compilation_cache_dir
    if current:  # set by the user (JAX_COMPILATION_CACHE_DIR) or an earlier run: keep it
        return current
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        log.warning("compilation_cache_dir=%s cannot be created (%s); compiling without a "
                    "persistent cache. Set compilation_cache_dir='' to silence this.", path, e)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str, *,
                       overwrite: bool = False) -> dict[str, Any]:
    """Runs (or resumes) the experiment ``cfg`` in ``workdir``; returns the summary.

    Everything that can be wrong with the config or the data is checked before anything is
    written. Running the same command again resumes from the newest intact checkpoint; a
    finished run returns its summary without training. A workdir holding a run with another
    config is refused unless ``overwrite`` (the old run is then moved to ``workdir/archive/``).
    """
    from nlnoise import checkpoint, data, models
    from nlnoise import workdir as workdir_lib

    wall_start = time.time()
    # Before jax's first operation (validate's device count is one): split a CPU host into
    # devices. Malformed sizes are left to validate, which names them.
    config_lib.check_cpu_devices(cfg)
    sizes = [b for b in (cfg.batch_size, cfg.dataset.get("eval_batch_size"))
             if isinstance(b, int) and b > 0]
    sharding.configure_cpu_devices(
        cfg.mesh.cpu_devices, batch_sizes=sizes,
        model=cfg.mesh.model if isinstance(cfg.mesh.model, int) else 1)
    config_lib.validate(cfg)
    enable_compilation_cache(cfg.compilation_cache_dir)
    run_dir = workdir_lib.RunDir(workdir)
    finished = run_dir.check_config(cfg, RESUMABLE_KEYS, overwrite=overwrite)
    if finished is not None:
        log.info("run in %s already finished; returning its summary.", workdir)
        return finished
    ds = load_dataset(cfg)
    spec = resolve_run(cfg, ds)
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.model)
    model = models.get_model(cfg.model.name, spec.num_outputs, **dict(cfg.model.kwargs))
    tx = build_optimizer(cfg, spec)

    def init():
        return create_train_state(model, tx, input_shape=tuple(ds.image_shape),
                                  q_init=spec.q_init, noise_model=cfg.noise.model,
                                  num_classes=spec.num_classes, seed=cfg.seed,
                                  q_init_step=spec.q_init_step,
                                  q_stats_from=spec.q_stats_from)

    abstract = jax.eval_shape(init)
    state_sh = sharding.state_shardings(mesh, abstract)
    acc_sh = jax.tree.map(lambda _: sharding.replicated(mesh), _zero_acc())
    train_fn, eval_fns = _jitted_loop_fns(mesh, state_sh, acc_sh)
    set_decay_scale = jax.jit(lambda opt, s: optax.tree.set(opt, q_decay_scale=s),
                              out_shardings=state_sh.opt_state, donate_argnums=(0,))
    use_rule = cfg.noise.model == "learned" and cfg.q.decay_rule != "constant"
    # Made by jit, not device_put: device_put of host scalars onto a multi-process mesh gives
    # arrays that orbax cannot save (jax 0.10.2).
    zero_acc = jax.jit(_zero_acc, out_shardings=acc_sh)
    it = data.train_iterator(ds, cfg.dataset, global_batch_size=cfg.batch_size, seed=cfg.seed,
                             process_index=jax.process_index(),
                             process_count=jax.process_count())

    # Nothing was written so far; from here on the workdir belongs to this run.
    run_dir.start(cfg, dataset_fingerprint=ds.label_fingerprint)
    store = checkpoint.CheckpointStore(run_dir.checkpoints, keep=cfg.keep_checkpoints)
    state = jax.jit(init, out_shardings=state_sh)()
    acc = zero_acc()
    items_sh = {"state": _items(state_sh), "acc": acc_sh}
    restored = store.restore(checkpoint.abstract_like({"state": _items(state), "acc": acc},
                                                      items_sh), it)
    start = 0
    if restored is not None:
        items, start = restored
        state = state.replace(**items["state"])
        acc = items["acc"]
        log.info("resumed from the checkpoint at step %d.", start)
    records = run_dir.metrics.truncate_after(start)
    # Label-free early stopping keeps its model: the parameters at the lowest held-out noisy
    # loss. Saves after the resumed step are replayed, like the metrics.
    best_store = checkpoint.BestParams(run_dir.best) if ds.val is not None else None
    if best_store is not None:
        best_store.drop_after(start)

    spe, total = spec.steps_per_epoch, spec.total_steps
    eval_every = max(1, round(cfg.eval_every_epochs * spe))
    ckpt_every = cfg.checkpoint_every_steps or spe
    batch_sh = sharding.batch_sharding(mesh)
    reporter = run_dir.reporter(cfg, total=total, initial=start)
    train_time, timed_steps, last_sync, last_step = 0.0, 0, None, start
    step = start
    last_confusion = None
    in_flight = DispatchWindow()
    try:
        while step < total:
            local = next(it)
            batch = data.make_global_batch({"image": local["image"], "label": local["label"]},
                                           batch_sh)
            state, acc, last_m = train_fn(state, acc, batch)
            in_flight.push(last_m)
            step += 1
            if _TRACE_PHASES and step % 5 == 0:
                _phase("train", step)
            at_log = step % cfg.log_every_steps == 0 or step == total
            at_eval = step % eval_every == 0 or step == total
            at_ckpt = step % ckpt_every == 0 or step == total
            if at_log or at_eval or at_ckpt:
                check_finite(state)  # also waits for the step: times below are real
                now = _timer()
                if last_sync is not None:
                    train_time += now - last_sync
                    timed_steps += step - last_step
                window = jax.device_get(acc)
                reporter.log_step(step, jax.device_get(last_m), window)
            if at_eval:
                _phase("eval", step)
                n = max(int(window["count"]), 1)
                record = {"step": step, "epoch": step / spe,
                          "train_loss": float(window["loss"]) / n,
                          "noisy_train_error": float(window["noisy_error"]) / n,
                          **_evaluate(state, eval_fns, cfg, ds, mesh, spec)}
                pr = record.pop("_pr", None)
                last_confusion = record.pop("_confusion")
                if use_rule and step > spec.freeze_steps:
                    scale = float(jax.device_get(optax.tree.get(state.opt_state,
                                                                "q_decay_scale")))
                    # The evaluations whose window lies after the freeze, and this one.
                    since = [*(r for r in records if r["step"] - eval_every
                               >= spec.freeze_steps), record]
                    new = next_decay_scale([r["train_loss"] for r in since], scale,
                                           factor=cfg.q.decay_factor,
                                           tolerance=cfg.q.decay_tolerance)
                    # The plateau lowers the decay once: after that the decay only has to
                    # hold Q, and more cuts would leave it to drift back as the net memorises.
                    if (new == scale == 1.0 and cfg.q.decay_rule == "lower_on_plateau"
                            and trace_plateaued([r["q_trace"] for r in since],
                                                [r["epoch"] for r in since],
                                                cfg.q.plateau_tolerance)):
                        new = scale * cfg.q.decay_factor
                    if new != scale:
                        state = state.replace(opt_state=set_decay_scale(state.opt_state, new))
                        log.info("noisy train loss rose or tr(Q) settled at step %d: decay on "
                                 "Q now x%g.", step, new)
                    record["q_decay_scale"] = new
                records.append(record)
                run_dir.metrics.append(record)
                if best_store is not None and best_record(records) is record:
                    best_store.save(step, state.params, record["val_noisy_loss"])
                reporter.log_eval(record, pr)
                acc = zero_acc()
            if at_ckpt:
                store.save(step, {"state": state.checkpoint_items(), "acc": acc}, it)
                _phase("checkpoint-writing", step)
            if at_log or at_eval or at_ckpt:
                last_sync, last_step = _timer(), step
        store.wait()
    except BaseException:
        # Keep the original error: closing may fail too (e.g. the same full disk).
        reporter.close()
        store.close(quiet=True)
        if best_store is not None:
            best_store.close(quiet=True)
        raise
    reporter.close()
    store.close()
    if best_store is not None:
        best_store.close()

    final = records[-1] if records else {}
    params = host_params(state)
    q = np.asarray(sharding.unpad_q(params["q"]), np.float64)
    summary = {
        "final": final,
        # Selected by the held-out noisy loss (dataset.val_size): no clean label is used.
        "best": best_record(records),
        # Its parameters (network and Q): checkpoint.BestParams(<this>).restore().
        "best_params_dir": run_dir.best if best_store is not None else None,
        "steps": total,
        "epochs": total / spe,
        "wall_time_s": time.time() - wall_start,
        "train_images_per_s": (timed_steps * cfg.batch_size / train_time) if train_time else None,
        "num_devices": jax.device_count(),
        "num_processes": jax.process_count(),
        "realized_flip_rate": ds.realized_flip_rate,  # None without clean labels
        "alpha": spec.alpha,
        "q": q.tolist(),
        "class_names": [str(c) for c in ds.class_names]
        + (["outlier"] if q.shape[0] > len(ds.class_names) else []),
        "params_sha256": params_digest(params),
        "q_true": None if spec.q_true is None else spec.q_true.tolist(),
        # confusion[pred, true] on the clean test set after the last step: the input of an
        # adversarial Q* (corruption.kind=adversarial, corruption.confusion_path=<this
        # summary.json>).
        "test_confusion": None if last_confusion is None else last_confusion.tolist(),
        "config": cfg.to_dict(),
    }
    run_dir.finish(summary, records, q=q, q_true=spec.q_true, class_names=ds.class_names,
                   plots=cfg.plots)
    return summary


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


def _items(state_or_shardings) -> dict[str, Any]:
    return {f: getattr(state_or_shardings, f) for f in ("step", "params", "opt_state", "rng",
                                                         "bad_step", "bad_what", "q_stats")}


def _timer() -> float:
    return time.perf_counter()


_TRACE_PHASES = os.environ.get("NLNOISE_TRACE_PHASES") == "1"


def _phase(name: str, step: int) -> None:
    """With NLNOISE_TRACE_PHASES=1, announces loop phases on stderr (for fault injection)."""
    if _TRACE_PHASES:
        print(f"nlnoise-phase: {name} step={step}", file=sys.stderr, flush=True)
