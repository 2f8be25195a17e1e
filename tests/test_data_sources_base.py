"""Image providers and raw splits: array checks, concatenated providers, resizing."""

from __future__ import annotations

import numpy as np
import pytest

import nlnoise.data as data
from nlnoise.data.sources import base


def test_array_images_reject_wrong_dtype_and_shape():
    with pytest.raises(data.DataError, match=r"outlier images: images must be uint8.*float32"):
        base.ArrayImages(np.zeros((2, 8, 8, 1), np.float32), "outlier images")
    with pytest.raises(data.DataError, match=r"myfield: .*\[N, H, W, C\].*\(2, 8, 8\)"):
        base.ArrayImages(np.zeros((2, 8, 8), np.uint8), "myfield")


def test_array_images_take_any_order():
    images = np.arange(5 * 2 * 2).reshape(5, 2, 2, 1).astype(np.uint8)
    got = base.ArrayImages(images).take(np.array([3, 0, 4, 0]))
    np.testing.assert_array_equal(got, images[[3, 0, 4, 0]])


def test_concat_images_read_each_row_from_its_part():
    a = np.zeros((3, 2, 2, 1), np.uint8)
    b = np.arange(4 * 4).reshape(4, 2, 2, 1).astype(np.uint8) + 1
    both = base.ConcatImages([base.ArrayImages(a), base.ArrayImages(b)])
    assert len(both) == 7 and both.shape == (2, 2, 1)
    np.testing.assert_array_equal(both.take(np.array([6, 0, 3])), np.stack([b[3], a[0], b[0]]))
    with pytest.raises(data.DataError, match=r"different image shapes"):
        base.ConcatImages([base.ArrayImages(a), base.ArrayImages(np.zeros((1, 3, 3, 1),
                                                                          np.uint8))])


def test_split_checks_labels_with_the_field_and_hint():
    with pytest.raises(data.DataError, match=r"my train labels: 1 labels outside \[0, 3\); first"
                                             r" is 3 at index 1\. Fix it"):
        base.split_from_arrays(np.zeros((2, 1, 1, 1), np.uint8), [0, 3], 3, "my train",
                               hint="Fix it")
    with pytest.raises(data.DataError, match=r"2 images but 3 labels"):
        base.RawSplit(base.ArrayImages(np.zeros((2, 1, 1, 1), np.uint8)), np.zeros(3, np.int64))


def test_resize_center_square_keeps_the_centre():
    image = np.zeros((10, 20, 1), np.uint8)
    image[:, 5:15] = 200  # the centre square of a landscape image
    out = base.resize_center_square(image, 10)
    assert out.shape == (10, 10, 1) and (out == 200).all()
    same = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    np.testing.assert_array_equal(base.resize_center_square(same, 4), same)
