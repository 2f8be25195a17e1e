"""Small networks for fast tests and tiny runs (8x8 digits, 28x28 images, CIFAR-sized input)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["MLP", "TinyCNN"]


class TinyCNN(nn.Module):
    """Two 3x3 convolutions (the second with stride 2), global average pooling, one dense layer.

    Works for any input of at least 1x1 pixels: ``[B, H, W, C] -> [B, num_classes]``.
    Parameters: ``conv1``, ``conv2``, ``fc`` (``kernel``, ``bias``).

    Attributes:
      num_classes: number of outputs.
      features: filters of the two convolutions.
    """

    num_classes: int = 10
    features: Sequence[int] = (16, 32)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """``x``: ``[B, H, W, C]`` images; returns float32 logits ``[B, num_classes]``."""
        del train
        if x.ndim != 4:
            raise ValueError(f"TinyCNN: expected NHWC [B, H, W, C] input, got {x.shape}.")
        if len(self.features) != 2:
            raise ValueError(f"TinyCNN: features needs 2 entries, got {self.features!r}.")
        x = jnp.asarray(x, jnp.float32)
        f1, f2 = self.features
        x = nn.relu(nn.Conv(f1, (3, 3), padding="SAME", name="conv1")(x))
        x = nn.relu(nn.Conv(f2, (3, 3), strides=(2, 2), padding="SAME", name="conv2")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)


class MLP(nn.Module):
    """Flattens the input, then ``len(hidden)`` ReLU layers and a linear output layer.

    ``[B, ...] -> [B, num_classes]``. Parameters: ``hidden_0, hidden_1, ...`` and ``out``.

    Attributes:
      num_classes: number of outputs.
      hidden: widths of the hidden layers (may be empty: a linear model).
    """

    num_classes: int = 10
    hidden: Sequence[int] = (256,)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """``x``: ``[B, ...]`` inputs; returns float32 logits ``[B, num_classes]``."""
        del train
        if x.ndim < 1:
            raise ValueError(f"MLP: expected a batch axis, got shape {x.shape}.")
        x = jnp.asarray(x, jnp.float32).reshape((x.shape[0], -1))
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
        return nn.Dense(self.num_classes, name="out")(x)
