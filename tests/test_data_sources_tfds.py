"""The TFDS source, under tfds.testing.mock_data (the only mock allowed), and its errors."""

from __future__ import annotations

import numpy as np
import pytest

import nlnoise.data as data
from nlnoise.data.schema import resolve_config
from nlnoise.data.sources import tfds as tfds_source


@pytest.mark.parametrize(
    ("name", "shape", "k"),
    [
        ("cifar10", (32, 32, 3), 10),
        ("svhn_cropped", (32, 32, 3), 10),
        ("fashion_mnist", (28, 28, 1), 10),
        ("cifar100", (32, 32, 3), 100),
        ("imagenet2012", (227, 227, 3), 1000),
    ],
)
def test_tfds_source_under_mock_data(name, shape, k, tmp_path):
    import tensorflow_datasets as tfds

    cfg = {"name": name, "source": "tfds", "data_dir": str(tmp_path / "tfds"),
           "cache_dir": str(tmp_path / "cache")}  # fmt: skip
    with tfds.testing.mock_data(num_examples=24):
        ds = data.load(cfg, noise_kind="symmetric", noise_level=0.5, noise_seed=0)
        assert ds.num_classes == k and len(ds.class_names) == k
        assert ds.image_shape == shape
        assert len(ds.train) == 24 and len(ds.test) == 24
        ex = ds.train[3]
        assert ex["image"].dtype == np.uint8 and ex["label"] == ds.train_labels[3]
        # The split's labels come from the records themselves.
        raw_label = tfds.data_source(name, split="train")[3]["label"]
        assert ds.train_clean_labels[3] == raw_label
        it = data.train_iterator(ds, cfg, global_batch_size=8, seed=0)
        batch = next(it)
    assert batch["image"].shape == (8, *shape) and batch["image"].dtype == np.float32
    assert ds.preprocessor.contrast_normalization == (name == "svhn_cropped")
    assert ds.preprocessor.random_flip == (name == "imagenet2012")


def test_train_plus_extra_reads_both_splits_in_order(tmp_path):
    import tensorflow_datasets as tfds

    cfg = {"name": "svhn_cropped", "source": "tfds", "cache_dir": str(tmp_path),
           "train_split": "train+extra", "mean_subtraction": False}
    with tfds.testing.mock_data(num_examples=12):
        raw = tfds_source.load(resolve_config(cfg))
        train = tfds.data_source("svhn_cropped", split="train")
        extra = tfds.data_source("svhn_cropped", split="extra")
        assert len(raw.train) == len(train) + len(extra) == 24 and len(raw.test) == 12
        want = [train[i]["label"] for i in range(12)] + [extra[i]["label"] for i in range(12)]
        np.testing.assert_array_equal(raw.train.labels, want)
        rows = np.array([13, 2, 23])
        got = raw.train.images.take(rows)
        np.testing.assert_array_equal(got[0], extra[1]["image"])
        np.testing.assert_array_equal(got[1], train[2]["image"])
        np.testing.assert_array_equal(got[2], extra[11]["image"])
        ds = data.load(cfg, noise_kind="symmetric", noise_level=0.2)
        assert len(ds.train) == 24
    # Each part's label column is cached on its own.
    names = sorted(p.name.split("-")[1] for p in (tmp_path / "tfds_labels").iterdir())
    assert names == ["extra", "test", "train"]


def test_empty_split_part_is_named():
    with pytest.raises(data.DataError, match=r"'train\+' has an empty part"):
        tfds_source.split_parts("train+")


def test_tfds_missing_dataset_says_how_to_prepare(tmp_path):
    where = tmp_path / "empty_tfds"
    with pytest.raises(data.DataError) as e:
        data.load({"name": "cifar10", "source": "tfds", "data_dir": str(where)})
    msg = str(e.value)
    assert "dataset.data_dir" in msg and str(where) in msg
    assert "tfds build cifar10 --data_dir=DIR" in msg and "tensorflow" in msg


def test_unknown_tfds_name_is_reported_as_unknown(tmp_path):
    with pytest.raises(data.DataError) as e:
        data.load({"name": "cifar11", "source": "tfds", "data_dir": str(tmp_path)})
    msg = str(e.value)
    assert msg.startswith("dataset.name: TFDS knows no dataset 'cifar11'")
    assert "tfds.list_builders()" in msg and "'folder'" in msg
    assert "tfds build" not in msg and "not prepared" not in msg


def test_tfds_imagenet_howto_mentions_manual_download():
    assert "downloads/manual" in tfds_source.tfds_howto("imagenet2012", None)
