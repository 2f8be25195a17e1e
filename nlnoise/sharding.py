"""Device mesh and shardings: a ``data`` axis for the batch and an optional ``model`` axis.

The ``model`` axis shards what is large along the class or hidden dimension: Q by columns (the
true-class axis, so the per-column simplex projection needs no communication) and the big dense
kernels (AlexNet's fc6/fc7/fc8) by their output features. Everything else is replicated.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA, MODEL = "data", "model"
# Dense kernels with at least this many elements are sharded over the model axis.
MIN_SHARDED_KERNEL = 1 << 20


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


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``, replicated over ``model``."""
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _param_spec(path, leaf, model_size: int) -> P:
    if model_size == 1 or not hasattr(leaf, "shape"):
        return P()
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    shape = leaf.shape
    if names and names[-1] == "q" and len(shape) == 2:
        # Q by columns (true classes): projection is per column, so it stays local.
        return P(None, MODEL) if shape[1] % model_size == 0 else P()
    if len(shape) == 2 and math.prod(shape) >= MIN_SHARDED_KERNEL and shape[1] % model_size == 0:
        return P(None, MODEL)
    return P()


def state_shardings(mesh: Mesh, abstract_state):
    """NamedShardings for every leaf of a train state (or any pytree of params / opt state).

    Optimizer moments follow their parameter's spec because they share its path suffix and
    shape; scalars and small arrays are replicated.
    """
    model_size = mesh.shape[MODEL]
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, _param_spec(path, leaf, model_size)),
        abstract_state,
    )


def per_device_bytes(array: jax.Array) -> int:
    """Bytes held on one device by a (possibly sharded) array: its largest addressable shard."""
    return max(s.data.nbytes for s in array.addressable_shards)
