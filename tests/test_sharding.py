"""Mesh construction, the state's shardings and the CPU device split."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
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


def test_large_q_is_stored_padded_so_any_model_axis_up_to_128_divides_it():
    assert sharding.q_storage_columns(10) == 10  # small Q: never padded
    assert sharding.q_storage_columns(1000) == 1000
    assert sharding.q_storage_columns(21841) == 21888  # ImageNet-22k
    assert sharding.q_storage_columns(1024) == 1024
    q = np.eye(1030, dtype=np.float32)
    padded = sharding.pad_q(q)
    assert padded.shape == (1030, 1152) and not padded[:, 1030:].any()
    np.testing.assert_array_equal(sharding.unpad_q(padded), q)
    with pytest.raises(ValueError, match="q: expected a square"):
        sharding.pad_q(np.ones((3, 4)))
    # The shard shape, without allocating 1.9 GB: K=21841 on 8 devices falls as 1/8.
    mesh = sharding.make_mesh(1, 8)
    shape = (21841, sharding.q_storage_columns(21841))
    sh = sharding.state_shardings(mesh, {"q": jax.ShapeDtypeStruct(shape, jnp.float32)})["q"]
    assert sh.spec == P(None, "model") and sh.shard_shape(shape) == (21841, 21888 // 8)


_CONFIGURE = """
import json, logging, os, sys
import jax
from nlnoise import sharding
logging.basicConfig(level=logging.WARNING)
args = json.loads(sys.argv[1])
if args.pop("init_first", False):
    jax.devices()
got = sharding.configure_cpu_devices(**args)
print(json.dumps({"returned": got, "devices": jax.device_count()}))
"""


@pytest.mark.parametrize(("args", "xla_flags", "returned", "devices", "warns"), [
    ({"requested": 0, "batch_sizes": [128, 1000]}, "", 8, 8, False),  # auto: largest that fits
    ({"requested": 0, "batch_sizes": [12, 1000]}, "", 4, 4, False),
    ({"requested": 0, "batch_sizes": [128], "model": 3}, "", None, 1, False),  # none fits
    ({"requested": 3}, "", 3, 3, False),  # explicit
    ({"requested": -1}, "", None, 1, False),  # jax's default
    ({"requested": 0, "batch_sizes": [128]}, "--xla_force_host_platform_device_count=2",
     None, 2, False),  # the user's own flag wins over auto
    ({"requested": 0, "batch_sizes": [128], "init_first": True}, "", None, 1, False),
    ({"requested": 4, "init_first": True}, "", None, 1, True),  # too late: said so
])
def test_configure_cpu_devices_in_a_fresh_process(args, xla_flags, returned, devices, warns):
    env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _CONFIGURE, json.dumps(args)], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"returned": returned, "devices": devices}
    assert ("mesh.cpu_devices=4 ignored" in proc.stderr) == warns
