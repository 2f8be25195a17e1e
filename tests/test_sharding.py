"""Mesh construction and the state's shardings."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from nlnoise import sharding


def test_mesh_shapes_and_errors():
    mesh = sharding.make_mesh(-1, 2)
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    assert dict(sharding.make_mesh(2, 1).shape) == {"data": 2, "model": 1}  # a subset, 1 process
    with pytest.raises(ValueError, match="mesh"):
        sharding.make_mesh(16, 1)


def test_q_and_big_kernels_shard_over_model_axis_and_per_device_memory_falls():
    mesh = sharding.make_mesh(1, 8)
    k = 64
    tree = {"params": {"q": jnp.eye(k), "net": {
        "fc6": {"kernel": jnp.zeros((1024, 1024)), "bias": jnp.zeros(1024)},
        "conv1": {"kernel": jnp.zeros((3, 3, 3, 8))}}}}
    sh = sharding.state_shardings(mesh, tree)
    assert sh["params"]["q"].spec == P(None, "model")
    assert sh["params"]["net"]["fc6"]["kernel"].spec == P(None, "model")
    assert sh["params"]["net"]["fc6"]["bias"].spec == P()
    assert sh["params"]["net"]["conv1"]["kernel"].spec == P()
    placed = jax.device_put(tree, sh)
    assert sharding.per_device_bytes(placed["params"]["q"]) == k * k * 4 // 8
    conv1 = placed["params"]["net"]["conv1"]["kernel"]
    assert sharding.per_device_bytes(conv1) == 3 * 3 * 3 * 8 * 4  # small: replicated


def test_batch_is_split_not_replicated():
    mesh = sharding.make_mesh(8, 1)
    x = jax.device_put(jnp.zeros((64, 10)), sharding.batch_sharding(mesh))
    assert sharding.per_device_bytes(x) == 64 * 10 * 4 // 8
