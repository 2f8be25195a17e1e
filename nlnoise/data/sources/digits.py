"""scikit-learn's 1,797 8x8 digits (``name=digits``): real images that ship with scikit-learn."""

from __future__ import annotations

import ml_collections
import numpy as np

from nlnoise.data.cache import short_hash
from nlnoise.data.schema import DataError
from nlnoise.data.sources.base import RawDataset, split_from_arrays

DIGITS_NUM_TRAIN = 1437  # the first 80% (sklearn's order); the last 360 are the test split


def load_digits() -> RawDataset:
    """The digits scaled from 0..16 to 0..255, uint8 ``[N, 8, 8, 1]``; 1,437 train, 360 test."""
    from sklearn.datasets import load_digits as sklearn_digits

    d = sklearn_digits()
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int64)
    n = DIGITS_NUM_TRAIN
    return RawDataset(
        name="digits",
        source="local",
        train=split_from_arrays(images[:n], labels[:n], 10, "digits train"),
        test=split_from_arrays(images[n:], labels[n:], 10, "digits test"),
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
        image_shape=(8, 8, 1),
        fingerprint=short_hash("digits", len(labels)),
    )


def load(cfg: ml_collections.ConfigDict) -> RawDataset:
    """The registry's loader (no ``data_dir``: the data ships with scikit-learn)."""
    if cfg.data_dir is not None:
        raise DataError("dataset.data_dir: digits ships with scikit-learn; leave it None.")
    return load_digits()
