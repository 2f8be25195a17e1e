"""Run configuration: defaults, variant strings, and validation before anything runs.

A run is described by one ``ml_collections.ConfigDict``. ``configs/*.py`` files build it with
:func:`base_config` and :func:`finalize`; :func:`validate` rejects bad values with a
:class:`ConfigError` that names the field and the fix, before any output is written. Every
key, its default and its check live in this one module (a little over the usual 400 lines) so
that a user reads the whole schema in one place.

Keys (users and scripts rely on these names):

* ``seed``: the network's initialisation and the data order, and (unless set on their own)
  ``corruption.seed`` and ``dataset.subset_seed``: one number varies a whole run.
* ``batch_size`` (global), ``num_epochs``, ``learning_rate``, ``momentum``, ``weight_decay``,
  ``layer_weight_decay`` (``{layer: wc}``), ``lr_boundaries_epochs``, ``lr_decay_factor``,
  ``bias_lr_scale`` (biases' rate over the kernels'; cuda-convnet's ``epsB / epsW``): the
  network's SGD, in the mean-loss convention (cuda-convnet's ``epsW``/``wc`` carry over
  unchanged; see :mod:`nlnoise.optim`).
* ``model.name`` (a :mod:`nlnoise.models` name), ``model.kwargs``.
* ``corruption.*``, how the training labels were corrupted: ``kind`` (a
  :func:`nlnoise.noise.make` family, ``custom`` for a matrix from ``matrix_path`` (``.npy``
  ``[K, K]``), or ``given``: the labels are used as they are, nothing is injected), ``level``,
  ``seed`` (None: ``seed``), ``m`` (``sparse_random``), ``groups`` (``block``: tuples of
  class ids that flip among themselves), ``confusion_path`` (``adversarial``).
* ``noise.*``, the noise model on top of the softmax: ``model`` is ``none`` | ``learned`` |
  ``true`` | ``outlier``; ``alpha`` (None: from the outlier counts) and ``alpha_scale``
  (outlier model).
* ``q.*``, how learned Q is trained: ``freeze_epochs`` (Q is the identity until then),
  ``learning_rate`` (None: the network's schedule), ``momentum``, ``weight_decay`` (against
  the *mean* loss's gradient, as the network's; the paper's 0.1 is 0.1 here; see
  :mod:`nlnoise.optim`), ``regularizer`` (``weight_decay`` or ``trace``), ``grad_clip`` (Q's
  gradient clipped to this global norm; 0: off), ``init`` (``identity``, the paper, or
  ``confusion``: at the end of the freeze Q is set to ``P(noisy | prediction)`` measured over
  the last ``stats_epochs`` epochs of training batches), ``decay_rule`` (``constant``, the
  paper's fixed decay; ``lower_on_rise``: at each evaluation after the freeze, if the noisy
  training loss rose above its best since the freeze by more than ``decay_tolerance``
  (relative), the decay is multiplied by ``decay_factor``, as the paper did by hand; or
  ``lower_on_plateau``, the default: the same, and also once the first time ``tr(Q)`` moved
  by less than ``plateau_tolerance`` of itself per epoch over the last evaluation window and far
  less than its fastest since the freeze; see :mod:`nlnoise.q_schedule`). No rule reads a
  clean label.
* ``dataset.*``: see :mod:`nlnoise.data`.
* ``mesh.data`` (-1: all remaining devices), ``mesh.model``; ``mesh.cpu_devices``: on a
  CPU host, split it into this many XLA devices (0, the default: auto, up to 8, the largest
  that divides the batch sizes; -1: jax's one device; see ``sharding.configure_cpu_devices``;
  applied before jax's first operation, so not in a process that already used jax; the gain is
  in docs/performance.md). Results differ from a one-device run only by float summation order.
* ``compilation_cache_dir`` (jax's persistent compilation cache; "" disables it),
  ``eval_every_epochs``, ``checkpoint_every_steps`` (0: once per epoch), ``keep_checkpoints``,
  ``log_every_steps``, ``progress_bar``, ``tensorboard``, ``plots``, ``max_steps`` (0: no cap).
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from nlnoise import noise
from nlnoise.q_schedule import DECAY_RULES as Q_DECAY_RULES


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every experiment (the paper's CIFAR-10 schedule where it has one)."""
    from nlnoise.data import default_dataset_config

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 128
    c.num_epochs = 100
    c.max_steps = 0
    c.learning_rate = 0.001
    c.momentum = 0.9
    c.weight_decay = 0.004
    c.layer_weight_decay = ml_collections.ConfigDict({"fc10": 1.0})
    c.lr_boundaries_epochs = ()
    c.lr_decay_factor = 0.1
    c.bias_lr_scale = 1.0

    c.model = ml_collections.ConfigDict({"name": "layers18pct", "kwargs": {}})

    # How the training labels were corrupted (nothing here is known to the model).
    c.corruption = ml_collections.ConfigDict()
    c.corruption.kind = "paper_random"
    c.corruption.level = 0.5
    c.corruption.seed = placeholder(int)  # None: the run's seed
    c.corruption.m = 10
    c.corruption.groups = placeholder(tuple)
    c.corruption.confusion_path = placeholder(str)
    c.corruption.matrix_path = placeholder(str)

    # The noise model on top of the softmax.
    c.noise = ml_collections.ConfigDict()
    c.noise.model = "learned"
    c.noise.alpha = placeholder(float)  # None: from the outlier counts of the dataset
    c.noise.alpha_scale = 1.0

    # How learned Q is trained.
    c.q = ml_collections.ConfigDict()
    c.q.freeze_epochs = 30.0
    c.q.learning_rate = placeholder(float)  # None: the network's schedule
    c.q.momentum = 0.0
    c.q.weight_decay = 0.1
    c.q.regularizer = "weight_decay"
    # Without a clip, one batch of adversarial flips can throw every column of Q onto a vertex
    # (d log(Qp)_j / dQ[j, i] = p_i / (Qp)_j is unbounded; docs/results.md).
    c.q.grad_clip = 10.0
    c.q.init = "identity"
    c.q.stats_epochs = 1.0
    c.q.decay_rule = "lower_on_plateau"
    c.q.decay_factor = 0.1
    c.q.decay_tolerance = 0.01
    c.q.plateau_tolerance = 0.01

    c.dataset = default_dataset_config()

    c.mesh = ml_collections.ConfigDict({"data": -1, "model": 1, "cpu_devices": 0})

    c.eval_every_epochs = 1.0
    c.checkpoint_every_steps = 0
    c.keep_checkpoints = 3
    c.log_every_steps = 50
    c.progress_bar = True
    c.tensorboard = True
    c.plots = True
    # XLA's persistent compilation cache: a rerun, a resumed run or the next cell of a sweep
    # loads its compiled steps instead of compiling them again. "" disables it.
    c.compilation_cache_dir = "~/.cache/nlnoise/jax"
    return c


def split_variant(arg: str) -> list[str]:
    """Splits a variant string on commas outside brackets and quotes: ``"a=(6,7),b=1"`` -> 2."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(arg):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(arg[start:i])
            start = i + 1
    parts.append(arg[start:])
    return parts


def parse_variant(arg: str | None) -> dict[str, Any]:
    """``"noise=0.5,model=learned"`` -> ``{"noise": 0.5, "model": "learned"}`` (literals parsed)."""
    out: dict[str, Any] = {}
    if not arg:
        return out
    for part in split_variant(arg):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            out[key.strip()] = True
            continue
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def set_path(cfg: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    """Sets ``cfg.a.b = value`` for ``"a.b"``, rejecting keys the config does not have."""
    *parents, leaf = dotted.split(".")
    node = cfg
    for i, p in enumerate(parents):
        if p not in node:
            raise ConfigError(f"{'.'.join(parents[: i + 1])}: unknown config key.")
        node = node[p]
    if leaf not in node:
        raise ConfigError(
            f"{dotted}: unknown config key; valid keys here are {sorted(node.keys())}."
        )
    old = node[leaf]
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    elif isinstance(old, tuple) and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,)  # "lr_boundaries_epochs=7" means one boundary
    try:
        node[leaf] = value
    except TypeError as e:
        raise ConfigError(f"{dotted}: {e}") from None


# Short names accepted in variant strings, e.g. "configs/cifar10.py:noise=0.5,model=learned".
ALIASES = {
    "noise": "corruption.level",
    "level": "corruption.level",
    "kind": "corruption.kind",
    "m": "corruption.m",
    "model": "noise.model",
    "alpha": "noise.alpha",
    "alpha_scale": "noise.alpha_scale",
    "freeze": "q.freeze_epochs",
    "q_wd": "q.weight_decay",
    "q_lr": "q.learning_rate",
    "rule": "q.decay_rule",
    "net": "model.name",
    "epochs": "num_epochs",
    "size": "dataset.train_size",
    "val": "dataset.val_size",
    "batch": "batch_size",
    "lr": "learning_rate",
    "seed": "seed",
    "mesh_model": "mesh.model",
}


Preset = Callable[[ml_collections.ConfigDict], None]
Derived = Callable[[ml_collections.ConfigDict, Any, dict[str, Any]], None]


def finalize(cfg: ml_collections.ConfigDict, arg: str | None, runlocal: Preset | None = None,
             *, presets: Mapping[str, Preset] | None = None,
             derived: Mapping[str, tuple[Any, Derived]] | None = None
             ) -> ml_collections.ConfigDict:
    """Applies the variant string ``arg`` (``"noise=0.5,model=learned,runlocal"``) to ``cfg``.

    In order: bare flags naming a preset (``runlocal``, and the config file's own ``presets``,
    e.g. ``outlier``), each a function editing the config in place; then every ``key=value``
    (dotted config keys or :data:`ALIASES`); then each of the file's ``derived`` keys,
    ``{name: (default, fn)}``, called as ``fn(cfg, value, variants)`` with the variant's value
    (or the default) once everything else is set (e.g. a number of outliers from a ratio and the
    final training-set size). ``runlocal`` turns the config into a real run on a small slice of
    real data that finishes in well under a minute on a small CPU.
    """
    presets = {"runlocal": runlocal, **(presets or {})}
    derived = dict(derived or {})
    variants = parse_variant(arg)
    for name, fn in presets.items():
        if variants.pop(name, False) is True and fn is not None:
            fn(cfg)
    late = {name: variants.pop(name, default) for name, (default, _) in derived.items()}
    for key, value in variants.items():
        set_path(cfg, ALIASES.get(key, key), value)
    for name, value in late.items():
        derived[name][1](cfg, value, variants)
    return cfg


def _err(field: str, msg: str) -> ConfigError:
    return ConfigError(f"{field}: {msg}")


def _number(cfg, field: str, *, lo=None, hi=None, integer=False, lo_open=False,
            optional=False) -> None:
    node = cfg
    for p in field.split("."):
        node = node[p]
    if node is None and optional:
        return
    kind = "an integer" if integer else "a number"
    if isinstance(node, bool) or not isinstance(node, int | float):
        raise _err(field, f"must be {kind}, got {node!r} ({type(node).__name__}).")
    if integer and int(node) != node:
        raise _err(field, f"must be {kind}, got {node!r}.")
    if not math.isfinite(node):
        raise _err(field, f"must be finite, got {node!r}.")
    if lo is not None and (node <= lo if lo_open else node < lo):
        raise _err(field, f"must be {'>' if lo_open else '>='} {lo}, got {node!r}.")
    if hi is not None and node > hi:
        raise _err(field, f"must be <= {hi}, got {node!r}.")


def validate(cfg: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raises :class:`ConfigError` for the first invalid value. Does no I/O and trains nothing.

    ``num_devices`` (default: ``jax.device_count()``) checks the mesh and batch divisibility;
    0 skips those checks and leaves jax unstarted (validating configs before a run decides its
    devices, e.g. every cell of a sweep up front).
    """
    from nlnoise import models

    _number(cfg, "seed", lo=0, integer=True)
    _number(cfg, "batch_size", lo=1, integer=True)
    if "eval_batch_size" in cfg.get("dataset", {}):
        _number(cfg, "dataset.eval_batch_size", lo=1, integer=True)
    _number(cfg, "num_epochs", lo=1, integer=True)
    _number(cfg, "max_steps", lo=0, integer=True)
    if not isinstance(cfg.compilation_cache_dir, str):
        raise _err("compilation_cache_dir", "must be a directory path, or '' to disable the "
                   f"cache; got {cfg.compilation_cache_dir!r}.")
    _number(cfg, "learning_rate", lo=0, lo_open=True)
    _number(cfg, "momentum", lo=0, hi=1)
    if cfg.momentum >= 1:
        raise _err("momentum", f"must be < 1 (it is a decay factor), got {cfg.momentum}.")
    _number(cfg, "weight_decay", lo=0)
    for layer, wd in cfg.layer_weight_decay.items():
        if isinstance(wd, bool) or not isinstance(wd, int | float) or wd < 0:
            raise _err(f"layer_weight_decay.{layer}", f"must be a number >= 0, got {wd!r}.")
    _number(cfg, "lr_decay_factor", lo=0, hi=1)
    _number(cfg, "bias_lr_scale", lo=0, lo_open=True)
    if list(cfg.lr_boundaries_epochs) != sorted(cfg.lr_boundaries_epochs):
        raise _err("lr_boundaries_epochs", "must be increasing epoch numbers.")

    if cfg.model.name not in models.MODELS:
        raise _err("model.name",
                   f"unknown model {cfg.model.name!r}; choose one of {models.MODELS}.")

    _validate_corruption(cfg)
    _validate_noise_model(cfg)
    _validate_q(cfg)

    _number(cfg, "eval_every_epochs", lo=0, lo_open=True)
    _number(cfg, "checkpoint_every_steps", lo=0, integer=True)
    _number(cfg, "keep_checkpoints", lo=1, integer=True)
    _number(cfg, "log_every_steps", lo=1, integer=True)
    _validate_mesh(cfg, num_devices)


CORRUPTION_KINDS = (*noise.KINDS, "custom", "given")


def _validate_corruption(cfg: ml_collections.ConfigDict) -> None:
    c = cfg.corruption
    if c.kind not in CORRUPTION_KINDS:
        raise _err("corruption.kind", f"must be one of {CORRUPTION_KINDS}, got {c.kind!r}.")
    if c.kind == "custom" and not c.matrix_path:
        raise _err("corruption.matrix_path", "corruption.kind=custom needs the path of a .npy "
                   "[K, K] column-stochastic matrix (q[j, i] = p(noisy=j | true=i)).")
    if c.kind == "adversarial" and not c.confusion_path:
        raise _err("corruption.confusion_path", "corruption.kind=adversarial needs the path of "
                   "a clean model's confusion matrix (.npy, confusion[pred, true]) or of its "
                   "run's summary.json.")
    if c.kind == "block" and not c.groups:
        raise _err("corruption.groups", "corruption.kind=block needs the groups of classes that "
                   "flip among themselves, e.g. ((0, 2, 4, 6), (5, 7, 9)).")
    _number(cfg, "corruption.level", lo=0, hi=1)
    _number(cfg, "corruption.seed", lo=0, integer=True, optional=True)
    _number(cfg, "corruption.m", lo=1, integer=True)


def _validate_noise_model(cfg: ml_collections.ConfigDict) -> None:
    # The names live with the step that implements them (jax is imported by now anyway).
    from nlnoise.step import NOISE_MODELS

    n = cfg.noise
    if n.model not in NOISE_MODELS:
        raise _err("noise.model", f"must be one of {NOISE_MODELS}, got {n.model!r}.")
    _number(cfg, "noise.alpha", lo=0, hi=1, optional=True)
    _number(cfg, "noise.alpha_scale", lo=0, lo_open=True)
    if n.model == "true" and cfg.corruption.kind == "identity":
        raise _err("noise.model", "'true' needs a noise matrix; corruption.kind=identity has "
                   "none. Use noise.model=none for clean data.")
    if n.model == "outlier" and not cfg.dataset.num_known_outliers and n.alpha is None:
        raise _err("noise.alpha", "the outlier model needs alpha: set dataset.num_known_outliers "
                   "> 0 (alpha then follows from the counts) or noise.alpha in [0, 1].")


def _validate_q(cfg: ml_collections.ConfigDict) -> None:
    q = cfg.q
    _number(cfg, "q.freeze_epochs", lo=0)
    _number(cfg, "q.weight_decay", lo=0)
    _number(cfg, "q.learning_rate", lo=0, lo_open=True, optional=True)
    _number(cfg, "q.momentum", lo=0, hi=1)
    _number(cfg, "q.grad_clip", lo=0)
    # The names live with the optimizer that implements them; imported here so that building
    # a config does not import jax.
    from nlnoise.optim import check_regularizer

    check_regularizer(q.regularizer, "q.regularizer", error=ConfigError)
    if q.init not in ("identity", "confusion"):
        raise _err("q.init", f"must be 'identity' (the paper) or 'confusion', got {q.init!r}.")
    _number(cfg, "q.stats_epochs", lo=0, lo_open=True)
    if q.decay_rule not in Q_DECAY_RULES:
        raise _err("q.decay_rule", f"must be one of {Q_DECAY_RULES} ('constant' is the "
                   f"paper's fixed decay), got {q.decay_rule!r}.")
    _number(cfg, "q.plateau_tolerance", lo=0)
    _number(cfg, "q.decay_factor", lo=0, hi=1)
    _number(cfg, "q.decay_tolerance", lo=0)
    if cfg.noise.model != "learned":
        return
    if q.init == "confusion" and q.freeze_epochs <= 0:
        raise _err("q.freeze_epochs", "q.init='confusion' estimates Q from the network's "
                   "predictions during the freeze, so freeze_epochs must be > 0.")
    if q.freeze_epochs >= cfg.num_epochs:
        raise _err("q.freeze_epochs", f"({q.freeze_epochs:g}) must be below num_epochs "
                   f"({cfg.num_epochs}), or Q is never learned; lower it or raise num_epochs.")


def check_cpu_devices(cfg: ml_collections.ConfigDict) -> None:
    """Checks ``mesh.cpu_devices`` alone, without starting jax (it must be set before)."""
    _number(cfg, "mesh.cpu_devices", lo=-1, integer=True)


def _validate_mesh(cfg, num_devices: int | None) -> None:
    import jax

    _number(cfg, "mesh.model", lo=1, integer=True)
    _number(cfg, "mesh.data", lo=-1, integer=True)
    check_cpu_devices(cfg)
    data, model = cfg.mesh.data, cfg.mesh.model
    if data == 0:
        raise _err("mesh.data", "must be >= 1, or -1 for all devices not used by mesh.model.")
    # Evaluation splits its batches over ``data`` too; without this check an indivisible
    # eval_batch_size fails inside jax at the first evaluation, after an epoch of training.
    batches = [("batch_size", cfg.batch_size)]
    if "eval_batch_size" in cfg.get("dataset", {}):
        batches.append(("dataset.eval_batch_size", cfg.dataset.eval_batch_size))
    if num_devices == 0:
        for field, size in batches:
            if data > 0 and size % data:
                raise _err(field, f"{size} is not divisible by mesh.data={data}; "
                           f"use a multiple of {data}.")
        return
    devices = jax.device_count() if num_devices is None else num_devices
    if devices % model and cfg.mesh.data == -1:
        raise _err("mesh.model", f"{model} does not divide the {devices} devices available.")
    data = devices // model if data == -1 else data
    if data * model > devices or (data * model < devices and jax.process_count() > 1):
        raise _err("mesh", f"data x model = {data} x {model} = {data * model}, but there are "
                   f"{devices} devices; set mesh.data=-1 to use them all.")
    for field, size in batches:
        if size % data:
            raise _err(field, f"{size} is not divisible by the {data} devices on the mesh's "
                       f"data axis; use a multiple of {data}.")


def to_json(cfg: ml_collections.ConfigDict) -> str:
    """Canonical JSON of a config (sorted keys), used to recognise a workdir's run."""
    return json.dumps(cfg.to_dict(), sort_keys=True, default=str, indent=1)
