"""What a config means once its data is loaded: the run's classes, Q*, initial Q, step counts,
optimizer, dataset and initial train state. Shared by training (:mod:`nlnoise.run`) and by
tools that read a run back (:mod:`nlnoise.restore`, :mod:`nlnoise.audit_run`), so a change to
what a config means is made here once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np
import optax

from nlnoise import config as config_lib
from nlnoise import data, models, noise, optim
from nlnoise import step as step_lib

# Keys a resumed run may change without being refused as a different run: how it is shown,
# the device layout (restoring onto another device count is supported) and its length.
RESUMABLE_KEYS = ("progress_bar", "tensorboard", "plots", "log_every_steps", "mesh",
                  "num_epochs", "max_steps", "compilation_cache_dir")


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


def resolve_run(cfg: ml_collections.ConfigDict, ds: data.NoisyDataset) -> RunSpec:
    """Derives class counts, Q* and the initial Q (``[K_out, K_out]``, ``q[j, i] =
    p(noisy=j | true=i)``) and the step counts from config + dataset."""
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
                                 grad_clip=cfg.q.grad_clip,
                                 touched_rows=cfg.batch_size)
    return optim.train_state_optimizer(net_tx, q_tx)


def load_dataset(cfg: ml_collections.ConfigDict) -> data.NoisyDataset:
    """Loads the dataset with the config's label corruption (``corruption.*``).

    ``corruption.seed`` and ``dataset.subset_seed`` left at None follow ``seed``, so varying
    ``seed`` alone varies the flips, the subsets and the network together.
    """
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


def state_init(cfg: ml_collections.ConfigDict, ds: data.NoisyDataset, spec: RunSpec
                ) -> Callable[[], step_lib.TrainState]:
    """The function that creates the run's initial state (for ``jit``/``eval_shape``)."""
    model = models.get_model(cfg.model.name, spec.num_outputs, **dict(cfg.model.kwargs))
    return functools.partial(
        step_lib.create_train_state, model, build_optimizer(cfg, spec),
        input_shape=tuple(ds.image_shape), q_init=spec.q_init, noise_model=cfg.noise.model,
        num_classes=spec.num_classes, seed=cfg.seed, q_init_step=spec.q_init_step,
        q_stats_from=spec.q_stats_from)


def checkpoint_tree(state: step_lib.TrainState) -> dict[str, Any]:
    """What a checkpoint holds: the state's items and the logging window's sums (``acc``), so
    a resumed run logs the same window means."""
    return {"state": state.checkpoint_items(), "acc": state.window}


