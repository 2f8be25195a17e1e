"""Local response normalization as cuda-convnet computes it (``rnorm`` and ``cmrnorm``).

No library ships cuda-convnet's layers, so both are written here from its source
(repository ``dnouri/cuda-convnet``, a mirror of Krizhevsky's code):

* ``layer.py``, ``NormLayerParser.add_params``: the ``scale`` given in the layer-params file is
  divided by ``size**2`` for ``rnorm`` and by ``size`` for ``cmrnorm`` before it reaches the
  kernels (``dic['scale'] /= dic['size'] if CROSSMAP_RESPONSE_NORM else dic['size']**2``).
* ``src/cudaconv2/conv_util.cu``: ``convResponseNorm`` is ``convContrastNorm(images, images,
  ...)``, i.e. kernels ``kCNorm_fewfilter`` / ``kCNorm_manyfilter`` / ``kCNorm2`` with
  ``meanDiffs = images``; ``convResponseNormCrossMap`` is ``kFCNorm`` likewise.

With ``a = scale / size**2`` (spatial) or ``a = scale / size`` (cross-map), ``lo = size // 2``
and ``hi = size - 1 - lo``, both compute, for every image, channel ``c`` and pixel ``(y, x)``::

    spatial:   S[y, x, c] = sum_{y' = y-lo}^{y+hi}  sum_{x' = x-lo}^{x+hi}  v[y', x', c]**2
    cross-map: S[y, x, c] = sum_{c' = c-lo}^{c+hi}  v[y, x, c']**2
    out = v * (k + a * S) ** (-power)          # cuda-convnet: k = 1 ("1 + addScale * prod")

The window *includes the centre*, and terms outside the image (or outside ``[0, C)``) are
skipped: the kernels loop from ``MAX(0, start)`` to ``MIN(imgSize, start + size)`` with
``start = -size/2 + pixel`` (C integer division), which equals zero padding of ``v**2`` with
``lo`` before and ``hi`` after. For odd ``size`` the window is centred; for even ``size`` it
reaches one further after the centre than before it, as in cuda-convnet. The divisor of ``scale``
is the full ``size**2`` (or ``size``) even where the window is clipped at a border. cuda-convnet2
later added ``minDiv`` in place of the constant 1; that is ``k`` here. AlexNet's LRN (Krizhevsky
et al. 2012, section 3.3) is the cross-map form with ``k = 2, n = 5, beta = 0.75`` and its
``alpha`` applied *undivided*, i.e. ``scale = alpha * n`` here.

Why the implementation looks as it does (the timings of the variants are in
docs/performance.md and bench/): on XLA:CPU a 2-D ``lax.reduce_window`` window sum and a
depthwise convolution with a ones kernel are several times slower than separable
shift-and-add of padded slices or two 1-D reduce_windows; ``(...) ** -0.75`` alone costs more
than the rest of the layer, while ``rsqrt(d) * sqrt(rsqrt(d))`` is nearly free; and a
hand-written VJP beats both autodiff and a ``custom_jvp`` whose transpose XLA derives. For the
cross-map form, shift-and-add also beats a banded ``[C, C]`` matmul.

So the window sums are separable shift-and-add, the power uses ``rsqrt`` for 0.75 and 0.5, and
the gradient is a ``jax.custom_vjp``. Consequence: forward-mode differentiation (``jax.jvp``,
``jax.jacfwd``) of these functions is not supported; reverse mode (``jax.grad``) is.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["cross_map_response_norm", "spatial_response_norm"]


def _neg_pow(d: jax.Array, power: float) -> jax.Array:
    """``d ** -power`` for ``d > 0``, with fast paths for the common exponents."""
    if power == 0.75:
        r = lax.rsqrt(d)
        return r * jnp.sqrt(r)
    if power == 0.5:
        return lax.rsqrt(d)
    if power == 1.0:
        return 1.0 / d
    if power == 0.0:
        return jnp.ones_like(d)
    return jnp.exp(-power * jnp.log(d))


def _window_sum(s: jax.Array, axes: tuple[int, ...], size: int, lo: int, hi: int) -> jax.Array:
    """Sum of ``s`` over ``[i - lo, i + hi]`` along each of ``axes`` (zero outside), same shape."""
    for axis in axes:
        n = s.shape[axis]
        pad = [(0, 0)] * s.ndim
        pad[axis] = (lo, hi)
        p = jnp.pad(s, pad)
        s = sum(lax.slice_in_dim(p, i, i + n, axis=axis) for i in range(size))
    return s


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5))
def _response_norm(x, axes, size, alpha, power, k):
    lo = size // 2
    d = k + alpha * _window_sum(x * x, axes, size, lo, size - 1 - lo)
    return x * _neg_pow(d, power)


def _response_norm_fwd(x, axes, size, alpha, power, k):
    lo = size // 2
    d = k + alpha * _window_sum(x * x, axes, size, lo, size - 1 - lo)
    dp = _neg_pow(d, power)
    return x * dp, (x, d, dp)


def _response_norm_bwd(axes, size, alpha, power, k, res, g):
    # y_i = x_i d_i^-p with d_i = k + a sum_{j in W(i)} x_j^2, so
    # dL/dx_j = g_j d_j^-p - 2 a p x_j sum_{i : j in W(i)} g_i x_i d_i^(-p-1).
    # "i such that j in W(i)" is the mirrored window: lo and hi swap.
    x, d, dp = res
    lo = size // 2
    t = _window_sum(g * x * dp / d, axes, size, size - 1 - lo, lo)
    return (g * dp - (2.0 * alpha * power) * x * t,)


_response_norm.defvjp(_response_norm_fwd, _response_norm_bwd)


def _check_args(size: int, scale: float, power: float, k: float) -> tuple[int, float, float, float]:
    if isinstance(size, bool) or int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}.")
    scale, power, k = float(scale), float(power), float(k)
    if scale < 0:
        raise ValueError(f"scale must be >= 0, got {scale}.")
    if k <= 0:
        raise ValueError(f"k must be > 0 (the denominator must stay positive), got {k}.")
    return int(size), scale, power, k


def spatial_response_norm(
    x: jax.Array, size: int, scale: float, power: float, k: float = 1.0
) -> jax.Array:
    """cuda-convnet ``rnorm``: normalize each value over a ``size x size`` window of its own map.

    ``out = x * (k + scale / size**2 * S) ** -power`` where ``S`` is the sum of ``x**2`` over the
    ``size x size`` spatial window around the pixel (centre included, clipped at the image
    border), per image and channel. See the module docstring for the exact window and sources.

    Args:
      x: ``[B, H, W, C]`` (NHWC) activations.
      size: window side, cuda-convnet's ``size`` (``sizeX`` in early versions).
      scale: cuda-convnet's ``scale`` from the layer-params file (divided by ``size**2`` here).
      power: cuda-convnet's ``pow``.
      k: additive constant; 1 in cuda-convnet.

    Returns:
      Array of the same shape and dtype as ``x``.
    """
    size, scale, power, k = _check_args(size, scale, power, k)
    if x.ndim != 4:
        raise ValueError(f"x: expected NHWC [B, H, W, C], got shape {x.shape}.")
    return _response_norm(x, (1, 2), size, scale / size**2, power, k)


def cross_map_response_norm(
    x: jax.Array, size: int, scale: float, power: float, k: float = 1.0
) -> jax.Array:
    """cuda-convnet ``cmrnorm`` / AlexNet LRN: normalize each value over ``size`` adjacent maps.

    ``out = x * (k + scale / size * S) ** -power`` where ``S`` is the sum of ``x**2`` over the
    channels ``[c - size//2, c - size//2 + size)`` (clipped to ``[0, C)``) at the same pixel.
    For AlexNet's formula ``x / (k + alpha * sum x**2) ** beta`` pass ``scale = alpha * size``.

    Args:
      x: ``[..., C]`` activations, channels last.
      size: number of maps in the window, cuda-convnet's ``size`` (AlexNet's ``n``).
      scale: cuda-convnet's ``scale`` (divided by ``size`` here).
      power: cuda-convnet's ``pow`` (AlexNet's ``beta``).
      k: additive constant (cuda-convnet: 1; cuda-convnet2 ``minDiv``; AlexNet: 2).

    Returns:
      Array of the same shape and dtype as ``x``.
    """
    size, scale, power, k = _check_args(size, scale, power, k)
    if x.ndim < 1:
        raise ValueError(f"x: expected at least one (channel) axis, got shape {x.shape}.")
    return _response_norm(x, (x.ndim - 1,), size, scale / size, power, k)
