"""Any TFDS image dataset with ``image`` and ``label`` features (``source=tfds``), read through
``tfds.data_source`` (ArrayRecord; no TensorFlow needed to read, and never a download).

A split may be a sum of splits (``train+extra``, SVHN's paper training set): each part is opened
on its own and the parts are read as one split, in the order given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np

from nlnoise import noise
from nlnoise.data.cache import atomic_save_npy, cache_root, load_cached_npy, short_hash
from nlnoise.data.schema import DataError
from nlnoise.data.sources.base import (
    ConcatImages,
    ImageProvider,
    RawDataset,
    RawSplit,
    resize_center_square,
)

_PREPARE = {
    "cifar10": "`tfds build cifar10 --data_dir=DIR --file_format=array_record`",
    "cifar100": "`tfds build cifar100 --data_dir=DIR --file_format=array_record`",
    "svhn_cropped": "`tfds build svhn_cropped --data_dir=DIR --file_format=array_record`",
    "fashion_mnist": "`tfds build fashion_mnist --data_dir=DIR --file_format=array_record`",
    "imagenet2012": (
        "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org into "
        "DIR/downloads/manual, then `tfds build imagenet2012 --data_dir=DIR "
        "--manual_dir=DIR/downloads/manual --file_format=array_record`"
    ),
}


class TfdsImages:
    """Images from a ``tfds.data_source`` split, read one record at a time.

    With ``resize`` set (ImageNet), each image's shorter side is resized to ``resize`` and the
    centre ``resize x resize`` square kept, so every image has one shape.
    """

    def __init__(self, source: Sequence[dict], shape: tuple[int, int, int], resize: int | None):
        self.source = source
        self.shape = shape
        self.resize = resize

    def __len__(self) -> int:
        return len(self.source)

    def get(self, row: int) -> np.ndarray:
        image = np.asarray(self.source[int(row)]["image"])
        if image.ndim == 2:
            image = image[..., None]
        if self.resize is not None:
            image = resize_center_square(image, self.resize)
        if image.shape != self.shape or image.dtype != np.uint8:
            raise DataError(
                f"dataset.name: TFDS record {row} has image {image.dtype}{list(image.shape)}, "
                f"expected uint8{list(self.shape)}."
            )
        return image

    def take(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.shape), np.uint8)
        for n, r in enumerate(np.asarray(rows)):
            out[n] = self.get(r)
        return out


def tfds_howto(name: str, data_dir: str | None) -> str:
    """How to prepare ``name`` in ArrayRecord format, and where it was looked for."""
    cmd = _PREPARE.get(name, f"`tfds build {name} --data_dir=DIR --file_format=array_record`")
    where = data_dir or "~/tensorflow_datasets (TFDS's default)"
    return (
        f"Looked in data_dir={where}. Prepare it on a machine with internet and tensorflow "
        f"installed (`pip install tensorflow-cpu`): {cmd}; then set dataset.data_dir=DIR "
        "(a gs:// bucket works on TPU VMs). See docs/data.md."
    )


def default_splits(name: str) -> tuple[str, str]:
    """(train, test) split names: ImageNet evaluates on ``validation``."""
    return ("train", "validation") if name == "imagenet2012" else ("train", "test")


def split_parts(split: str) -> list[str]:
    """``"train+extra"`` -> ``["train", "extra"]`` (slices such as ``train[:50%]`` kept whole)."""
    parts = [p.strip() for p in str(split).split("+")]
    if not all(parts):
        raise DataError(f"dataset.train_split / test_split: {split!r} has an empty part; write "
                        "split names joined by '+', e.g. 'train+extra'.")
    return parts


def _label_only_source(name: str, split: str, data_dir: str | None):
    """The split with image decoding skipped (labels of ImageNet in minutes, not hours), or
    None where this TFDS cannot skip it (e.g. under ``mock_data``, which needs TensorFlow)."""
    import tensorflow_datasets as tfds

    try:
        src = tfds.data_source(
            name,
            split=split,
            data_dir=data_dir,
            download=False,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
        int(src[0]["label"])
        return src
    except Exception:
        return None


def _labels(source, name: str, split: str, data_dir: str | None, cache_dir, num_classes: int,
            field: str) -> np.ndarray:
    """The label column of a TFDS split, read once, checked, and then cached."""
    info = source.dataset_info
    key = short_hash(name, split, str(info.data_dir), str(info.version), len(source))
    path = cache_root(cache_dir) / "tfds_labels" / f"{name}-{split}-{key}.npy"
    labels = load_cached_npy(path)
    fresh = labels is None or labels.shape != (len(source),)
    if fresh:
        reader = _label_only_source(name, split, data_dir) or source
        labels = np.fromiter(
            (int(reader[i]["label"]) for i in range(len(source))), np.int64, len(source)
        )
    labels = noise.check_labels(labels, num_classes, f"{field} ({name} {split} labels)",
                                error=DataError, integral_floats=False,
                                hint=f"The prepared files are damaged; prepare them again. "
                                     f"{tfds_howto(name, data_dir)}")
    if fresh:  # only a checked column is cached
        atomic_save_npy(path, labels)
    return labels


def _not_found_error():
    try:
        from tensorflow_datasets.core.registered import DatasetNotFoundError
    except ImportError:  # pragma: no cover - moved in another TFDS version
        return ()
    return DatasetNotFoundError


def open_tfds(name: str, split: str, data_dir: str | None, field: str = "dataset.data_dir",
              name_field: str = "dataset.name"):
    """``tfds.data_source`` without ever downloading, with an unknown-name or a how-to-prepare
    error."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - tfds is a dependency
        raise DataError(f"dataset.source: tensorflow_datasets is not importable ({e}).") from None
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except _not_found_error():
        raise DataError(
            f"{name_field}: TFDS knows no dataset {name!r} (check the spelling; "
            "`tfds.list_builders()` lists them, e.g. cifar10, svhn_cropped, imagenet2012). For "
            "images of your own use dataset.source='local' with dataset.name='folder' or "
            "'arrays' (docs/data.md)."
        ) from None
    except Exception as e:
        root = Path(data_dir or "~/tensorflow_datasets").expanduser() / name
        if "://" not in str(data_dir or "") and not root.exists():
            cause = f"nothing is prepared at {root}"
        else:
            detail = str(e).splitlines()[0] if str(e) else ""
            cause = f"could not open it as ArrayRecord: {type(e).__name__}: {detail}"
        raise DataError(
            f"{field}: TFDS dataset {name!r} split {split!r} is not available ({cause}). "
            f"{tfds_howto(name, data_dir)}"
        ) from e
    if len(source) == 0:
        raise DataError(
            f"{field}: TFDS {name!r} split {split!r} is empty. {tfds_howto(name, data_dir)}"
        )
    return source


def _features(src, name: str, resize_size: int | None):
    """(num_classes, class names, stored image shape) from a split's feature spec."""
    features = src.dataset_info.features
    if "image" not in features or "label" not in features:
        raise DataError(
            f"dataset.name: TFDS {name!r} has features {list(features.keys())}; nlnoise "
            "needs 'image' and 'label'."
        )
    label_feature = features["label"]
    img_shape = tuple(features["image"].shape)
    if resize_size is None and (None in img_shape or len(img_shape) != 3):
        raise DataError(
            f"dataset.resize_size: TFDS {name!r} has variable-size images {img_shape}; set "
            "dataset.resize_size (e.g. 256) so they can be batched."
        )
    channels = img_shape[-1] if img_shape[-1] is not None else 3
    shape = (
        (int(resize_size), int(resize_size), int(channels))
        if resize_size is not None
        else tuple(int(d) for d in img_shape)
    )
    return int(label_feature.num_classes), tuple(label_feature.names), shape


def load_tfds(
    name: str,
    data_dir: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    train_split: str | None = None,
    test_split: str | None = None,
    resize_size: int | None = None,
    field: str = "dataset.data_dir",
    name_field: str = "dataset.name",
) -> RawDataset:
    """A TFDS dataset through ``tfds.data_source``.

    ``resize_size`` (ImageNet): images are resized so their shorter side is ``resize_size`` and
    centre-cropped to a square, as variable-size images cannot be batched. A split given as
    ``a+b`` is the concatenation of ``a`` and ``b``.
    """
    default_train, default_test = default_splits(name)
    splits = {}
    for role, split in (("train", train_split or default_train),
                        ("test", test_split or default_test)):
        providers: list[ImageProvider] = []
        labels = []
        for part in split_parts(split):
            src = open_tfds(name, part, data_dir, field, name_field)
            num_classes, names, shape = _features(src, name, resize_size)
            labels.append(_labels(src, name, part, data_dir, cache_dir, num_classes, field))
            providers.append(TfdsImages(src, shape, resize_size))
            version = str(src.dataset_info.version)
        images = providers[0] if len(providers) == 1 else ConcatImages(providers)
        splits[role] = RawSplit(images, np.concatenate(labels))
    return RawDataset(
        name=name,
        source="tfds",
        train=splits["train"],
        test=splits["test"],
        num_classes=num_classes,
        class_names=names,
        image_shape=splits["train"].images.shape,
        fingerprint=short_hash(
            "tfds",
            name,
            version,
            str(data_dir),
            len(splits["train"]),
            len(splits["test"]),
            resize_size,
        ),
    )


def load(cfg: ml_collections.ConfigDict) -> RawDataset:
    """The registry's loader for ``source=tfds`` (any name)."""
    return load_tfds(
        cfg.name,
        cfg.data_dir,
        cfg.cache_dir,
        train_split=cfg.train_split,
        test_split=cfg.test_split,
        resize_size=cfg.resize_size if cfg.name == "imagenet2012" else None,
    )
