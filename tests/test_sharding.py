"""Mesh construction, the state's shardings and the CPU device split."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
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


def test_q_optimizer_state_and_q_stats_follow_q_columns():
    from nlnoise import optim

    mesh = sharding.make_mesh(2, 4)
    q = jax.ShapeDtypeStruct((64, 64), jnp.float32)
    fused = jax.eval_shape(optim.q_optimizer(0.1, momentum=0.9).init, q)
    small = jax.eval_shape(optim.q_optimizer(0.1, momentum=0.9).init,
                           jax.ShapeDtypeStruct((8, 8), jnp.float32))
    sh = sharding.state_shardings(mesh, {"opt": {"q": fused}, "small": {"q": small},
                                         "q_stats": q, "other": {"k": q}})
    assert optax.tree.get(sh["opt"], "tau").spec == P("model")
    assert optax.tree.get(sh["opt"], "trace").spec == P(None, "model")  # momentum [K, K]
    assert optax.tree.get(sh["opt"], "q_decay_scale").spec == P()
    assert optax.tree.get(sh["small"], "trace").spec == P(None, "model")  # 8 columns, 4 | 8
    assert sh["q_stats"].spec == P(None, "model")
    assert sh["other"]["k"].spec == P()  # small and not Q's: replicated
    path = (jax.tree_util.DictKey("a"), jax.tree_util.GetAttrKey("b"),
            jax.tree_util.SequenceKey(0))
    assert sharding.path_names(path) == ["a", "b", None]


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


# AlexNet on a simulated data x model mesh (conftest: 8 CPU devices). The optimizer is the
# ImageNet config's (SGD with momentum and weight decay; learned Q with the paper's decay).
def _alexnet_state_fn(num_classes: int, image_size: int):
    from nlnoise import models, optim, step

    model = models.get_model("alexnet", num_classes, image_size=image_size)
    tx = optim.train_state_optimizer(
        optim.net_optimizer(0.01, momentum=0.9, weight_decay=5e-4),
        optim.q_optimizer(0.01, weight_decay=0.1))
    return lambda: step.create_train_state(
        model, tx, input_shape=(image_size, image_size, 3), q_init=np.eye(num_classes),
        noise_model="learned", num_classes=num_classes)


def _specs(tree) -> dict[str, P]:
    return {"/".join(str(n) for n in sharding.path_names(path) if n is not None): s.spec
            for path, s in jax.tree_util.tree_leaves_with_path(tree)}


def test_alexnet_shards_fc6_fc7_fc8_q_and_their_optimizer_state_on_a_2x4_mesh():
    abstract = jax.eval_shape(_alexnet_state_fn(1000, 227))
    sh = sharding.state_shardings(sharding.make_mesh(2, 4), abstract)
    params, opt = _specs(sh.params), _specs(sh.opt_state)
    for layer in ("fc6", "fc7", "fc8"):  # 9216x4096, 4096x4096, 4096x1000: by output features
        assert params[f"net/{layer}/kernel"] == P(None, "model"), layer
        assert params[f"net/{layer}/bias"] == P(), layer
        momenta = [s for name, s in opt.items() if name.endswith(f"{layer}/kernel")]
        assert momenta == [P(None, "model")], (layer, momenta)
    for layer in ("conv1", "conv2", "conv3", "conv4", "conv5"):  # small: replicated
        assert params[f"net/{layer}/kernel"] == P(), layer
        assert {s for n, s in opt.items() if f"{layer}/" in n} == {P()}, layer
    assert params["q"] == P(None, "model")  # by columns, the true classes
    q_state = {n: s for n, s in opt.items() if n.startswith("inner_states/q/")}
    assert q_state[next(n for n in q_state if n.endswith("tau/net/q") or n.endswith("tau/q"))] \
        == P("model")
    assert {s for n, s in q_state.items() if "tau" not in n} == {P()}  # scalars
    assert sh.q_stats.spec == P(None, "model")
    assert {sh.step.spec, sh.rng.spec} == {P()}


def _leaf_bytes(abstract, shardings) -> int:
    return sum(math.prod(s.shard_shape(a.shape)) * a.dtype.itemsize
               for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings),
                               strict=True))


def test_alexnet_bytes_per_device_fall_as_the_model_axis_grows():
    abstract = jax.eval_shape(_alexnet_state_fn(1000, 227))
    total = _leaf_bytes(abstract, sharding.state_shardings(sharding.make_mesh(8, 1), abstract))
    per_device = []
    for model in (1, 2, 4, 8):
        sh = sharding.state_shardings(sharding.make_mesh(8 // model, model), abstract)
        per_device.append(_leaf_bytes({"p": abstract.params, "o": abstract.opt_state},
                                      {"p": sh.params, "o": sh.opt_state}))
    assert per_device[0] < total  # the rest of the state (q_stats, rng) is not in the sum
    assert per_device == sorted(per_device, reverse=True) and len(set(per_device)) == 4
    # What splits N ways: fc6-8's kernels and their momenta, Q and its thresholds.
    kernels = 4 * (9216 * 4096 + 4096 * 4096 + 4096 * 1000)
    split = 2 * kernels + 4 * 1000 * 1000 + 4 * 1000
    for model, b in zip((2, 4, 8), per_device[1:], strict=True):
        assert per_device[0] - b == split - split // model


@pytest.fixture(scope="module")
def alexnet_small():
    """AlexNet at 67x67 (fc6 256 -> 4096), K = 256 (fc8 and Q sharded), batch 16, two steps."""
    from nlnoise import step

    host = jax.device_get(jax.jit(_alexnet_state_fn(256, 67))())
    rng = np.random.default_rng(0)
    batches = [{"image": rng.standard_normal((16, 67, 67, 3), np.float32),
                "label": rng.integers(0, 256, 16).astype(np.int32)} for _ in range(2)]

    def run(data: int, model: int):
        mesh = sharding.make_mesh(data, model)
        st_sh = sharding.state_shardings(mesh, host)
        state = jax.device_put(host, st_sh)
        fn = step.jit_train_step(mesh, st_sh)
        losses = []
        for b in batches:
            state, metrics = fn(state, jax.device_put(b, sharding.batch_sharding(mesh)))
            losses.append(float(metrics["loss"]))
        return losses, state

    return run


@pytest.mark.slow
def test_alexnet_step_on_2x4_equals_8x1_and_one_device(alexnet_small):
    ref_loss, ref = alexnet_small(1, 1)
    assert ref.params["net"]["fc7"]["kernel"].sharding.spec == P()
    for data, model in ((8, 1), (2, 4)):
        loss, state = alexnet_small(data, model)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        assert int(state.bad_step) == -1
        fc7 = state.params["net"]["fc7"]["kernel"]
        if model > 1:
            assert fc7.sharding.spec == P(None, "model")
            assert sharding.per_device_bytes(fc7) == fc7.nbytes // model
        for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(state.params),
                                     jax.tree.leaves(ref.params), strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6,
                                       err_msg=f"{data}x{model} {jax.tree_util.keystr(path)}")
        # The learned Q moved, stayed on the simplex, and agrees across meshes.
        q = np.asarray(state.q)
        assert not np.array_equal(q, np.eye(256))
        np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)
