"""Cross-fitting folds, the held-out split and left-out (-1) examples, on real digits."""

from __future__ import annotations

import numpy as np
import pytest

import nlnoise.data as data
from nlnoise.data import splits


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def _digits(cache, **kw):
    return {"name": "digits", "cache_dir": cache, **kw}


def _keys(split):
    return set(zip(split.provider_id.tolist(), split.rows.tolist(), strict=True))


def test_folds_partition_the_training_split_and_are_seeded():
    folds = splits.fold_of(1001, 3, seed=4)
    assert sorted(np.bincount(folds).tolist()) == [333, 334, 334]
    np.testing.assert_array_equal(folds, splits.fold_of(1001, 3, seed=4))
    assert not np.array_equal(folds, splits.fold_of(1001, 3, seed=5))


@pytest.mark.parametrize("val_size", [0, 150])
def test_each_example_is_left_out_by_exactly_one_fold(cache, val_size):
    kw = {"noise_kind": "paper_random", "noise_level": 0.5, "noise_seed": 3}
    whole = data.load(_digits(cache, train_size=900, subset_seed=2), **kw)
    held = []
    for fold in range(3):
        ds = data.load(_digits(cache, train_size=900, subset_seed=2, num_folds=3, fold=fold,
                               val_size=val_size), **kw)
        out = _keys(ds.fold_out)
        # The fold is out of training and of the held-out split; together they are the rest.
        assert not out & _keys(ds.train)
        assert ds.val is None or (len(ds.val) == val_size and not out & _keys(ds.val))
        rest = _keys(ds.train) | (_keys(ds.val) if ds.val is not None else set())
        assert out | rest == _keys(whole.train) and len(out) == 300
        # Labels do not depend on the folds: flips are keyed by the example.
        pos = {k: i for i, k in enumerate(zip(whole.train.provider_id, whole.train.rows,
                                              strict=True))}
        idx = [pos[k] for k in zip(ds.fold_out.provider_id, ds.fold_out.rows, strict=True)]
        np.testing.assert_array_equal(ds.fold_out.labels, whole.train.labels[idx])
        held.append(out)
    assert set().union(*held) == _keys(whole.train)
    assert sum(map(len, held)) == len(whole.train)


@pytest.mark.parametrize(
    ("num_folds", "fold", "message"),
    [(1, 0, r"dataset.num_folds: 1 fold would leave nothing"),
     (3, 3, r"dataset.fold: 3 is not one of the 3 folds \(0..2\)"),
     (0, 2, r"dataset.fold: 2 without dataset.num_folds"),
     (-2, 0, r"dataset.num_folds: must be a non-negative integer")],
)
def test_bad_folds_are_named(cache, num_folds, fold, message):
    with pytest.raises(data.DataError, match=message):
        data.load(_digits(cache, num_folds=num_folds, fold=fold))


def test_left_out_examples_are_dropped_after_the_subset_and_held_out_split(cache, tmp_path):
    kw = {"noise_kind": "symmetric", "noise_level": 0.4, "noise_seed": 1}
    base = _digits(cache, train_size=1000, val_size=100, subset_seed=6)
    before = data.load(base, **kw)
    # The run's own labels written back (as nlnoise-audit does), some trained-on ones set to -1.
    labels = before.source_train_labels.copy()
    for split in (before.train, before.val):
        labels[split.rows] = split.labels
    dropped = before.train.rows[::7]
    labels[dropped] = -1
    np.save(tmp_path / "pruned.npy", labels)
    after = data.load({**base, "train_labels_path": str(tmp_path / "pruned.npy"),
                       "clean_labels": "source"}, noise_kind="given")
    # The held-out split is the same examples with the same noisy labels.
    np.testing.assert_array_equal(after.val.rows, before.val.rows)
    np.testing.assert_array_equal(after.val.labels, before.val.labels)
    # Training lost exactly the -1 rows and kept the others' labels.
    keep = ~np.isin(before.train.rows, dropped)
    np.testing.assert_array_equal(after.train.rows, before.train.rows[keep])
    np.testing.assert_array_equal(after.train.labels, before.train.labels[keep])
    np.testing.assert_array_equal(after.train_clean_labels, before.train_clean_labels[keep])
    assert (after.source_train_labels[dropped] == -1).all()
    # Q* is the realized transition over the examples kept.
    assert after.q_true is not None and np.allclose(after.q_true.sum(0), 1)


def test_leave_out_keeps_a_split_without_left_out_labels_as_it_is(cache):
    ds = data.load(_digits(cache))
    assert splits.leave_out(ds.train) is ds.train and splits.leave_out(None) is None


def test_a_file_leaving_out_every_example_is_refused(cache, tmp_path):
    np.save(tmp_path / "none.npy", np.full(1437, -1))
    with pytest.raises(data.DataError, match=r"every example of the training split is labelled "
                                             r"-1"):
        data.load(_digits(cache, train_labels_path=str(tmp_path / "none.npy")),
                  noise_kind="given")
