"""The scikit-learn digits source."""

from __future__ import annotations

import numpy as np
import pytest

import nlnoise.data as data
from nlnoise.data.sources import digits


def test_digits_local():
    raw = digits.load_digits()
    assert raw.image_shape == (8, 8, 1)
    assert (len(raw.train), len(raw.test)) == (1437, 360)
    imgs = raw.train.images.images
    assert imgs.dtype == np.uint8 and imgs.max() == 255 and imgs.min() == 0
    assert set(np.unique(raw.test.labels)) == set(range(10))
    assert raw.class_names == tuple("0123456789")


def test_digits_take_no_data_dir(tmp_path):
    with pytest.raises(data.DataError, match=r"dataset.data_dir: digits ships with scikit-learn"):
        data.load({"name": "digits", "data_dir": str(tmp_path)})
