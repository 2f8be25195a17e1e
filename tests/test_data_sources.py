"""The source registry: dispatch by dataset.source and dataset.name."""

from __future__ import annotations

import pytest

import nlnoise.data as data
from nlnoise.data import sources
from nlnoise.data.schema import resolve_config


def test_registry_holds_every_local_source():
    assert set(sources.LOCAL_SOURCES) == {"fashion_mnist", "cifar10", "digits", "arrays",
                                          "folder"}
    for name in sources.LOCAL_SOURCES:
        assert f"``{name}``" in sources.__doc__


def test_load_raw_dispatches_by_name():
    raw = sources.load_raw(resolve_config({"name": "digits"}))
    assert raw.name == "digits" and raw.source == "local" and len(raw.train) == 1437


def test_local_source_rejects_tfds_only_names():
    with pytest.raises(data.DataError,
                       match=r"dataset.name.*svhn_cropped.*source='tfds'.*'folder' or 'arrays'"):
        data.load({"name": "svhn_cropped", "source": "local"})
