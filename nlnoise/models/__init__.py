"""Networks (Flax Linen) and their registry.

Every model is ``model.apply({"params": p}, x, train=..., rngs={"dropout": key})`` with NHWC
float32 images ``x`` (``[B, H, W, C]``; ``mlp`` takes any ``[B, ...]``) and returns float32
logits ``[B, num_classes]``. No model has batch statistics or other mutable collections.

=============  ==========================================================  ================
name           network                                                     input
=============  ==========================================================  ================
layers18pct    cuda-convnet layers-18pct (the paper's CIFAR-10/SVHN net)   any H, W >= 1
alexnet        single-tower AlexNet (the paper's ImageNet net)             227 x 227 x 3
tiny_cnn       two small convolutions + dense, for tests                   any H, W >= 1
mlp            flatten + ReLU hidden layers, for tests                     any
=============  ==========================================================  ================
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import flax.linen as nn

from nlnoise.models.alexnet import INPUT_SHAPE as _ALEXNET_INPUT_SHAPE
from nlnoise.models.alexnet import AlexNet
from nlnoise.models.layers18pct import Layers18pct
from nlnoise.models.lrn import cross_map_response_norm, spatial_response_norm
from nlnoise.models.tiny import MLP, TinyCNN

__all__ = [
    "MLP",
    "MODELS",
    "AlexNet",
    "Layers18pct",
    "TinyCNN",
    "cross_map_response_norm",
    "get_model",
    "input_shape",
    "spatial_response_norm",
]

_REGISTRY: dict[str, type[nn.Module]] = {
    "layers18pct": Layers18pct,
    "alexnet": AlexNet,
    "tiny_cnn": TinyCNN,
    "mlp": MLP,
}
_INPUT_SHAPES: dict[str, tuple[int, int, int]] = {"alexnet": _ALEXNET_INPUT_SHAPE}

MODELS: tuple[str, ...] = tuple(_REGISTRY)


def _model_class(name: str) -> type[nn.Module]:
    if name not in _REGISTRY:
        raise ValueError(f"model.name: unknown model {name!r}; valid choices are "
                         f"{', '.join(MODELS)}.")
    return _REGISTRY[name]


def _check_num_classes(num_classes: Any) -> int:
    value = None
    if not isinstance(num_classes, bool):
        try:
            value = operator.index(num_classes)  # int, numpy integer
        except TypeError:
            value = None
    if value is None or value < 1:
        raise ValueError(f"model.num_classes must be an integer >= 1, got {num_classes!r}.")
    return value


def get_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """The network ``name`` (one of :data:`MODELS`) with ``num_classes`` outputs.

    ``kwargs`` set other attributes of the model class (e.g. ``hidden=(64,)`` for ``mlp``,
    ``dropout_rate`` for ``alexnet``); lists are turned into tuples.

    Raises:
      ValueError: unknown ``name`` (message names ``model.name`` and the valid choices),
        ``num_classes`` not an integer >= 1 (names ``model.num_classes``), or a keyword that is
        not an attribute of the model (names ``model.<keyword>`` and the valid ones).
    """
    cls = _model_class(name)
    num_classes = _check_num_classes(num_classes)
    fields = [f.name for f in dataclasses.fields(cls)
              if f.init and f.name not in ("parent", "name", "num_classes")]
    for key in kwargs:
        if key not in fields:
            raise ValueError(f"model.{key}: not a setting of {name}; valid settings are "
                             f"{', '.join(fields) or '(none)'}.")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return cls(num_classes=num_classes, **kwargs)


def input_shape(name: str) -> tuple[int, int, int] | None:
    """``(H, W, C)`` that model ``name`` requires, or ``None`` if it accepts any image size."""
    _model_class(name)
    return _INPUT_SHAPES.get(name)
