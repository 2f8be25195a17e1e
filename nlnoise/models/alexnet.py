"""AlexNet (Krizhevsky, Sutskever, Hinton 2012), the paper's ImageNet network.

Single tower: the original splits conv2, conv4, conv5 and the fully connected layers across
two GPUs (conv2/4/5 see only their own GPU's half of the previous maps). Here every layer
sees all maps of the previous one, as in most single-device re-implementations; this changes
conv2/conv4/conv5 parameter counts (1,413,120 more parameters in total) but not the shapes.

Layers (section 3.5 of the AlexNet paper), NHWC, for a ``227 x 227 x 3`` input::

    conv1  96 11x11 stride 4, no padding -> 55x55x96, ReLU, LRN, max pool 3x3/2 -> 27x27x96
    conv2 256 5x5 padding 2  -> 27x27x256,           ReLU, LRN, max pool 3x3/2 -> 13x13x256
    conv3 384 3x3 padding 1  -> 13x13x384, ReLU
    conv4 384 3x3 padding 1  -> 13x13x384, ReLU
    conv5 256 3x3 padding 1  -> 13x13x256, ReLU,           max pool 3x3/2 ->  6x6x256
    fc6 4096, ReLU, dropout 0.5;  fc7 4096, ReLU, dropout 0.5;  fc8 num_classes

LRN is cross-map (:func:`nlnoise.models.lrn.cross_map_response_norm`) with the paper's
``k = 2, n = 5, alpha = 1e-4, beta = 0.75`` in its formula ``a / (k + alpha * sum a**2) ** beta``
(``alpha`` *not* divided by ``n``; Caffe and cuda-convnet2 configs divide it by ``n``). It is
applied after the ReLU. Pooling is overlapping 3x3 stride-2 max pooling; at these sizes no
window is clipped. Initialisation follows the paper: weights ``N(0, 0.01)``; biases 1 in
conv2, conv4, conv5, fc6 and fc7, 0 elsewhere. Dropout draws from the ``"dropout"`` rng and is
active only with ``train=True``.

Parameters (``kernel``, ``bias``) live under the top-level names ``conv1..conv5, fc6, fc7, fc8``.
Count: conv1 34,944; conv2 614,656; conv3 885,120; conv4 1,327,488; conv5 884,992;
fc6 37,752,832; fc7 16,781,312; fc8 ``4096 * K + K`` (4,097,000 for K = 1000);
total 62,378,344 for K = 1000.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from nlnoise.models.layers18pct import Conv, max_pool
from nlnoise.models.lrn import cross_map_response_norm

__all__ = ["INPUT_SHAPE", "AlexNet"]

INPUT_SHAPE = (227, 227, 3)
# The smallest input side whose last pooling still leaves a 1 x 1 map (67 -> 15 -> 7 -> 3 -> 1).
MIN_IMAGE_SIZE = 67


class AlexNet(nn.Module):
    """Single-tower AlexNet (see the module docstring); input ``[B, 227, 227, 3]`` by default.

    Attributes:
      num_classes: outputs of ``fc8`` (1000, or K + 1 for the outlier model).
      dropout_rate: dropout before fc7 and fc8 (paper: 0.5).
      lrn_size, lrn_k, lrn_alpha, lrn_beta: the paper's LRN constants ``n, k, alpha, beta``.
      init_std: Gaussian std of all weights (paper: 0.01).
      image_size: side of the square input (paper: 227). Smaller inputs (at least
        ``MIN_IMAGE_SIZE``) keep every layer but shrink fc6's input (256 features at 67), for
        tests of the full network that run in seconds.
    """

    num_classes: int = 1000
    dropout_rate: float = 0.5
    lrn_size: int = 5
    lrn_k: float = 2.0
    lrn_alpha: float = 1e-4
    lrn_beta: float = 0.75
    init_std: float = 0.01
    image_size: int = INPUT_SHAPE[0]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """``x``: ``[B, S, S, 3]`` images (``S = image_size``, 227); float32 logits ``[B, K]``."""
        if self.image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"AlexNet.image_size: must be >= {MIN_IMAGE_SIZE} (the last pooling "
                             f"needs a 3 x 3 map), got {self.image_size}.")
        s = self.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (s, s, 3):
            raise ValueError(f"AlexNet: expected input [B, {s}, {s}, 3], got {x.shape}.")
        x = jnp.asarray(x, jnp.float32)
        w_init = nn.initializers.normal(self.init_std)
        zeros, ones = nn.initializers.zeros, nn.initializers.ones

        def conv(features, k, stride, pad, bias_init, name):
            return Conv(features, k, stride=stride, padding=pad, kernel_init=w_init,
                        bias_init=bias_init, name=name)

        def dense(features, bias_init, name):
            return nn.Dense(features, kernel_init=w_init, bias_init=bias_init, name=name)

        def lrn(v):
            # The paper's alpha multiplies the plain sum; cuda-convnet's scale is divided by n.
            return cross_map_response_norm(v, self.lrn_size, self.lrn_alpha * self.lrn_size,
                                           self.lrn_beta, k=self.lrn_k)

        x = max_pool(lrn(nn.relu(conv(96, 11, 4, 0, zeros, "conv1")(x))), 3, 2)
        x = max_pool(lrn(nn.relu(conv(256, 5, 1, 2, ones, "conv2")(x))), 3, 2)
        x = nn.relu(conv(384, 3, 1, 1, zeros, "conv3")(x))
        x = nn.relu(conv(384, 3, 1, 1, ones, "conv4")(x))
        x = max_pool(nn.relu(conv(256, 3, 1, 1, ones, "conv5")(x)), 3, 2)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(dense(4096, ones, "fc6")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(dense(4096, ones, "fc7")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return dense(self.num_classes, zeros, "fc8")(x)
