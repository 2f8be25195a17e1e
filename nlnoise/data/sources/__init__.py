"""Where images and their source labels come from: one module per kind of source, behind a
registry.

- :mod:`~nlnoise.data.sources.idx`: Fashion-MNIST IDX files (``fashion_mnist``);
- :mod:`~nlnoise.data.sources.arrays`: an ``.npz`` of image arrays (``arrays``) or of encoded
  images (``cifar10``'s JPEG npz);
- :mod:`~nlnoise.data.sources.folder`: one subfolder of image files per class (``folder``);
- :mod:`~nlnoise.data.sources.digits`: scikit-learn's digits (``digits``);
- :mod:`~nlnoise.data.sources.tfds`: any TFDS image dataset (``source=tfds``);
- :mod:`~nlnoise.data.sources.outliers`: the dataset outlier images come from.

A new local source is a module with a ``load(cfg) -> RawDataset`` and one line in
:data:`LOCAL_SOURCES`. Sources know nothing about noise, outliers or preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from nlnoise.data.schema import DataError
from nlnoise.data.sources import arrays, digits, folder, idx
from nlnoise.data.sources import tfds as tfds_source
from nlnoise.data.sources.base import (
    ArrayImages,
    ConcatImages,
    ImageProvider,
    RawDataset,
    RawSplit,
    check_images,
)
from nlnoise.data.sources.outliers import load_outlier_raw

Loader = Callable[[ml_collections.ConfigDict], RawDataset]

# dataset.name -> loader, for dataset.source='local'.
LOCAL_SOURCES: dict[str, Loader] = {
    "fashion_mnist": idx.load,
    "cifar10": arrays.load_cifar10_cfg,
    "digits": digits.load,
    "arrays": arrays.load,
    "folder": folder.load,
}


def load_raw(cfg: ml_collections.ConfigDict) -> RawDataset:
    """The dataset named by ``cfg.name`` from ``cfg.source``, with the source's own labels."""
    if cfg.source == "tfds":
        return tfds_source.load(cfg)
    loader = LOCAL_SOURCES.get(cfg.name)
    if loader is None:
        raise DataError(
            f"dataset.name: {cfg.name!r} has no local source (local: "
            f"{', '.join(LOCAL_SOURCES)}). Set dataset.source='tfds' and prepare it with TFDS, "
            "or bring the images as dataset.name='folder' or 'arrays' (see docs/data.md)."
        )
    return loader(cfg)


__all__ = [
    "LOCAL_SOURCES",
    "ArrayImages",
    "ConcatImages",
    "ImageProvider",
    "Loader",
    "RawDataset",
    "RawSplit",
    "check_images",
    "load_outlier_raw",
    "load_raw",
]
