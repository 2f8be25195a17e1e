"""Preprocessing: cached per-pixel mean, contrast normalization, crops and flips."""

from __future__ import annotations

import numpy as np
import pytest

import nlnoise.data as data
from nlnoise.data import preprocess, schema
from nlnoise.data.sources import digits as digits_source


@pytest.fixture(scope="module")
def digits():
    return digits_source.load_digits()


def _cfg(**kw):
    cfg = schema.default_dataset_config()
    cfg.update(kw)
    return cfg


def test_mean_image_is_the_training_mean_and_is_cached(digits, tmp_path):
    pre = preprocess.make_preprocessor(_cfg(name="digits", cache_dir=str(tmp_path)), digits)
    want = digits.train.images.images.astype(np.float64).mean(axis=0)
    assert pre.mean.dtype == np.float32 and pre.mean.shape == (8, 8, 1)
    np.testing.assert_allclose(pre.mean, want, rtol=1e-6)
    path = preprocess.mean_image_path(digits, str(tmp_path), False, 100_000)
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    # The cache is what later runs read: change it and see the change.
    np.save(path, np.full((8, 8, 1), 3.0, np.float32))
    again = preprocess.make_preprocessor(_cfg(name="digits", cache_dir=str(tmp_path)), digits)
    assert (again.mean == 3.0).all()


def test_mean_over_a_subsample_uses_evenly_spaced_images(digits):
    got = preprocess.compute_mean_image(
        digits.train.images, contrast_normalization=False, max_examples=100
    )
    rows = np.unique(np.linspace(0, 1436, 100).round().astype(int))
    want = digits.train.images.images[rows].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_normalize_subtracts_mean_then_scales(digits, tmp_path):
    pre = preprocess.make_preprocessor(
        _cfg(name="digits", cache_dir=str(tmp_path), pixel_scale=0.5), digits
    )
    x = digits.train.images.images[:16]
    got = pre(x, train=False)
    np.testing.assert_allclose(got, (x.astype(np.float32) - pre.mean) * 0.5, rtol=1e-6)
    assert got.dtype == np.float32
    # Mean subtraction centres the training set.
    full = pre(digits.train.images.images, train=False)
    assert np.abs(full.mean(axis=0)).max() < 1e-4


def test_no_mean_subtraction(digits, tmp_path):
    pre = preprocess.make_preprocessor(
        _cfg(name="digits", cache_dir=str(tmp_path), mean_subtraction=False), digits
    )
    assert pre.mean is None
    x = digits.train.images.images[:4]
    np.testing.assert_allclose(pre(x, train=False), x / np.float32(255), rtol=1e-6)


def test_contrast_normalization_gives_unit_images(digits, tmp_path):
    x = digits.train.images.images[:64]
    g = preprocess.global_contrast_normalize(x.astype(np.float32))
    assert np.abs(g.mean(axis=(1, 2, 3))).max() < 1e-5
    var = x.astype(np.float64).var(axis=(1, 2, 3))
    np.testing.assert_allclose(g.std(axis=(1, 2, 3)), np.sqrt(var / (var + 10.0)), rtol=1e-4)
    pre = preprocess.make_preprocessor(
        _cfg(name="digits", cache_dir=str(tmp_path), contrast_normalization=True), digits
    )
    # Its mean image is the mean of contrast-normalized training images, so the set is centred.
    full = pre(digits.train.images.images, train=False)
    assert np.abs(full.mean(axis=0)).max() < 1e-4
    assert 0.3 < full.std() < 3.0


def _crop_pre(mean=None, flip=True):
    return preprocess.Preprocessor(
        mean=mean,
        pixel_scale=1.0,
        contrast_normalization=False,
        stored_shape=(8, 8, 1),
        crop_size=5,
        random_flip=flip,
    )


def test_eval_uses_the_centre_crop(digits):
    x = digits.train.images.images[:10]
    got = _crop_pre()(x, train=False)
    np.testing.assert_array_equal(got, x[:, 1:6, 1:6].astype(np.float32))


def test_random_crops_and_flips_are_windows_and_deterministic(digits):
    pre = _crop_pre()
    x = digits.train.images.images[:200]
    keys = np.arange(200) + 1000
    a = pre(x, train=True, keys=keys, seed=3, epoch=0)
    assert a.shape == (200, 5, 5, 1)
    np.testing.assert_array_equal(a, pre(x, train=True, keys=keys, seed=3, epoch=0))
    assert not np.array_equal(a, pre(x, train=True, keys=keys, seed=3, epoch=1))
    flips = 0
    for n in range(200):
        windows = [
            (x[n, t : t + 5, s : s + 5].astype(np.float32), f)
            for t in range(4)
            for s in range(4)
            for f in (False, True)
        ]
        match = [f for w, f in windows if np.array_equal(a[n], w[:, ::-1] if f else w)]
        assert match, f"example {n} is not a (flipped) 5x5 window of its image"
        flips += all(match)
    assert 60 < flips < 140  # about half are flipped (flat images match both ways)
    # A key's crop does not depend on the batch it is in.
    np.testing.assert_array_equal(
        a[50:60], pre(x[50:60], train=True, keys=keys[50:60], seed=3, epoch=0)
    )


def test_crops_subtract_the_mean_at_the_same_window(digits):
    mean = np.random.default_rng(0).uniform(0, 100, (8, 8, 1)).astype(np.float32)
    x = digits.train.images.images[:20]
    keys = np.arange(20)
    with_mean = _crop_pre(mean, flip=False)(x, train=True, keys=keys, seed=1)
    plain = _crop_pre(None, flip=False)(x, train=True, keys=keys, seed=1)
    mean_crops = _crop_pre(None, flip=False)(
        np.broadcast_to(mean, (20, 8, 8, 1)).copy(), train=True, keys=keys, seed=1
    )
    np.testing.assert_allclose(with_mean, plain - mean_crops, atol=1e-4)


def test_image_size_is_validated(digits, tmp_path):
    with pytest.raises(data.DataError, match=r"dataset.image_size: .*\[1, 8\].*got 9"):
        preprocess.make_preprocessor(_cfg(name="digits", image_size=9), digits)
    pre = preprocess.make_preprocessor(
        _cfg(name="digits", image_size=6, cache_dir=str(tmp_path)), digits
    )
    assert pre.output_shape == (6, 6, 1) and pre.crop_size == 6


def test_pixel_scale_is_validated(digits):
    with pytest.raises(data.DataError, match=r"dataset.pixel_scale"):
        preprocess.make_preprocessor(_cfg(name="digits", pixel_scale=-1.0), digits)
