"""The dataset config schema: defaults, documented keys, command-line overrides, bad values."""

from __future__ import annotations

import pytest

import nlnoise.data as data
from nlnoise.data import schema


def test_unknown_config_key_is_named():
    with pytest.raises(data.DataError, match=r"dataset.trainsize: unknown key"):
        data.load({"name": "digits", "trainsize": 10})


def test_default_config_has_every_documented_key():
    cfg = data.default_dataset_config()
    assert set(cfg.keys()) == set(schema.resolve_config(None).keys())
    for key in cfg.keys():
        assert f"``{key}``" in data.__doc__, key


def test_config_keys_can_be_set_from_the_command_line():
    import ml_collections
    from absl import flags
    from ml_collections import config_flags

    root = ml_collections.ConfigDict({"dataset": data.default_dataset_config()})
    argv = [
        "prog",
        "--config.dataset.train_size=5000",
        "--config.dataset.inlier_classes=(0,1,2,3,4)",
        "--config.dataset.contrast_normalization=True",
        "--config.dataset.outlier_source=tfds:cifar100",
        "--config.dataset.train_labels_path=/tmp/labels.csv",
        "--config.dataset.clean_labels=source",
    ]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", root, flag_values=fv, sys_argv=argv)
    fv(argv)
    cfg = schema.resolve_config(fv.config.dataset)
    assert cfg.train_size == 5000 and cfg.inlier_classes == (0, 1, 2, 3, 4)
    assert cfg.contrast_normalization is True and cfg.outlier_source == "tfds:cifar100"
    assert cfg.train_labels_path == "/tmp/labels.csv" and cfg.clean_labels == "source"
    assert schema.resolve_config({"inlier_classes": [1, 2]}).inlier_classes == (1, 2)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("source", "web", r"dataset.source: must be 'local' or 'tfds'"),
        ("clean_labels", "yes", r"dataset.clean_labels: must be None .*'source'.*'none'"),
        ("train_size", "many", r"dataset.train_size: bad value 'many'"),
    ],
)
def test_bad_values_are_named(key, value, message):
    with pytest.raises(data.DataError, match=message):
        schema.resolve_config({key: value})


def test_subset_seed_defaults_to_zero_and_paths_become_strings(tmp_path):
    cfg = schema.resolve_config({"data_dir": tmp_path})
    assert cfg.subset_seed == 0 and cfg.data_dir == str(tmp_path)
