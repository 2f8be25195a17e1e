"""TinyCNN and MLP: shapes, parameters, and that a few steps fit a small batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nlnoise.models.tiny import MLP, TinyCNN


def _count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _param_shapes(model, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    params = jax.eval_shape(lambda v: model.init(jax.random.key(0, impl="rbg"), v)["params"], x)
    out = jax.eval_shape(lambda p, v: model.apply({"params": p}, v, train=True), params, x)
    return params, out


@pytest.mark.parametrize("shape", [(4, 8, 8, 1), (4, 28, 28, 1), (4, 32, 32, 3), (4, 1, 1, 2)])
def test_tiny_cnn_shapes_and_parameter_count(shape):
    params, out = _param_shapes(TinyCNN(num_classes=7, features=(4, 6)), shape)
    assert out.shape == (4, 7) and out.dtype == jnp.float32
    assert set(params) == {"conv1", "conv2", "fc"}
    c = shape[-1]
    # conv1 3*3*C*4 + 4, conv2 3*3*4*6 + 6, fc 6*7 + 7 (after global average pooling).
    assert _count(params) == (9 * c * 4 + 4) + (9 * 4 * 6 + 6) + (6 * 7 + 7)


@pytest.mark.parametrize("hidden,names,count", [
    ((), {"out"}, 64 * 5 + 5),
    ((16,), {"hidden_0", "out"}, (64 * 16 + 16) + (16 * 5 + 5)),
    ((16, 8), {"hidden_0", "hidden_1", "out"}, (64 * 16 + 16) + (16 * 8 + 8) + (8 * 5 + 5)),
])
def test_mlp_flattens_and_has_configurable_hidden_layers(hidden, names, count):
    params, out = _param_shapes(MLP(num_classes=5, hidden=hidden), (3, 8, 8, 1))
    assert out.shape == (3, 5)
    assert set(params) == names
    assert _count(params) == count


def test_mlp_without_hidden_layers_is_linear():
    model = MLP(num_classes=3, hidden=())
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4))
    params = model.init(jax.random.PRNGKey(1), x)["params"]
    f = lambda v: model.apply({"params": params}, v)
    np.testing.assert_allclose(f(2 * x) - f(jnp.zeros_like(x)),
                               2 * (f(x) - f(jnp.zeros_like(x))), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model,shape", [
    (TinyCNN(num_classes=4), (12, 8, 8, 1)),
    (MLP(num_classes=4, hidden=(32,)), (12, 8, 8, 1)),
])
def test_a_few_adam_steps_fit_a_small_batch(model, shape):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    y = jnp.arange(shape[0]) % 4
    params = jax.jit(model.init)(jax.random.key(1, impl="rbg"), x)["params"]
    tx = optax.adam(0.02)

    def loss_fn(p):
        logits = model.apply({"params": p}, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, o):
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss

    opt = tx.init(params)
    losses = []
    for _ in range(40):
        params, opt, loss = step(params, opt)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses


def test_tiny_cnn_rejects_flat_input():
    with pytest.raises(ValueError, match="NHWC"):
        TinyCNN().init(jax.random.PRNGKey(0), jnp.zeros((2, 64)))
