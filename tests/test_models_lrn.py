"""cuda-convnet rnorm / cmrnorm against naive loops of the kernels' formulas, values and grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlnoise.models.lrn import cross_map_response_norm, spatial_response_norm


@pytest.fixture
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def _naive_rnorm(x, size, scale, power, k=1.0):
    """Loop transcription of kCNorm_fewfilter with meanDiffs = imgs (cuda-convnet rnorm)."""
    b, h, w, c = x.shape
    add_scale = scale / size**2  # layer.py: dic['scale'] /= dic['size']**2
    out = np.empty_like(x)
    for n in range(b):
        for py in range(h):
            for px in range(w):
                start_y, start_x = -(size // 2) + py, -(size // 2) + px
                for f in range(c):
                    acc = 0.0
                    for yy in range(max(0, start_y), min(h, start_y + size)):
                        for xx in range(max(0, start_x), min(w, start_x + size)):
                            acc += x[n, yy, xx, f] ** 2
                    out[n, py, px, f] = x[n, py, px, f] * (k + add_scale * acc) ** (-power)
    return out


def _naive_cmrnorm(x, size, scale, power, k=1.0):
    """Loop transcription of kFCNorm (non-blocked) with meanDiffs = imgs (cuda-convnet cmrnorm)."""
    flat = x.reshape(-1, x.shape[-1])
    c = flat.shape[1]
    add_scale = scale / size  # layer.py: dic['scale'] /= dic['size'] for cross-map
    out = np.empty_like(flat)
    for i in range(flat.shape[0]):
        for f in range(c):
            start = -(size // 2) + f
            acc = sum(flat[i, g] ** 2 for g in range(max(0, start), min(c, start + size)))
            out[i, f] = flat[i, f] * (k + add_scale * acc) ** (-power)
    return out.reshape(x.shape)


# scale is large so that the normalisation (and any border mistake) changes the values a lot.
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("power,k", [(0.75, 1.0), (0.5, 2.0), (1.3, 1.5)])
def test_spatial_matches_cuda_convnet_loops(x64, size, power, k):
    x = np.random.default_rng(size).normal(size=(2, 5, 6, 3)) * 2
    got = spatial_response_norm(jnp.asarray(x), size, 3.0, power, k=k)
    np.testing.assert_allclose(got, _naive_rnorm(x, size, 3.0, power, k), rtol=1e-12)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("power,k", [(0.75, 1.0), (0.75, 2.0), (0.6, 1.0)])
def test_cross_map_matches_cuda_convnet_loops(x64, size, power, k):
    x = np.random.default_rng(size).normal(size=(2, 3, 2, 7)) * 2
    got = cross_map_response_norm(jnp.asarray(x), size, 3.0, power, k=k)
    np.testing.assert_allclose(got, _naive_cmrnorm(x, size, 3.0, power, k), rtol=1e-12)


def test_border_windows_are_clipped_not_wrapped(x64):
    # One non-zero pixel in a corner: only pixels within the window of it are normalised.
    x = np.zeros((1, 4, 4, 1))
    x[0, 0, 0, 0] = 10.0
    x[0, 3, 3, 0] = 1.0
    y = np.asarray(spatial_response_norm(jnp.asarray(x), 3, 9.0, 1.0))
    assert y[0, 0, 0, 0] == pytest.approx(10.0 / (1 + 100.0))
    assert y[0, 3, 3, 0] == pytest.approx(1.0 / (1 + 1.0))  # the corner value does not reach


def test_float32_values_and_dtype():
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 4)).astype(np.float32) * 30
    y = spatial_response_norm(jnp.asarray(x), 3, 5e-5, 0.75)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, _naive_rnorm(x.astype(np.float64), 3, 5e-5, 0.75), rtol=2e-6)
    y = cross_map_response_norm(jnp.asarray(x), 5, 5e-4, 0.75, k=2.0)
    np.testing.assert_allclose(y, _naive_cmrnorm(x.astype(np.float64), 5, 5e-4, 0.75, 2.0),
                               rtol=2e-6)


def test_alexnet_formula_is_scale_alpha_times_n(x64):
    x = np.random.default_rng(1).normal(size=(3, 8)) * 40
    alpha, n, k, beta = 1e-4, 5, 2.0, 0.75
    expected = np.empty_like(x)
    for i in range(8):  # Krizhevsky et al. 2012, section 3.3
        lo, hi = max(0, i - n // 2), min(7, i + n // 2)
        expected[:, i] = x[:, i] / (k + alpha * (x[:, lo:hi + 1] ** 2).sum(1)) ** beta
    got = cross_map_response_norm(jnp.asarray(x), n, alpha * n, beta, k=k)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def _plain(fn_name, x, size, scale, power, k):
    """Autodiff-able reference: the same formula through jnp.pad and slicing."""
    lo, hi = size // 2, size - 1 - size // 2
    sq = x * x
    if fn_name == "spatial":
        p = jnp.pad(sq, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
        h, w = x.shape[1:3]
        s = sum(p[:, i:i + h, j:j + w] for i in range(size) for j in range(size))
        a = scale / size**2
    else:
        p = jnp.pad(sq, ((0, 0),) * (x.ndim - 1) + ((lo, hi),))
        s = sum(p[..., i:i + x.shape[-1]] for i in range(size))
        a = scale / size
    return x * (k + a * s) ** (-power)


@pytest.mark.parametrize("fn_name", ["spatial", "cross_map"])
@pytest.mark.parametrize("size", [2, 3, 5])
@pytest.mark.parametrize("power", [0.75, 1.3])
def test_gradient_matches_autodiff_of_the_formula(x64, fn_name, size, power):
    fn = spatial_response_norm if fn_name == "spatial" else cross_map_response_norm
    rng = np.random.default_rng(size)
    x = jnp.asarray(rng.normal(size=(2, 4, 5, 6)) * 2)
    w = jnp.asarray(rng.normal(size=(2, 4, 5, 6)))
    got = jax.jit(jax.grad(lambda v: jnp.sum(w * fn(v, size, 2.0, power, k=1.5))))(x)
    want = jax.jit(jax.grad(lambda v: jnp.sum(w * _plain(fn_name, v, size, 2.0, power, 1.5))))(x)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn", [spatial_response_norm, cross_map_response_norm])
def test_gradient_finite_for_zero_and_huge_inputs(fn):
    x = np.zeros((1, 4, 4, 8), np.float32)
    x[0, 1, 1, 3] = 1e4
    x[0, 2, 2, 5] = -3e4
    g = jax.jit(jax.grad(lambda v: jnp.sum(fn(v, 3, 5e-5, 0.75) ** 2)))(jnp.asarray(x))
    assert bool(jnp.all(jnp.isfinite(g)))
    assert float(jnp.abs(g).max()) > 0


def test_gradient_under_jit_and_vmap():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 5, 5, 4))
    f = jax.jit(jax.vmap(jax.grad(lambda v: jnp.sum(spatial_response_norm(v, 3, 1.0, 0.75)))))
    g = f(x)
    g0 = jax.jit(jax.grad(lambda v: jnp.sum(spatial_response_norm(v, 3, 1.0, 0.75))))(x[0])
    np.testing.assert_allclose(g[0], g0, rtol=1e-5)


@pytest.mark.parametrize("kwargs,field", [
    ({"size": 0}, "size"), ({"size": 2.5}, "size"), ({"scale": -1.0}, "scale"), ({"k": 0.0}, "k"),
])
def test_bad_arguments_name_the_argument(kwargs, field):
    args = {"size": 3, "scale": 1.0, "power": 0.75, "k": 1.0} | kwargs
    with pytest.raises(ValueError, match=field):
        cross_map_response_norm(jnp.ones((1, 2, 2, 4)), **args)


def test_spatial_needs_nhwc():
    with pytest.raises(ValueError, match="NHWC"):
        spatial_response_norm(jnp.ones((2, 4, 4)), 3, 1.0, 0.75)
