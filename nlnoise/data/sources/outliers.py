"""The dataset that outlier images come from (``dataset.outlier_source``), when they are not the
main dataset's other classes."""

from __future__ import annotations

import ml_collections

from nlnoise.data.schema import DataError, resolve_config
from nlnoise.data.sources import tfds as tfds_source
from nlnoise.data.sources.base import RawDataset


def parse_outlier_source(spec: str) -> tuple[str, str]:
    """``"local:NAME"`` -> ``("local", NAME)``; ``"tfds:NAME"`` or a bare ``NAME`` -> TFDS."""
    kind, _, name = spec.partition(":") if ":" in spec else ("tfds", "", spec)
    if kind not in ("tfds", "local") or not name:
        raise DataError(
            f"dataset.outlier_source: expected 'tfds:NAME', 'local:NAME' or a TFDS name, got "
            f"{spec!r}."
        )
    return kind, name


def load_outlier_raw(cfg: ml_collections.ConfigDict) -> RawDataset:
    """The dataset named by ``cfg.outlier_source``, read from ``cfg.outlier_data_dir``.

    A local name is any entry of the source registry (``folder`` and ``arrays`` included). The
    main dataset's ``data_dir`` is the fallback for a TFDS outlier source only when the main
    source is TFDS too (otherwise it is not a TFDS directory).
    """
    from nlnoise.data import sources

    kind, name = parse_outlier_source(str(cfg.outlier_source))
    if kind == "local":
        if name not in sources.LOCAL_SOURCES:
            raise DataError(
                f"dataset.outlier_source: no local source {name!r}; local: "
                f"{', '.join(sources.LOCAL_SOURCES)}."
            )
        sub = resolve_config({"name": name, "source": "local", "cache_dir": cfg.cache_dir,
                              "data_dir": cfg.outlier_data_dir})
        return sources.load_raw(sub)
    fallback = cfg.data_dir if cfg.source == "tfds" else None
    return tfds_source.load_tfds(
        name,
        cfg.outlier_data_dir if cfg.outlier_data_dir is not None else fallback,
        cfg.cache_dir,
        resize_size=cfg.resize_size if name == "imagenet2012" else None,
        field="dataset.outlier_source",
        name_field="dataset.outlier_source",
    )
