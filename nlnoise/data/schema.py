"""The ``dataset`` config: every key with its default, and the check that fills and validates it.

Which dataset names exist is the source registry's business (:mod:`nlnoise.data.sources`), so
this module knows nothing about sources and can be imported by all of them.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections


class DataError(ValueError):
    """Bad data or a bad ``dataset`` config; the message names the field or file and the fix."""


SOURCE_KINDS = ("local", "tfds")
# dataset.clean_labels: None = automatic (the source's labels are clean unless a label file
# replaces them); "source" = the source's labels are the clean reference even then; "none" = no
# clean label is known.
CLEAN_LABELS = (None, "source", "none")


def default_dataset_config() -> ml_collections.ConfigDict:
    """The ``dataset`` sub-config with every key at its default (see ``nlnoise.data``).

    Keys that default to None are typed placeholders, so ``--config.dataset.KEY=VALUE`` works
    on the command line (``config_flags`` cannot infer the type of a plain None).
    """
    ph = ml_collections.config_dict.placeholder
    return ml_collections.ConfigDict(
        {
            "name": "fashion_mnist",
            "source": "local",
            "data_dir": ph(str),
            "cache_dir": ph(str),
            "train_split": ph(str),
            "test_split": ph(str),
            "train_size": ph(int),
            "subset_seed": ph(int),
            "inlier_classes": ph(tuple),
            "num_outliers": 0,
            "num_known_outliers": 0,
            "outlier_source": ph(str),
            "outlier_data_dir": ph(str),
            "num_test_outliers": ph(int),
            "num_test_examples": ph(int),
            "val_size": 0,
            "num_folds": 0,
            "fold": 0,
            "train_labels_path": ph(str),
            "clean_labels": ph(str),
            "image_size": ph(int),
            "resize_size": 256,
            "random_flip": ph(bool),
            "mean_subtraction": True,
            "mean_max_examples": 100_000,
            "contrast_normalization": ph(bool),
            "pixel_scale": 1.0 / 255.0,
            "eval_batch_size": 1000,
            "num_threads": 2,
            "prefetch_buffer_size": 4,
        }
    )


def resolve_config(cfg: Any) -> ml_collections.ConfigDict:
    """Fills missing keys with defaults; rejects unknown keys (usually typos) and bad choices."""
    out = default_dataset_config()
    items = {} if cfg is None else cfg.items() if hasattr(cfg, "items") else dict(cfg).items()
    for key, value in items:
        if key not in out:
            raise DataError(
                f"dataset.{key}: unknown key. Known keys: {', '.join(sorted(out.keys()))}."
            )
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        try:
            out[key] = value
        except (TypeError, ValueError) as e:
            raise DataError(f"dataset.{key}: bad value {value!r} ({e}).") from None
    if out.subset_seed is None:
        out.subset_seed = 0
    if out.source not in SOURCE_KINDS:
        raise DataError(f"dataset.source: must be 'local' or 'tfds', got {out.source!r}.")
    if out.clean_labels not in CLEAN_LABELS:
        raise DataError(
            f"dataset.clean_labels: must be None (automatic), 'source' (the source's labels are "
            f"the clean reference) or 'none' (no clean label is known), got {out.clean_labels!r}."
        )
    return out
