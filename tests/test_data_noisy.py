"""load and its stages: deterministic flips, subsets, outliers, alpha, label files, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nlnoise.data as data
from nlnoise import noise
from nlnoise.data import noisy
from nlnoise.data.sources import arrays, digits

CIFAR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10_jpeg.npz"
needs_cifar = pytest.mark.skipif(
    not CIFAR.exists(), reason=f"{CIFAR} is absent (see ../shared/data/README.md)"
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def _digits(cache, **kw):
    return {"name": "digits", "cache_dir": cache, **kw}


def test_same_seed_same_noisy_labels(cache):
    a = data.load(_digits(cache), noise_kind="symmetric", noise_level=0.4, noise_seed=7)
    b = data.load(_digits(cache), noise_kind="symmetric", noise_level=0.4, noise_seed=7)
    c = data.load(_digits(cache), noise_kind="symmetric", noise_level=0.4, noise_seed=8)
    assert np.array_equal(a.train_labels, b.train_labels)
    assert a.label_fingerprint == b.label_fingerprint
    assert not np.array_equal(a.train_labels, c.train_labels)
    assert a.label_fingerprint != c.label_fingerprint
    rate = np.mean(a.train_labels != a.train_clean_labels)
    assert abs(rate - 0.4) < 0.05
    np.testing.assert_array_equal(a.q_true, noise.symmetric(10, 0.4))


def test_realized_transition_follows_q(cache):
    ds = data.load(_digits(cache), noise_kind="pair", noise_level=0.3, noise_seed=1)
    realized = noise.realized_transition(ds.train_clean_labels, ds.train_labels, 10)
    assert np.abs(realized - ds.q_true).max() < 0.12
    assert realized[np.arange(10), (np.arange(10) + 1) % 10].min() == 0  # pair flips go i -> i+1
    assert realized[(np.arange(10) + 1) % 10, np.arange(10)].min() > 0.15


def test_no_flips_gives_no_q_and_clean_labels(cache):
    for kind, level in (("identity", 0.0), ("symmetric", 0.0)):
        ds = data.load(_digits(cache), noise_kind=kind, noise_level=level, noise_seed=0)
        assert ds.q_true is None and ds.alpha is None and ds.test_noisy is None
        assert np.array_equal(ds.train_labels, ds.train_clean_labels)


def test_train_size_subsets_are_nested_and_flips_do_not_move(cache):
    kw = {"noise_kind": "symmetric", "noise_level": 0.5, "noise_seed": 3}
    small = data.load(_digits(cache, train_size=200, subset_seed=1), **kw)
    big = data.load(_digits(cache, train_size=900, subset_seed=1), **kw)
    full = data.load(_digits(cache), **kw)
    assert len(small.train) == 200 and len(big.train) == 900
    small_rows, big_rows = small.train.rows, big.train.rows
    assert np.isin(small_rows, big_rows).all()
    # Each image keeps its noisy label whatever the training-set size.
    assert np.array_equal(small.train_labels, full.train_labels[small_rows])
    other = data.load(_digits(cache, train_size=200, subset_seed=2), **kw)
    assert not np.array_equal(other.train.rows, small_rows)


def test_train_size_larger_than_split(cache):
    with pytest.raises(data.DataError, match=r"dataset.train_size=5000 .* 1437 examples"):
        data.load(_digits(cache, train_size=5000))


def test_items_agree_with_label_arrays(cache):
    ds = data.load(_digits(cache), noise_kind="symmetric", noise_level=0.5, noise_seed=0)
    for i in (0, 17, len(ds.train) - 1):
        ex = ds.train[i]
        assert ex["index"] == i and ex["label"] == ds.train_labels[i]
        assert ex["clean_label"] == ds.train_clean_labels[i] and not ex["is_outlier"]
        assert ex["image"].shape == (8, 8, 1) and ex["image"].dtype == np.uint8
    with pytest.raises(IndexError):
        ds.train[len(ds.train)]
    # Test labels stay clean.
    assert np.array_equal(ds.test.labels, ds.test.clean_labels)


# ---- outliers --------------------------------------------------------------------------------


@needs_cifar
def test_open_set_outliers_counts_labels_and_alpha():
    cfg = {
        "name": "cifar10",
        "inlier_classes": (0, 1, 2, 3, 4),
        "train_size": 6000,
        "num_outliers": 3000,
        "num_known_outliers": 500,
        "num_test_outliers": 2000,
    }
    ds = data.load(cfg, noise_kind="symmetric", noise_level=0.2, noise_seed=5)
    raw = arrays.load_cifar10()
    k = 5
    assert ds.num_classes == k
    assert ds.class_names == ("airplane", "automobile", "bird", "cat", "deer")
    assert len(ds.train) == 6000 + 3500
    assert ds.train_is_outlier.sum() == 3500 and ds.num_outliers == 3000
    assert ds.alpha == pytest.approx(500 / 3500) == noise.outlier_alpha(500, 3000)
    out = ds.train_is_outlier
    # Outliers come from the other classes; known ones carry label K, the rest uniform labels.
    assert (raw.train.labels[ds.train.rows[out]] >= 5).all()
    assert (raw.train.labels[ds.train.rows[~out]] < 5).all()
    assert len(np.unique(ds.train.rows[out])) == 3500
    assert (ds.train_clean_labels[out] == -1).all()
    assert (ds.train_labels == k).sum() == 500
    uniform = ds.train_labels[out][ds.train_labels[out] < k]
    assert uniform.size == 3000
    counts = np.bincount(uniform, minlength=k)
    assert counts.min() > 520 and counts.max() < 680  # 600 each, about 3 sigma
    # Inliers are remapped to 0..K-1 and flipped among the K classes only.
    assert set(np.unique(ds.train_clean_labels[~out])) == set(range(k))
    assert ds.train_labels[~out].max() < k and ds.q_true.shape == (k, k)
    # Clean test: inliers only. Noisy test: inliers plus outliers from the other classes' test
    # split.
    assert len(ds.test) == 5000 and ds.test.labels.max() == k - 1
    tn = ds.test_noisy
    assert len(tn) == 7000 and tn.is_outlier.sum() == 2000
    assert (tn.labels[tn.is_outlier] == k).all() and (tn.clean_labels[tn.is_outlier] == -1).all()
    assert (raw.test.labels[tn.rows[tn.is_outlier]] >= 5).all()
    # Item view agrees.
    i = int(np.flatnonzero(out)[0])
    ex = ds.train[i]
    assert ex["is_outlier"] and ex["clean_label"] == -1
    np.testing.assert_array_equal(ex["image"], raw.train.images.take(ds.train.rows[i : i + 1])[0])


def test_val_split_is_held_out_of_the_noisy_training_set(cache):
    kw = {"noise_kind": "symmetric", "noise_level": 0.4, "noise_seed": 2}
    full = data.load(_digits(cache), **kw)
    ds = data.load(_digits(cache, val_size=300), **kw)
    again = data.load(_digits(cache, val_size=300), **kw)
    assert full.val is None
    assert len(ds.val) == 300 and len(ds.train) == len(full.train) - 300
    # Disjoint, and together the same examples with the same (noisy) labels as without a split.
    rows = np.concatenate([ds.train.rows, ds.val.rows])
    assert len(np.unique(rows)) == len(full.train)
    by_row = dict(zip(full.train.rows.tolist(), full.train.labels.tolist(), strict=True))
    assert [by_row[r] for r in ds.val.rows.tolist()] == ds.val.labels.tolist()
    assert np.mean(ds.val.labels != ds.val.clean_labels) > 0.25  # noisy, like training
    np.testing.assert_array_equal(ds.val.rows, again.val.rows)  # deterministic
    np.testing.assert_array_equal(ds.train_labels, ds.train.labels)
    assert ds.label_fingerprint != full.label_fingerprint  # a different training set
    with pytest.raises(data.DataError, match="dataset.val_size"):
        data.load(_digits(cache, val_size=len(full.train)), **kw)
    with pytest.raises(data.DataError, match="dataset.val_size"):
        data.load(_digits(cache, val_size=-1), **kw)


@needs_cifar
def test_val_split_keeps_alpha_from_the_outliers_trained_on(cache):
    cfg = {"name": "cifar10", "inlier_classes": (0, 1, 2, 3, 4), "train_size": 2000,
           "num_outliers": 1000, "num_known_outliers": 200, "val_size": 640}
    ds = data.load(cfg, noise_kind="identity", noise_seed=0)
    assert len(ds.train) + len(ds.val) == 3200
    assert ds.num_known_outliers == int(np.sum(ds.train.labels == 5))
    assert ds.num_outliers + ds.num_known_outliers == int(ds.train_is_outlier.sum())
    assert ds.alpha == pytest.approx(noise.outlier_alpha(ds.num_known_outliers, ds.num_outliers))
    assert 0 < ds.val.is_outlier.sum() < 640


def test_known_outliers_may_not_exceed_outliers(cache):
    cfg = _digits(cache, inlier_classes=(0, 1, 2), num_outliers=10, num_known_outliers=11)
    with pytest.raises(data.DataError, match=r"dataset.num_known_outliers=11 exceeds .*=10"):
        data.load(cfg)


def test_outliers_need_a_pool(cache):
    with pytest.raises(data.DataError, match=r"dataset.num_outliers: outliers need a source"):
        data.load(_digits(cache, num_outliers=10))


def test_outlier_pool_too_small(cache):
    cfg = _digits(cache, inlier_classes=tuple(range(9)), num_outliers=500)
    with pytest.raises(data.DataError, match=r"exceeds the 143 images in the outlier pool"):
        data.load(cfg)


def test_bad_inlier_classes(cache):
    with pytest.raises(data.DataError, match=r"dataset.inlier_classes: \[12\] outside"):
        data.load(_digits(cache, inlier_classes=(0, 12)))


def test_outlier_labels_are_deterministic(cache):
    cfg = _digits(cache, inlier_classes=(0, 1, 2, 3), num_outliers=300, num_known_outliers=30)
    a = data.load(cfg, noise_seed=1)
    b = data.load(cfg, noise_seed=1)
    c = data.load(cfg, noise_seed=2)
    assert np.array_equal(a.train_labels, b.train_labels)
    assert np.array_equal(a.train.rows, c.train.rows)  # the picks follow subset_seed
    out_a, out_c = a.train_labels[a.train_is_outlier], c.train_labels[c.train_is_outlier]
    assert not np.array_equal(out_a, out_c)
    assert a.q_true is None and a.alpha == pytest.approx(30 / 330)


def test_tfds_outlier_source_under_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    base = {"cache_dir": str(tmp_path), "num_outliers": 20, "num_known_outliers": 5}
    with tfds.testing.mock_data(num_examples=40):
        ds = data.load(
            {
                **base,
                "name": "cifar10",
                "source": "tfds",
                "outlier_source": "tfds:cifar100",
                "num_test_outliers": 10,
            },
            noise_kind="symmetric",
            noise_level=0.2,
        )
        assert len(ds.train) == 40 + 25 and len(ds.train.providers) == 2
        out = np.flatnonzero(ds.train_is_outlier)
        assert np.array_equal(ds.train.provider_id[out], np.ones(25))
        batch = ds.train.get_batch(np.array([0, out[0], 1, out[-1]]))
        assert batch["image"].shape == (4, 32, 32, 3)
        assert list(batch["is_outlier"]) == [False, True, False, True]
        assert len(ds.test_noisy) == 40 + 10
        # Fashion-MNIST (28x28x1) cannot take CIFAR-100 (32x32x3) images as outliers.
        with pytest.raises(data.DataError, match=r"dataset.outlier_source: outlier images"):
            data.load(
                {**base, "name": "fashion_mnist", "source": "tfds", "outlier_source": "cifar100"}
            )


# ---- stages on their own ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw():
    return digits.load_digits()


def test_class_remap_and_training_subset(raw):
    cmap = noisy.class_remap(raw, (7, 2))
    assert cmap.k == 2 and cmap.classes == (7, 2)
    assert cmap.remap[7] == 0 and cmap.remap[2] == 1 and (np.delete(cmap.remap, [2, 7]) == -1).all()
    rows = noisy.training_subset(raw.train.labels, cmap, 50, subset_seed=4)
    assert rows.size == 50 and np.isin(raw.train.labels[rows], (2, 7)).all()
    bigger = noisy.training_subset(raw.train.labels, cmap, 100, subset_seed=4)
    assert np.isin(rows, bigger).all()
    everything = noisy.class_remap(raw, None)
    np.testing.assert_array_equal(everything.remap, np.arange(10))


def test_corrupt_inliers_keys_flips_by_row(raw):
    from nlnoise.data.labels import SourceLabels

    cmap = noisy.class_remap(raw, None)
    start = SourceLabels(given=raw.train.labels, clean=raw.train.labels, from_file=False)
    kw = {"noise_kind": "symmetric", "noise_level": 0.5, "noise_seed": 9, "noise_kwargs": None}
    full = noisy.corrupt_inliers(start, cmap, np.arange(1437), **kw)
    part = noisy.corrupt_inliers(start, cmap, np.array([3, 700, 1400]), **kw)
    np.testing.assert_array_equal(part.labels, full.labels[[3, 700, 1400]])
    np.testing.assert_array_equal(full.q_true, noise.symmetric(10, 0.5))
    given = noisy.corrupt_inliers(start, cmap, np.arange(1437), **{**kw, "noise_kind": "given"})
    np.testing.assert_array_equal(given.labels, raw.train.labels)
    np.testing.assert_array_equal(given.q_true, np.eye(10))  # realized: nothing flipped


def test_hold_out_and_test_splits(raw):
    from nlnoise.data.schema import resolve_config

    cfg = resolve_config({"num_test_examples": 30})
    cmap = noisy.class_remap(raw, (0, 1, 2))
    test, test_noisy = noisy.test_splits(cfg, raw, cmap, None)
    assert len(test) == 30 and test_noisy is None and test.labels.max() == 2
    np.testing.assert_array_equal(test.labels, cmap.remap[raw.test.labels[test.rows]])
    train, val = noisy.hold_out(test, 10, subset_seed=0)
    assert (len(train), len(val)) == (20, 10)
    assert not np.isin(val.rows, train.rows).any()
    assert noisy.hold_out(test, 0, subset_seed=0) == (test, None)


def test_fingerprint_depends_on_labels_and_rows(raw):
    from nlnoise.data.schema import resolve_config

    cfg = resolve_config(None)
    test, _ = noisy.test_splits(cfg, raw, noisy.class_remap(raw, None), None)
    fp = noisy.label_fingerprint("digits", test)
    assert fp == noisy.label_fingerprint("digits", test.subset(np.arange(len(test))))
    assert fp != noisy.label_fingerprint("digits", test.subset(np.arange(1, len(test))))
    assert fp != noisy.label_fingerprint("other", test)


# ---- labels brought by the user ---------------------------------------------------------------


def _label_file(tmp_path, labels, name="labels.npy"):
    path = tmp_path / name
    np.save(path, np.asarray(labels, np.int64))
    return str(path)


def test_given_labels_with_the_source_as_clean_reference(cache, tmp_path, raw):
    flipped = noise.corrupt_labels(raw.train.labels, noise.pair_flip(10, 0.3), seed=5)
    cfg = _digits(cache, train_labels_path=_label_file(tmp_path, flipped),
                  clean_labels="source")
    ds = data.load(cfg, noise_kind="given", noise_level=0.5)  # the level is not used
    np.testing.assert_array_equal(ds.train_labels, flipped)
    np.testing.assert_array_equal(ds.train_clean_labels, raw.train.labels)
    assert ds.has_clean_labels
    np.testing.assert_allclose(ds.q_true, noise.realized_transition(raw.train.labels, flipped,
                                                                    10))
    assert ds.realized_flip_rate == pytest.approx(np.mean(flipped != raw.train.labels))
    # Synthetic flips on top of the file: Q* is the realized transition from clean to final.
    more = data.load(cfg, noise_kind="symmetric", noise_level=0.2, noise_seed=1)
    np.testing.assert_allclose(more.q_true, noise.realized_transition(
        raw.train.labels, more.train_labels, 10))
    assert more.realized_flip_rate > ds.realized_flip_rate


def test_given_labels_without_clean_labels(cache, tmp_path, raw):
    path = tmp_path / "labels.csv"
    path.write_text("label\n" + "\n".join(str(v) for v in (raw.train.labels + 1) % 10))
    ds = data.load(_digits(cache, train_labels_path=str(path)), noise_kind="given")
    np.testing.assert_array_equal(ds.train_labels, (raw.train.labels + 1) % 10)
    assert not ds.has_clean_labels and (ds.train_clean_labels == -1).all()
    assert ds.q_true is None and ds.realized_flip_rate is None
    # The test split keeps its own labels: that is what test error is measured against.
    np.testing.assert_array_equal(ds.test.labels, raw.test.labels)
    none = data.load(_digits(cache, clean_labels="none"), noise_kind="symmetric",
                     noise_level=0.3)
    assert not none.has_clean_labels and none.q_true is None
    assert np.mean(none.train_labels != raw.train.labels) > 0.2  # flips are still injected


def test_given_without_a_file_reports_the_realized_identity(cache, raw):
    ds = data.load(_digits(cache), noise_kind="given")
    np.testing.assert_array_equal(ds.q_true, np.eye(10))
    assert ds.realized_flip_rate == 0.0
    # The same labels as identity, whose fingerprint is pinned below.
    assert ds.label_fingerprint == data.load(_digits(cache)).label_fingerprint


def test_label_file_decides_which_images_are_inliers(cache, tmp_path, raw):
    given = raw.train.labels.copy()
    given[given == 3] = 0  # every 3 is labelled 0 in the file
    cfg = _digits(cache, train_labels_path=_label_file(tmp_path, given), clean_labels="source",
                  inlier_classes=(0, 1))
    ds = data.load(cfg, noise_kind="given")
    assert set(raw.train.labels[ds.train.rows]) == {0, 1, 3}
    # A 3 has no clean label among the inlier classes: unknown (-1), left out of Q*.
    threes = raw.train.labels[ds.train.rows] == 3
    assert (ds.train_clean_labels[threes] == -1).all() and (ds.train_labels[threes] == 0).all()
    np.testing.assert_array_equal(ds.q_true, np.eye(2))


# ---- pinned labels ---------------------------------------------------------------------------

# label_fingerprint, and a digest of the test / test_noisy / val splits, of digits configs as
# computed before load() was split into stages: a change here means resumed runs would refuse
# their checkpoints (or, worse, labels moved).
PINNED = {
    "plain": ({}, {}, "2373a4b51e8c57267a2586effcbc0bb70b42d19ef5c810d5667aa0d57cf8302e",
              "1ab14298ba44f0fc"),
    "symmetric": ({}, {"noise_kind": "symmetric", "noise_level": 0.4, "noise_seed": 7},
                  "4ed519bbe559b4584b3b2c4ab48e35e4a7355ea1360e821040fbfc298218d7db",
                  "1ab14298ba44f0fc"),
    "paper_random_subset": (
        {"train_size": 500, "subset_seed": 3},
        {"noise_kind": "paper_random", "noise_level": 0.5, "noise_seed": 1},
        "52d9d9aaf20a5be86208bc6fbf712dcacd62bc7d876388589f07387ea288ac8b", "1ab14298ba44f0fc"),
    "open_set": (
        {"inlier_classes": (0, 1, 2, 3), "num_outliers": 300, "num_known_outliers": 30,
         "num_test_outliers": 50},
        {"noise_kind": "pair", "noise_level": 0.3, "noise_seed": 2},
        "263617f54c4fae91098c866d5c0ee0d9ed5bfd5a8fe2ce7d312e937cafe64abf", "bb8248c021c336cb"),
    "val_test": (
        {"val_size": 200, "num_test_examples": 100, "subset_seed": 5},
        {"noise_kind": "symmetric", "noise_level": 0.2, "noise_seed": 4},
        "7815d527e950631c6141d0d1bfa2270dfac0cd3aa2733236d3e95a4d1165b2f1", "e33d08f83676c456"),
}


@pytest.mark.parametrize("case", sorted(PINNED))
def test_labels_and_fingerprints_are_pinned(case, cache):
    import hashlib

    cfg, kw, fingerprint, splits = PINNED[case]
    ds = data.load(_digits(cache, **cfg), **kw)
    h = hashlib.sha256()
    for s in (ds.test, ds.test_noisy, ds.val):
        if s is not None:
            for a in (s.provider_id, s.rows, s.labels, s.clean_labels, s.is_outlier):
                h.update(np.ascontiguousarray(a).tobytes())
    assert ds.label_fingerprint == fingerprint
    assert h.hexdigest()[:16] == splits
