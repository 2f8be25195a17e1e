"""The paper's CIFAR-10 / SVHN network: cuda-convnet's ``layers-18pct.cfg``.

Source: repository ``dnouri/cuda-convnet``, ``example-layers/layers-18pct.cfg`` and
``example-layers/layer-params-18pct.cfg``; layer semantics from ``layer.py`` (output sizes),
``include/cudaconv2/conv_util.cuh`` (``kLocalPool``) and ``src/cudaconv2/conv_util.cu``
(``rnorm``, see :mod:`nlnoise.models.lrn`). The network, in cfg order::

    conv1  5x5, 32 filters, padding 2, stride 1, initW 1e-4, no neuron
    pool1  max 3x3, stride 2, start 0, outputsX 0 (automatic), neuron relu
    rnorm1 size 3, scale 5e-5, pow 0.75                      (spatial response norm)
    conv2  5x5, 32 filters, padding 2, stride 1, initW 0.01, neuron relu
    pool2  avg 3x3, stride 2, start 0, outputsX 0
    rnorm2 size 3, scale 5e-5, pow 0.75
    conv3  5x5, 64 filters, padding 2, stride 1, initW 0.01, neuron relu
    pool3  avg 3x3, stride 2, start 0, outputsX 0
    fc10   num_classes outputs, initW 0.01                   (then softmax, in the loss)

Geometry (``layer.py``): a conv layer has ``1 + ceil((2 * padding + imgSize - filterSize) /
stride)`` outputs per side, so these 5x5/pad-2/stride-1 convs keep the size. A pool layer with
``outputsX = 0`` has ``ceil((imgSize - start - sizeX) / stride) + 1`` outputs per side; the last
window may run past the image and is clipped (``kLocalPool`` loops to ``MIN(imgSize, start +
sizeX)``). For 32x32x3 input:

    conv1 32x32x32 -> pool1 16x16x32 -> rnorm1 -> conv2 16x16x32 -> pool2 8x8x32 -> rnorm2
    -> conv3 8x8x64 -> pool3 4x4x64 -> flatten 1024 -> fc10

(28x28: 28 -> 14 -> 7 -> 3, flatten 576; 8x8: 8 -> 4 -> 2 -> 1, flatten 64. cuda-convnet
itself would refuse the last one, whose 3x3 window is larger than the 2x2 map; here the window
is clipped like any border window.)

Average pooling divides by the number of window pixels that lie inside the image
(``AvgPooler::output(a, regionSize)`` in the cudaconv2 version of cuda-convnet, which is the
one that has ``cmrnorm``; the earliest releases divided by ``sizeX**2`` everywhere). For the
sizes above only the last row/column of windows is clipped (3x2 or 2x2 pixels).

Initialisation is cuda-convnet's ``initW * randn`` for weights and zero biases. Parameters are
the top-level collections ``conv1, conv2, conv3, fc10`` (kernel HWIO / ``[in, out]``, bias).
Parameter count for 3 input channels and K classes:
``conv1 5*5*3*32+32 = 2432``, ``conv2 5*5*32*32+32 = 25632``, ``conv3 5*5*32*64+64 = 51264``,
``fc10 1024*K+K``; 89578 for K = 10.

Speed on XLA:CPU: stock ops around the convolutions cost more than they should, so three are
replaced, each with the same values and gradients as the stock op: ``lax.reduce_window`` max
pooling has a select-and-scatter gradient (here strided slices and a custom VJP); XLA's kernel
gradient of conv1 (3 input channels; here row-wise im2col and matmuls: :func:`conv2d`); and
``x ** -0.75`` in the response norm (here ``rsqrt``, see :mod:`nlnoise.models.lrn`). Each was
several times faster than the stock op in alternated timings (``bench/conv1_variants.py``);
most of what remains of a step is XLA's own convolutions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nlnoise.models.lrn import spatial_response_norm

__all__ = ["Conv", "Layers18pct", "avg_pool", "conv2d", "max_pool", "pool_output_size"]


def pool_output_size(n: int, size: int, stride: int) -> int:
    """cuda-convnet's pooled size ``ceil((n - size) / stride) + 1`` (``start = 0``), at least 1."""
    if n < 1 or size < 1 or stride < 1:
        raise ValueError(f"pool: need n, size, stride >= 1; got {n}, {size}, {stride}.")
    return max(1, math.ceil((n - size) / stride) + 1)


def _pool_pads(x: jax.Array, size: int, stride: int) -> tuple[int, int, int, int]:
    """Output sizes and bottom/right padding that make every (clipped) window full."""
    if x.ndim != 4:
        raise ValueError(f"pool: expected NHWC [B, H, W, C], got shape {x.shape}.")
    oh = pool_output_size(x.shape[1], size, stride)
    ow = pool_output_size(x.shape[2], size, stride)
    return oh, ow, (oh - 1) * stride + size - x.shape[1], (ow - 1) * stride + size - x.shape[2]


def _strided(v: jax.Array, axis: int, offset: int, n: int, stride: int) -> jax.Array:
    """``v[offset::stride]`` along ``axis``, ``n`` elements."""
    return lax.slice_in_dim(v, offset, offset + (n - 1) * stride + 1, stride, axis=axis)


def _window_slices(xp: jax.Array, size: int, stride: int, oh: int, ow: int):
    """Yield ``(di, dj, xp[:, di::stride, dj::stride][:, :oh, :ow])`` for every window offset.

    One 4-D strided ``lax.slice`` each: slicing H and then W separately made max-pool's
    forward + backward ~3.5x slower under XLA:CPU.
    """
    b, _, _, c = xp.shape
    for di in range(size):
        for dj in range(size):
            limit = (b, di + (oh - 1) * stride + 1, dj + (ow - 1) * stride + 1, c)
            yield di, dj, lax.slice(xp, (0, di, dj, 0), limit, (1, stride, stride, 1))


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool(x: jax.Array, size: int, stride: int) -> jax.Array:
    """cuda-convnet max pooling (``start = 0``, automatic ``outputsX``) of NHWC ``x``.

    Output ``[B, OH, OW, C]`` with ``OH = ceil((H - size) / stride) + 1``; windows that run past
    the bottom/right border are clipped. The gradient goes to *every* input equal to its
    window's maximum, as ``kLocalMaxUndo`` does (``(img == ma) * mg``). Written with strided
    slices and a custom VJP because ``lax.reduce_window``'s gradient (select-and-scatter) is far
    slower on XLA:CPU.
    """
    return _max_pool_fwd(x, size, stride)[0]


def _max_pool_fwd(x, size, stride):
    oh, ow, ph, pw = _pool_pads(x, size, stride)
    xp = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=-jnp.inf)
    y = None
    for _, _, s in _window_slices(xp, size, stride, oh, ow):
        y = s if y is None else jnp.maximum(y, s)
    return y, (x, y)


def _max_pool_bwd(size, stride, res, g):
    # Window offset d = stride * q + r sends its gradient to input row stride * (o + q) + r, so
    # the gradient is assembled per phase r on a coarse grid (shifts by q, plain adds) and the
    # phases are interleaved once at the end. Scattering each offset with an interior-padded
    # lax.pad instead made XLA emit nine full-size fusions (~2x slower, ~60 ms per step).
    x, y = res
    b, h, w, c = x.shape
    oh, ow, ph, pw = _pool_pads(x, size, stride)
    xp = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=-jnp.inf)
    mh, mw = -(-(h + ph) // stride), -(-(w + pw) // stride)
    zero = jnp.zeros((), g.dtype)
    phase = {}
    for di, dj, s in _window_slices(xp, size, stride, oh, ow):
        (qh, rh), (qw, rw) = divmod(di, stride), divmod(dj, stride)
        contrib = jnp.pad(jnp.where(s == y, g, zero),
                          ((0, 0), (qh, mh - oh - qh), (qw, mw - ow - qw), (0, 0)))
        phase[rh, rw] = contrib + phase[rh, rw] if (rh, rw) in phase else contrib
    none = jnp.zeros((b, mh, mw, c), g.dtype)  # phases no window reaches (size < stride)
    rows = [jnp.stack([phase.get((rh, rw), none) for rw in range(stride)], axis=3)
            for rh in range(stride)]
    dx = jnp.stack(rows, axis=2).reshape(b, mh * stride, mw * stride, c)
    return (dx[:, :h, :w],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def avg_pool(x: jax.Array, size: int, stride: int) -> jax.Array:
    """cuda-convnet average pooling (``start = 0``, automatic ``outputsX``) of NHWC ``x``.

    Same output size as :func:`max_pool`. Each output is the mean of the window's pixels that
    lie inside the image (``regionSize`` in cuda-convnet's ``kLocalPool``). The window sum is
    separable: strided slices along H, then along W.
    """
    oh, ow, ph, pw = _pool_pads(x, size, stride)
    xp = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    rows = sum(_strided(xp, 1, d, oh, stride) for d in range(size))
    total = sum(_strided(rows, 2, d, ow, stride) for d in range(size))
    count_h = np.minimum(np.arange(oh) * stride + size, x.shape[1]) - np.arange(oh) * stride
    count_w = np.minimum(np.arange(ow) * stride + size, x.shape[2]) - np.arange(ow) * stride
    inv = (1.0 / np.outer(count_h, count_w)).astype(np.float32)[None, :, :, None]
    return total * jnp.asarray(inv, x.dtype)


# Input channels up to which conv2d computes the kernel gradient by row-wise im2col + matmul.
_ROW_IM2COL_MAX_CHANNELS = 4


def _conv(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _kernel_grad_rows(x: jax.Array, g: jax.Array, kh: int, kw: int, stride: int, padding):
    """``d conv(x, W) / d W`` contracted with ``g``, as ``kh`` matmuls with ``N = B*OH*OW`` depth.

    ``dW[i, j, c, o] = sum_{b, y, z} xp[b, s*y + i, s*z + j, c] * g[b, y, z, o]``. With ``x`` in
    ``[C, B, H, W]`` layout, the rows ``(j, c)`` for one ``i`` are strided slices, stacked into
    a ``[kw*C, N]`` matrix that multiplies ``g`` as ``[N, O]``.
    """
    _, oh, ow, cout = g.shape
    xt = jnp.pad(jnp.transpose(x, (3, 0, 1, 2)), ((0, 0), (0, 0), *padding))  # [C, B, Hp, Wp]
    cin, b = xt.shape[:2]
    g2 = g.reshape(-1, cout)
    span_h, span_w = (oh - 1) * stride + 1, (ow - 1) * stride + 1
    rows = []
    for i in range(kh):
        p = jnp.stack([  # [kw, C, B, OH, OW]
            lax.slice(xt, (0, 0, i, j), (cin, b, i + span_h, j + span_w), (1, 1, stride, stride))
            for j in range(kw)])
        rows.append(jnp.dot(p.reshape(kw * cin, -1), g2).reshape(kw, cin, cout))
    return jnp.stack(rows)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
    """NHWC x HWIO convolution (cross-correlation), ``padding`` as ``((top, bottom), (l, r))``.

    Same values and gradients as ``lax.conv_general_dilated``. For inputs with few channels
    (the image itself) the kernel gradient is computed by :func:`_kernel_grad_rows`, because
    XLA:CPU's own kernel-gradient convolution is several times slower for conv1 of layers-18pct
    (3 input channels); for 32 input channels XLA's own is faster and is kept.
    """
    return _conv(x, kernel, stride, padding)


def _conv2d_fwd(x, kernel, stride, padding):
    return _conv(x, kernel, stride, padding), (x, kernel)


def _conv2d_bwd(stride, padding, res, g):
    x, kernel = res
    if x.shape[-1] > _ROW_IM2COL_MAX_CHANNELS:
        return jax.vjp(lambda a, w: _conv(a, w, stride, padding), x, kernel)[1](g)
    # dx is dead code (and removed by XLA) when x is the network input.
    (dx,) = jax.vjp(lambda a: _conv(a, kernel, stride, padding), x)[1](g)
    dw = _kernel_grad_rows(x, g, kernel.shape[0], kernel.shape[1], stride, padding)
    return dx, dw.astype(kernel.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class Conv(nn.Module):
    """Convolution layer with params ``kernel`` (HWIO) and ``bias``, like ``flax.linen.Conv``.

    Uses :func:`conv2d`. Attributes: ``features``, square ``kernel_size``, ``stride``, symmetric
    ``padding`` (pixels on every side), ``kernel_init``, ``bias_init``.
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: ``[B, H, W, C]``; returns ``[B, OH, OW, features]``."""
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                            jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        p = self.padding
        return conv2d(x, kernel, self.stride, ((p, p), (p, p))) + bias


class Layers18pct(nn.Module):
    """cuda-convnet ``layers-18pct`` network (see the module docstring), NHWC input.

    Attributes:
      num_classes: outputs of ``fc10`` (K, or K + 1 for the outlier model).
      conv_features: filters of conv1..conv3 (cfg: 32, 32, 64).
      init_stds: Gaussian std of conv1, conv2, conv3, fc10 weights (cfg ``initW``).
      rnorm_size, rnorm_scale, rnorm_pow: both ``rnorm`` layers (cfg: 3, 5e-5, 0.75).
    """

    num_classes: int = 10
    conv_features: Sequence[int] = (32, 32, 64)
    init_stds: Sequence[float] = (1e-4, 1e-2, 1e-2, 1e-2)
    rnorm_size: int = 3
    rnorm_scale: float = 5e-5
    rnorm_pow: float = 0.75

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """``x``: ``[B, H, W, C]`` images; returns float32 logits ``[B, num_classes]``.

        ``train`` is accepted for a uniform model interface; this network behaves the same
        in both modes (no dropout, no batch statistics).
        """
        del train
        if x.ndim != 4:
            raise ValueError(f"Layers18pct: expected NHWC [B, H, W, C] input, got {x.shape}.")
        x = jnp.asarray(x, jnp.float32)
        f1, f2, f3 = self.conv_features
        s1, s2, s3, s4 = self.init_stds
        zeros = nn.initializers.zeros

        def conv(features, std, name):
            return Conv(features, 5, padding=2, kernel_init=nn.initializers.normal(std),
                        bias_init=zeros, name=name)

        def rnorm(v):
            return spatial_response_norm(v, self.rnorm_size, self.rnorm_scale, self.rnorm_pow)

        x = conv(f1, s1, "conv1")(x)
        x = nn.relu(max_pool(x, 3, 2))  # pool1 carries neuron=relu: pool, then ReLU.
        x = rnorm(x)
        x = nn.relu(conv(f2, s2, "conv2")(x))
        x = rnorm(avg_pool(x, 3, 2))
        x = nn.relu(conv(f3, s3, "conv3")(x))
        x = avg_pool(x, 3, 2)
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(s4),
                        bias_init=zeros, name="fc10")(x)

