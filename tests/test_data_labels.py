"""Training labels from a file, the clean reference, realized Q* and flip matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nlnoise.data as data
from nlnoise import noise
from nlnoise.data import labels
from nlnoise.data.schema import resolve_config
from nlnoise.data.sources import digits


@pytest.fixture(scope="module")
def raw():
    return digits.load_digits()


# ---- reading label files ---------------------------------------------------------------------


def test_npy_and_csv_label_files(tmp_path):
    np.save(tmp_path / "a.npy", np.array([3, 0, 2], np.uint8))
    np.testing.assert_array_equal(labels.read_label_file(str(tmp_path / "a.npy")), [3, 0, 2])
    (tmp_path / "b.csv").write_text("\ufefflabel\n3\n\n 0 \n2\n")  # BOM, header, blank line
    np.testing.assert_array_equal(labels.read_label_file(str(tmp_path / "b.csv")), [3, 0, 2])
    (tmp_path / "c.csv").write_text('"1"\r\n4\r\n')
    np.testing.assert_array_equal(labels.read_label_file(str(tmp_path / "c.csv")), [1, 4])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("l.txt", "1\n2\n", r"must end in .npy or .csv"),
        ("l.csv", "label\n1\n2.5\n", r"line 3 \('2.5'\) is not an integer class index"),
        ("l.csv", "1,cat\n2,dog\n", r"line 1 \('1,cat'\) has several columns; expected one"),
        ("l.npy", np.zeros((3, 2), np.int64), r"shape \(3, 2\), expected a 1-D vector"),
        ("l.npy", np.array([0.0, 1.0]), r"holds float64 values, expected integers"),
        ("l.npy", b"garbage", r"cannot read it as .npy"),
        ("missing.csv", None, r"no such file; fix the path"),
    ],
)
def test_bad_label_files_are_named_with_the_fix(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.save(path, content)
    with pytest.raises(data.DataError, match=message) as e:
        labels.read_label_file(str(path))
    msg = str(e.value)
    assert msg.startswith(f"dataset.train_labels_path ({path})") and "one integer" in msg


def test_label_file_of_the_wrong_length_or_range(tmp_path, raw):
    np.save(tmp_path / "short.npy", raw.train.labels[:-1])
    cfg = resolve_config({"name": "digits", "train_labels_path": str(tmp_path / "short.npy")})
    with pytest.raises(data.DataError, match=r"short.npy\): holds 1436 labels but the training "
                                             r"split of digits has 1437 images\. Write one"):
        labels.source_labels(raw, cfg, labels.read_label_file(cfg.train_labels_path))
    bad = raw.train.labels.copy()
    bad[5] = 10
    with pytest.raises(data.DataError, match=r"1 labels outside \[0, 10\); first is 10 at index "
                                             r"5\. Labels must be class indices 0\.\.9") as e:
        labels.source_labels(raw, cfg, bad)
    assert str(e.value).startswith(f"dataset.train_labels_path ({tmp_path / 'short.npy'})")


def test_minus_one_is_the_only_negative_label(tmp_path, raw):
    cfg = resolve_config({"name": "digits", "train_labels_path": str(tmp_path / "l.npy")})
    given = raw.train.labels.copy()
    given[[4, 9]] = -1
    start = labels.source_labels(raw, cfg, given)
    np.testing.assert_array_equal(start.given, given)  # -1: left out of training
    given[9] = -2
    with pytest.raises(data.DataError, match=r"1 labels below -1; first is -2 at index 9\. The "
                                             r"only negative label allowed is -1") as e:
        labels.source_labels(raw, cfg, given)
    assert str(e.value).startswith(f"dataset.train_labels_path ({tmp_path / 'l.npy'})")
    (tmp_path / "l.csv").write_text("label\n3\n-1\n0\n")
    np.testing.assert_array_equal(labels.read_label_file(str(tmp_path / "l.csv")), [3, -1, 0])


def test_rejected_label_file_leaves_no_cache_behind(tmp_path, make_digits_folder):
    root = tmp_path / "folder"
    make_digits_folder(root, per_class=(3, 1))
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(["1"] * 29))  # the folder has 30 training images
    cache = tmp_path / "cache"
    with pytest.raises(data.DataError, match=r"labels.csv\): holds 29 labels .* has 30 images"):
        data.load({"name": "folder", "data_dir": str(root), "cache_dir": str(cache),
                   "train_labels_path": str(path)})
    assert [p for p in cache.rglob("*") if p.is_file()] == []
    path.write_text("\n".join(["1"] * 30))
    assert (data.load({"name": "folder", "data_dir": str(root), "cache_dir": str(cache),
                       "train_labels_path": str(path)}).train_labels == 1).all()


# ---- which labels are clean ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("with_file", "clean_labels", "from_file", "clean_is_source"),
    [(False, None, False, True), (False, "source", False, True), (False, "none", False, False),
     (True, None, True, False), (True, "source", True, True), (True, "none", True, False)],
)
def test_clean_reference(raw, with_file, clean_labels, from_file, clean_is_source):
    given = (raw.train.labels + 1) % 10
    cfg = resolve_config({"name": "digits", "clean_labels": clean_labels,
                          "train_labels_path": "x.npy" if with_file else None})
    start = labels.source_labels(raw, cfg, given if with_file else None)
    assert start.from_file == from_file
    np.testing.assert_array_equal(start.given, given if with_file else raw.train.labels)
    assert (start.clean is not None) == clean_is_source
    if clean_is_source:
        np.testing.assert_array_equal(start.clean, raw.train.labels)


def test_realized_q_counts_known_clean_labels_and_fills_empty_classes():
    clean = np.array([0, 0, 0, 0, 1, 1, -1])
    noisy = np.array([0, 0, 0, 1, 2, 1, 2])
    q = labels.realized_q(clean, noisy, 3)
    np.testing.assert_allclose(q, [[0.75, 0, 0], [0.25, 0.5, 0], [0, 0.5, 1]])
    noise.validate_transition(q, 3)  # class 2 had no example: the identity's column


# ---- flip matrices ---------------------------------------------------------------------------


def test_flip_matrix_of_the_wrong_size():
    with pytest.raises(data.DataError, match=r"expected shape \(10, 10\).*got \(5, 5\)"):
        labels.flip_matrix("custom", 10, 0.0, 0, {"q": np.eye(5)})
    with pytest.raises(data.DataError, match=r"got \(4, 4\).*K=10"):
        labels.flip_matrix("adversarial", 10, 0.4, 0, {"confusion": np.ones((4, 4))})


def test_custom_matrix_and_confusion_path(tmp_path):
    q = noise.paper_random(10, 0.3, seed=4)
    np.testing.assert_array_equal(labels.flip_matrix("custom", 10, 0.0, 2, {"q": q}), q)
    np.save(tmp_path / "q.npy", q)
    np.testing.assert_array_equal(
        labels.flip_matrix("custom", 10, 0.0, 2, {"q": str(tmp_path / "q.npy")}), q)
    confusion = np.random.default_rng(0).integers(0, 20, (10, 10))
    path = tmp_path / "confusion.npy"
    np.save(path, confusion)
    adv = labels.flip_matrix("adversarial", 10, 0.4, 0, {"confusion_path": str(path), "m": 3})
    np.testing.assert_allclose(adv, noise.adversarial(confusion, 0.4, m=3))
    with pytest.raises(data.DataError, match=r"corruption.confusion_path: cannot read"):
        labels.flip_matrix("adversarial", 10, 0.4, 0,
                           {"confusion_path": str(Path(tmp_path) / "none.npy")})


def test_identity_flips_nothing():
    assert labels.flip_matrix("identity", 10, 0.0, 0) is None
    assert labels.flip_matrix("symmetric", 10, 0.0, 0) is None
