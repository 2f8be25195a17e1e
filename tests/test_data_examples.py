"""ExampleSource (random access over several providers) and NoisyDataset's derived values."""

from __future__ import annotations

import numpy as np
import pytest

import nlnoise.data as data
from nlnoise.data.examples import ExampleSource
from nlnoise.data.sources.base import ArrayImages


@pytest.fixture
def two_providers():
    a = ArrayImages(np.arange(6 * 4).reshape(6, 2, 2, 1).astype(np.uint8))
    b = ArrayImages(np.full((3, 2, 2, 1), 200, np.uint8))
    return ExampleSource([a, b], provider_id=np.array([0, 0, 1, 0, 1]),
                         rows=np.array([5, 1, 2, 0, 0]), labels=np.array([1, 0, 2, 1, 0]),
                         clean_labels=np.array([1, 1, -1, 1, -1]),
                         is_outlier=np.array([False, False, True, False, True])), a, b


def test_items_and_batches_read_the_right_provider_and_row(two_providers):
    src, a, b = two_providers
    ex = src[2]
    assert ex["is_outlier"] and ex["clean_label"] == -1 and ex["index"] == 2
    np.testing.assert_array_equal(ex["image"], b.images[2])
    batch = src.get_batch(np.array([4, 0, 2]))
    np.testing.assert_array_equal(batch["image"], np.stack([b.images[0], a.images[5],
                                                            b.images[2]]))
    np.testing.assert_array_equal(batch["label"], [0, 1, 2])
    assert src[-1]["index"] == 4
    with pytest.raises(IndexError):
        src[5]


def test_subset_keeps_the_order_given_and_is_read_only(two_providers):
    src, _, _ = two_providers
    sub = src.subset(np.array([3, 0]))
    np.testing.assert_array_equal(sub.rows, [0, 5])
    with pytest.raises(ValueError):
        sub.labels[0] = 3


def test_providers_of_different_shapes_are_refused():
    a = ArrayImages(np.zeros((2, 2, 2, 1), np.uint8))
    b = ArrayImages(np.zeros((2, 3, 3, 1), np.uint8))
    with pytest.raises(data.DataError, match=r"dataset.outlier_source: outlier images have shape"):
        ExampleSource([a, b], np.array([0, 1]), np.array([0, 0]), np.zeros(2), np.zeros(2),
                      np.zeros(2, bool))


def test_realized_flip_rate_counts_known_clean_inliers_only(tmp_path):
    ds = data.load({"name": "digits", "cache_dir": str(tmp_path), "inlier_classes": (0, 1, 2),
                    "num_outliers": 40}, noise_kind="symmetric", noise_level=0.4, noise_seed=1)
    inl = ~ds.train_is_outlier
    want = np.mean(ds.train_labels[inl] != ds.train_clean_labels[inl])
    assert ds.realized_flip_rate == pytest.approx(want) and 0.3 < want < 0.5
    assert ds.has_clean_labels
