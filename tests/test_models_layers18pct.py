"""layers-18pct: geometry, parameters, cuda-convnet pooling, conv gradients, and that it learns."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from nlnoise.models.layers18pct import (
    Layers18pct,
    avg_pool,
    conv2d,
    max_pool,
    pool_output_size,
)


@pytest.fixture
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def _count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _init(model, shape, seed=0):
    # rbg keys: XLA:CPU compiles threefry's random bits far more slowly (~4 s vs ~1 s here).
    init = jax.jit(lambda key: model.init(key, jnp.zeros(shape, jnp.float32))["params"])
    return init(jax.random.key(seed, impl="rbg"))


# Hand derivation from layers-18pct.cfg (5x5 kernels, 32/32/64 filters, shared biases):
#   conv1 5*5*C*32 + 32, conv2 5*5*32*32 + 32 = 25632, conv3 5*5*32*64 + 64 = 51264,
#   pools ceil((n - 3) / 2) + 1: 32 -> 16 -> 8 -> 4, 28 -> 14 -> 7 -> 3, 8 -> 4 -> 2 -> 1,
#   fc10 (side**2 * 64) * K + K.
# 32x32x3, K=10: 2432 + 25632 + 51264 + (1024*10 + 10) = 89578.
# 32x32x3, K=11: 2432 + 25632 + 51264 + (1024*11 + 11) = 90603.
# 28x28x1, K=10: 832 + 25632 + 51264 + (576*10 + 10) = 83498.
# 8x8x1,   K=10: 832 + 25632 + 51264 + (64*10 + 10) = 78378.
@pytest.mark.parametrize("shape,k,expected,flat", [
    ((2, 32, 32, 3), 10, 89578, 1024),
    ((2, 32, 32, 3), 11, 90603, 1024),
    ((2, 28, 28, 1), 10, 83498, 576),
    ((3, 8, 8, 1), 10, 78378, 64),
])
def test_output_shape_and_parameter_count(shape, k, expected, flat):
    model = Layers18pct(num_classes=k)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    params = jax.eval_shape(lambda v: model.init(jax.random.key(0, impl="rbg"), v)["params"], x)
    assert _count(params) == expected
    assert params["fc10"]["kernel"].shape == (flat, k)
    logits = jax.eval_shape(lambda p, v: model.apply({"params": p}, v, train=True), params, x)
    assert logits.shape == (shape[0], k) and logits.dtype == jnp.float32


def test_forward_is_finite_and_deterministic():
    model = Layers18pct(num_classes=10)
    params = _init(model, (1, 32, 32, 3))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3)) * 50
    apply = jax.jit(lambda p, v, train: model.apply({"params": p}, v, train=train),
                    static_argnums=2)
    logits = apply(params, x, True)
    assert bool(jnp.all(jnp.isfinite(logits))) and float(jnp.std(logits)) > 0
    np.testing.assert_array_equal(logits, apply(params, x, False))


def test_layer_names_shapes_and_initialisation():
    params = _init(Layers18pct(num_classes=10), (1, 32, 32, 3))
    assert set(params) == {"conv1", "conv2", "conv3", "fc10"}
    assert params["conv1"]["kernel"].shape == (5, 5, 3, 32)
    assert params["conv2"]["kernel"].shape == (5, 5, 32, 32)
    assert params["conv3"]["kernel"].shape == (5, 5, 32, 64)
    for name, std in [("conv1", 1e-4), ("conv2", 1e-2), ("conv3", 1e-2), ("fc10", 1e-2)]:
        kernel = np.asarray(params[name]["kernel"])
        assert kernel.std() == pytest.approx(std, rel=0.1), name  # cfg initW
        assert abs(kernel.mean()) < 0.1 * std
        assert not np.any(np.asarray(params[name]["bias"])), name  # biases start at 0


def test_intermediate_sizes_for_cifar():
    assert [pool_output_size(n, 3, 2) for n in (32, 16, 8)] == [16, 8, 4]
    assert [pool_output_size(n, 3, 2) for n in (28, 14, 7)] == [14, 7, 3]
    assert [pool_output_size(n, 3, 2) for n in (8, 4, 2, 1)] == [4, 2, 1, 1]
    assert pool_output_size(55, 3, 2) == 27 and pool_output_size(13, 3, 2) == 6


def _naive_pool(x, size, stride, op):
    """cuda-convnet kLocalPool: windows from stride*o, clipped to the image, avg over regionSize."""
    b, h, w, c = x.shape
    oh, ow = pool_output_size(h, size, stride), pool_output_size(w, size, stride)
    out = np.empty((b, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            win = x[:, i * stride:min(h, i * stride + size), j * stride:min(w, j * stride + size)]
            out[:, i, j] = win.max(axis=(1, 2)) if op == "max" else win.mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("hw", [(32, 32), (7, 9), (2, 2), (1, 3), (6, 5)])
@pytest.mark.parametrize("size,stride", [(3, 2), (2, 2), (3, 1)])
def test_pools_match_cuda_convnet_loops(hw, size, stride):
    x = np.random.default_rng(0).normal(size=(2, *hw, 3)).astype(np.float32)
    np.testing.assert_allclose(max_pool(jnp.asarray(x), size, stride),
                               _naive_pool(x, size, stride, "max"), rtol=1e-6)
    np.testing.assert_allclose(avg_pool(jnp.asarray(x), size, stride),
                               _naive_pool(x, size, stride, "avg"), rtol=1e-5, atol=1e-6)


def test_avg_pool_divides_clipped_windows_by_pixels_inside():
    y = avg_pool(jnp.ones((1, 4, 4, 1)), 3, 2)  # last row/column of windows is 3x2 / 2x2
    np.testing.assert_allclose(y, np.ones((1, 2, 2, 1)))


def test_max_pool_gradient_goes_to_every_maximum_like_kLocalMaxUndo():
    x = jnp.asarray([[1.0, 5.0, 5.0, 0.0], [2.0, 3.0, 1.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    x = x[None, :, :, None]  # 3x4 -> windows rows {0..2}, cols {0..2} and {2, 3}
    y, vjp = jax.vjp(lambda v: max_pool(v, 3, 2), x)
    np.testing.assert_allclose(y[0, :, :, 0], [[5.0, 5.0]])
    (g,) = vjp(jnp.asarray([[[[1.0], [10.0]]]]))
    want = np.zeros((3, 4))
    want[0, 1] = 1.0  # only in window 0
    want[0, 2] = 11.0  # the maximum of both windows
    np.testing.assert_allclose(g[0, :, :, 0], want)


@pytest.mark.parametrize("hw,size,stride", [
    ((9, 7), 3, 2), ((32, 32), 3, 2), ((8, 6), 2, 2),
    ((7, 6), 3, 1), ((7, 8), 2, 3), ((2, 3), 3, 2),
])
def test_max_pool_gradient_matches_autodiff_without_ties(x64, hw, size, stride):
    n = 2 * hw[0] * hw[1] * 3
    x = jnp.asarray(np.random.default_rng(3).permutation(n).reshape(2, *hw, 3) * 1.0)
    oh, ow = pool_output_size(hw[0], size, stride), pool_output_size(hw[1], size, stride)
    w = jnp.asarray(np.random.default_rng(4).normal(size=(2, oh, ow, 3)))
    pads = ((0, 0), (0, (oh - 1) * stride + size - hw[0]), (0, (ow - 1) * stride + size - hw[1]),
            (0, 0))
    ref = lambda v: lax.reduce_window(v, -jnp.inf, lax.max, (1, size, size, 1),
                                      (1, stride, stride, 1), pads)
    got = jax.jit(jax.grad(lambda v: jnp.sum(w * max_pool(v, size, stride))))(x)
    want = jax.jit(jax.grad(lambda v: jnp.sum(w * ref(v))))(x)
    np.testing.assert_allclose(got, want)


@pytest.mark.parametrize("cin,k,stride,pad,hw", [
    (3, 5, 1, 2, 12),  # conv1: kernel gradient by row im2col
    (1, 3, 2, 1, 9),   # grayscale, strided
    (3, 11, 4, 0, 31),  # AlexNet conv1 geometry, smaller image
    (8, 3, 1, 1, 6),   # many channels: XLA's own kernel gradient
])
def test_conv2d_values_and_gradients_match_lax(x64, cin, k, stride, pad, hw):
    rng = np.random.default_rng(cin)
    x = jnp.asarray(rng.normal(size=(2, hw, hw, cin)))
    w = jnp.asarray(rng.normal(size=(k, k, cin, 4)))
    padding = ((pad, pad), (pad, pad))

    def ref(a, b):
        return lax.conv_general_dilated(a, b, (stride, stride), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    y, vjp = jax.vjp(lambda a, b: conv2d(a, b, stride, padding), x, w)
    y_ref, vjp_ref = jax.vjp(ref, x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    g = jnp.asarray(rng.normal(size=y.shape))
    for got, want in zip(vjp(g), vjp_ref(g), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_sgd_steps_reduce_the_loss_and_every_layer_gets_gradient():
    model = Layers18pct(num_classes=10)
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 32, 32, 3))
    y = jnp.arange(16) % 10
    tx = optax.sgd(0.01, momentum=0.9)

    def loss_fn(p):
        logits = model.apply({"params": p}, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, o):
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss, g

    def run(params, steps):
        opt, losses, first = tx.init(params), [], None
        for _ in range(steps):
            params, opt, loss, grads = step(params, opt)
            losses.append(float(loss))
            first = grads if first is None else first
        return losses, first

    # The cfg's initialisation (conv1 std 1e-4): uniform predictions, slow but steady progress.
    cfg_params = _init(model, (1, 32, 32, 3))
    losses, _ = run(cfg_params, 5)
    assert losses[0] == pytest.approx(np.log(10), abs=1e-3)
    assert np.all(np.diff(losses) < 0), losses
    # All weights at std 0.05 (same compiled step): 20 steps start fitting the 16 images.
    scaled = {name: {"kernel": layer["kernel"] * (0.05 / std), "bias": layer["bias"]}
              for (name, layer), std in zip(sorted(cfg_params.items()), (1e-4, 1e-2, 1e-2, 1e-2),
                                            strict=True)}
    losses, grads = run(scaled, 20)
    for name, g in grads.items():
        assert float(jnp.abs(g["kernel"]).max()) > 0, name
        assert bool(jnp.all(jnp.isfinite(g["kernel"]))), name
    assert losses[-1] < 0.75 * losses[0], losses


def test_rejects_non_image_input():
    with pytest.raises(ValueError, match="NHWC"):
        Layers18pct().init(jax.random.PRNGKey(0), jnp.zeros((2, 32 * 32 * 3)))
