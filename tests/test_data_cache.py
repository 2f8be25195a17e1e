"""The cache: atomic writes, unreadable files treated as absent, rollback of rejected input."""

from __future__ import annotations

import numpy as np
import pytest

from nlnoise.data import cache
from nlnoise.data.schema import DataError


def test_atomic_save_leaves_no_temp_file_and_round_trips(tmp_path):
    path = tmp_path / "sub" / "a.npy"
    cache.atomic_save_npy(path, np.arange(5))
    assert [p.name for p in path.parent.iterdir()] == ["a.npy"]
    np.testing.assert_array_equal(cache.load_cached_npy(path), np.arange(5))


def test_unreadable_or_missing_cache_is_absent(tmp_path):
    assert cache.load_cached_npy(tmp_path / "none.npy") is None
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not an npy file")
    assert cache.load_cached_npy(bad) is None


def test_cached_splits_need_every_split_at_its_length(tmp_path):
    paths = {"train": tmp_path / "train.npy", "test": tmp_path / "test.npy"}
    images = {"train": np.zeros((4, 2, 2, 1), np.uint8), "test": np.ones((3, 2, 2, 1), np.uint8)}
    got = cache.save_splits(paths, images)
    assert isinstance(got["train"], np.memmap) and (got["test"] == 1).all()
    assert cache.load_cached_splits(paths, {"train": 4, "test": 3}) is not None
    assert cache.load_cached_splits(paths, {"train": 4, "test": 5}) is None
    paths["test"].unlink()
    assert cache.load_cached_splits(paths, {"train": 4, "test": 3}) is None


def test_rejected_input_leaves_no_cache_behind(tmp_path):
    before = tmp_path / "before.npy"
    cache.atomic_save_npy(before, np.zeros(1))
    with pytest.raises(DataError), cache.rollback_on_data_error():
        cache.atomic_save_npy(tmp_path / "a.npy", np.zeros(2))
        with cache.rollback_on_data_error():  # an inner block that succeeds
            cache.atomic_save_npy(tmp_path / "b.npy", np.zeros(2))
        raise DataError("rejected")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["before.npy"]
    # Other errors (an interrupted run) keep what was written: it is valid.
    with pytest.raises(KeyError), cache.rollback_on_data_error():
        cache.atomic_save_npy(tmp_path / "c.npy", np.zeros(2))
        raise KeyError("x")
    assert (tmp_path / "c.npy").exists()


def test_short_hash_is_stable():
    assert cache.short_hash("a", 1) == cache.short_hash("a", 1) != cache.short_hash("a", 2)
    assert len(cache.short_hash("a")) == 16


def test_cache_root_that_cannot_be_created_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match=r"dataset.cache_dir: cannot create"):
        cache.cache_root(blocker / "sub")
