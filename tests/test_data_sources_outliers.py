"""The outlier source spec (``dataset.outlier_source``): TFDS or any local registry entry."""

from __future__ import annotations

import numpy as np
import pytest

import nlnoise.data as data
from nlnoise.data.schema import resolve_config
from nlnoise.data.sources import outliers


@pytest.mark.parametrize(("spec", "want"), [("cifar100", ("tfds", "cifar100")),
                                            ("tfds:svhn_cropped", ("tfds", "svhn_cropped")),
                                            ("local:folder", ("local", "folder"))])
def test_spec_parsing(spec, want):
    assert outliers.parse_outlier_source(spec) == want


@pytest.mark.parametrize("spec", ["web:cifar100", "local:"])
def test_bad_spec_is_named(spec):
    with pytest.raises(data.DataError, match=r"dataset.outlier_source: expected 'tfds:NAME'"):
        outliers.parse_outlier_source(spec)


def test_unknown_local_outlier_source_lists_the_registry():
    cfg = resolve_config({"name": "digits", "outlier_source": "local:mnist"})
    with pytest.raises(data.DataError, match=r"no local source 'mnist'; local: .*folder"):
        outliers.load_outlier_raw(cfg)


def test_a_users_folder_can_be_the_outlier_source(tmp_path, make_digits_folder):
    # Digits in a folder as outliers for digits: same 8x8x1 images, read from outlier_data_dir.
    root = tmp_path / "outliers"
    make_digits_folder(root, per_class=(5, 2))
    cfg = {"name": "digits", "cache_dir": str(tmp_path / "cache"), "outlier_source":
           "local:folder", "outlier_data_dir": str(root), "num_outliers": 20,
           "num_known_outliers": 4, "num_test_outliers": 10}
    raw = outliers.load_outlier_raw(resolve_config(cfg))
    assert raw.name == "folder" and (len(raw.train), len(raw.test)) == (50, 20)
    ds = data.load(cfg, noise_seed=3)
    assert len(ds.train) == 1437 + 24 and len(ds.train.providers) == 2
    out = ds.train_is_outlier
    np.testing.assert_array_equal(ds.train.provider_id[out], 1)
    assert (ds.train_labels[out] == 10).sum() == 4 and ds.alpha == pytest.approx(4 / 24)
    assert ds.test_noisy.is_outlier.sum() == 10


def test_tfds_outlier_source_uses_the_main_data_dir_only_for_tfds(tmp_path):
    cfg = resolve_config({"name": "digits", "data_dir": None, "outlier_source": "cifar100",
                          "outlier_data_dir": str(tmp_path / "none")})
    with pytest.raises(data.DataError, match=r"dataset.outlier_source: TFDS dataset 'cifar100'"):
        outliers.load_outlier_raw(cfg)
