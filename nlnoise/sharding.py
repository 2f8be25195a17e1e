"""Device mesh and shardings: a ``data`` axis for the batch and an optional ``model`` axis.

The ``model`` axis shards what is large along the class or hidden dimension: Q by columns (the
true-class axis, so the per-column simplex projection needs no communication), with its
optimizer state and ``q_stats``, and the big dense kernels (AlexNet's fc6/fc7/fc8) and their
momenta by output features. Everything else is replicated. docs/architecture.md has the rules.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA, MODEL = "data", "model"
# Keys whose arrays are split by Q's columns: Q in the parameters ``{"net": ..., "q": ...}``
# (and, under the same key in the optimizer state, its moments and thresholds), and the train
# state's ``q_stats``, which has Q's shape.
Q_KEYS = ("q", "q_stats")
# Dense kernels with at least this many elements are sharded over the model axis.
MIN_SHARDED_KERNEL = 1 << 20
# Q with at least this many classes is stored with its columns padded to a multiple of
# Q_COLUMN_MULTIPLE, so that it shards over any model axis of size dividing 128 (jax refuses
# uneven shardings). The padding depends on K alone, not on the mesh, so a checkpoint resumes
# on a different mesh. Below the threshold Q is small and is replicated when K does not divide.
Q_PAD_MIN_K = 1024
Q_COLUMN_MULTIPLE = 128


# On a CPU host, XLA runs one device's convolutions on a few intra-op threads and leaves cores
# idle between ops; splitting the host into several devices runs the batch's shards
# concurrently; more devices gave more images/s up to 8 (docs/performance.md, "Scaling in
# devices"), so ``auto`` (the default) asks for up to 8. The
# devices' all-reduces rendezvous in-process: a loop must not run far ahead of them
# (nlnoise.step.DispatchWindow), or XLA:CPU deadlocks and aborts the process.
AUTO_CPU_DEVICES = (8, 4, 2)
log = logging.getLogger(__name__)


def configure_cpu_devices(requested: int = 0, *, batch_sizes: Sequence[int] = (),
                          model: int = 1) -> int | None:
    """Splits a CPU host into ``n`` XLA devices (data parallel); call before jax's first op.

    ``requested``: ``n >= 1`` exactly, ``0`` for auto (the largest of 8, 4, 2 that divides every
    ``batch_sizes`` entry and is a multiple of the mesh's ``model`` size, on single-process
    hosts with 2+ cores), ``-1`` to leave jax's default. Auto also leaves alone a device count
    already set by ``XLA_FLAGS=--xla_force_host_platform_device_count`` or
    ``jax_num_cpu_devices``, and does nothing once jax has run (a notebook); an explicit
    ``n`` then logs a warning. Only the CPU backend is affected: on GPU/TPU hosts the mesh uses
    the accelerators as before. Returns the count set, or None if nothing was changed.
    """
    if requested == -1:
        return None
    auto = requested == 0
    if auto:
        preset = ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
                  or jax.config.jax_num_cpu_devices != -1)
        if preset or jax.distributed.is_initialized() or (os.cpu_count() or 1) < 2:
            return None
        fits = [n for n in AUTO_CPU_DEVICES
                if n % model == 0 and all(b % n == 0 for b in batch_sizes)]
        if not fits:
            return None
        requested = fits[0]
    if jax.config.jax_num_cpu_devices == requested:
        return requested
    try:
        jax.config.update("jax_num_cpu_devices", int(requested))
    except RuntimeError:
        # jax already ran something in this process: its devices stay as they are.
        if not auto:
            log.warning("mesh.cpu_devices=%d ignored: jax was already initialised in this "
                        "process; set it before jax's first operation (nlnoise-train does).",
                        requested)
        return None
    return int(requested)


def make_mesh(data: int = -1, model: int = 1, devices=None) -> Mesh:
    """A ``(data, model)`` mesh over ``devices`` (default: all); ``data=-1`` takes the rest.

    In a single process the mesh may use only the first ``data * model`` devices; across
    processes it must use them all (every process feeds its own devices).
    """
    devices = list(jax.devices() if devices is None else devices)
    if data == -1:
        data = len(devices) // model
    n = data * model
    if n > len(devices) or (n < len(devices) and jax.process_count() > 1):
        raise ValueError(
            f"mesh: data x model = {data} x {model} = {n}, but there are {len(devices)} "
            "devices; set mesh.data=-1 to use them all."
        )
    devices = devices[:n]
    arr = np.asarray(devices, dtype=object).reshape(data, model)
    return Mesh(arr, (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto))


def q_storage_columns(k: int) -> int:
    """Number of columns Q ``[K, K]`` is stored with: ``K``, or for ``K >= Q_PAD_MIN_K`` the
    next multiple of ``Q_COLUMN_MULTIPLE`` (ImageNet-22k: 21841 -> 21888, 0.2% more)."""
    if k < Q_PAD_MIN_K:
        return k
    return -(-k // Q_COLUMN_MULTIPLE) * Q_COLUMN_MULTIPLE


def pad_q(q):
    """Q ``[K, K]`` (columns = true classes) to its storage shape ``[K, q_storage_columns(K)]``.

    The extra columns are zeros: they stand for true classes the network never outputs, so
    they take no part in ``Q p`` (see :func:`unpad_q`).
    """
    k = q.shape[0]
    if q.ndim != 2 or q.shape[1] != k:
        raise ValueError(f"q: expected a square [K, K] matrix, got shape {q.shape}.")
    extra = q_storage_columns(k) - k
    if not extra:
        return q
    xp = np if isinstance(q, np.ndarray) else jnp
    return xp.pad(q, ((0, 0), (0, extra)))


def unpad_q(q):
    """The logical Q ``[K, K]`` from its storage form ``[K, K_stored >= K]`` (a no-op if square)."""
    return q[:, : q.shape[0]]


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``, replicated over ``model``."""
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def path_names(path: Sequence[Any]) -> list[str | None]:
    """The names along a pytree key path (dict keys, attribute names; None for list indices)."""
    return [getattr(k, "key", getattr(k, "name", None)) for k in path]


def _param_spec(path, leaf, model_size: int) -> P:
    if model_size == 1 or not hasattr(leaf, "shape"):
        return P()
    shape = leaf.shape
    if any(k in Q_KEYS for k in path_names(path)) and shape and shape[-1] % model_size == 0:
        # Q and its optimizer state (momentum [K, K], thresholds [K]) by columns (true
        # classes): the projection is per column, so it stays local. Large Q is stored padded
        # (q_storage_columns) so that this divides.
        return P(*([None] * (len(shape) - 1)), MODEL)
    if len(shape) == 2 and math.prod(shape) >= MIN_SHARDED_KERNEL and shape[1] % model_size == 0:
        return P(None, MODEL)
    return P()


def state_shardings(mesh: Mesh, abstract_state):
    """NamedShardings for every leaf of a train state (or any pytree of params / opt state).

    Q ``[K, K_stored]``, every array of its optimizer state (any leaf under a ``"q"`` key) and
    ``q_stats`` are split by their last axis (Q's columns) when the ``model`` axis divides it;
    dense kernels of at least ``MIN_SHARDED_KERNEL`` elements by their output features, and so
    are their momenta (same shape). Everything else, scalars included, is replicated.
    """
    model_size = mesh.shape[MODEL]
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, _param_spec(path, leaf, model_size)),
        abstract_state,
    )


def per_device_bytes(array: jax.Array) -> int:
    """Bytes held on one device by a (possibly sharded) array: its largest addressable shard."""
    return max(s.data.nbytes for s in array.addressable_shards)
