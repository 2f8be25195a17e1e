"""Fashion-MNIST from the IDX files of Debian's ``dataset-fashion-mnist`` (``name=fashion_mnist``).

The ``.gz`` (or uncompressed) IDX files are parsed directly: Debian recompressed them, so TFDS's
builder rejects them on checksums.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import ml_collections
import numpy as np

from nlnoise.data.cache import short_hash
from nlnoise.data.schema import DataError
from nlnoise.data.sources.base import RawDataset, split_from_arrays

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

_HOWTO = (
    "Install the Debian package: `sudo apt-get install dataset-fashion-mnist` (files go to "
    f"{FASHION_MNIST_DIR}), or set dataset.data_dir to a directory holding "
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz (or uncompressed), or use dataset.source='tfds' after "
    "`tfds build fashion_mnist --data_dir=DIR`."
)
_REINSTALL = "Reinstall it: `sudo apt-get install --reinstall dataset-fashion-mnist`."


def read_idx(path: Path, expected_ndim: int, field: str = "dataset.data_dir") -> np.ndarray:
    """Reads one IDX file (optionally gzipped) of unsigned bytes into a uint8 array."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{field}: file not found: {path}. {_HOWTO}") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(
            f"{field}: cannot read {path} ({type(e).__name__}: {e}); the file is truncated or "
            f"corrupt. {_REINSTALL}"
        ) from None
    if len(raw) < 4:
        raise DataError(f"{field}: {path} is truncated ({len(raw)} bytes, no IDX header).")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim != expected_ndim:
        raise DataError(
            f"{field}: {path} is not an IDX file of {expected_ndim}-D unsigned bytes "
            f"(magic {raw[:4].hex()}, expected 0000080{expected_ndim})."
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{field}: {path} is truncated inside its header.")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    want = int(np.prod(dims))
    if len(raw) - header != want:
        raise DataError(
            f"{field}: {path} is truncated or padded: header says {dims} = {want} bytes of data, "
            f"found {len(raw) - header}. {_REINSTALL}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.exists():
            return candidate
    return directory / f"{stem}.gz"  # reported as missing by read_idx


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> RawDataset:
    """Fashion-MNIST (60,000 + 10,000 28x28x1) from an IDX directory (default: Debian's)."""
    directory = Path(data_dir or FASHION_MNIST_DIR).expanduser()
    if not directory.is_dir():
        raise DataError(f"dataset.data_dir: directory not found: {directory}. {_HOWTO}")
    splits = {}
    sizes = []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        img_path = _find_idx(directory, f"{prefix}-images-idx3-ubyte")
        lab_path = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
        images = read_idx(img_path, 3)
        labels = read_idx(lab_path, 1)
        if images.shape[1:] != (28, 28):
            raise DataError(
                f"dataset.data_dir: {img_path} holds images of shape {images.shape[1:]}, "
                "expected Fashion-MNIST's 28x28."
            )
        if len(images) != len(labels):
            raise DataError(
                f"dataset.data_dir: {img_path} has {len(images)} images but {lab_path} has "
                f"{len(labels)} labels."
            )
        splits[split] = split_from_arrays(
            images[..., None], labels, 10, f"dataset.data_dir ({lab_path.name})",
            hint="The file does not match this dataset's 10 classes.",
        )
        sizes.append((img_path.name, img_path.stat().st_size, lab_path.stat().st_size))
    return RawDataset(
        name="fashion_mnist",
        source="local",
        train=splits["train"],
        test=splits["test"],
        num_classes=10,
        class_names=FASHION_MNIST_CLASSES,
        image_shape=(28, 28, 1),
        fingerprint=short_hash("fashion_mnist-idx", str(directory), sizes),
    )


def load(cfg: ml_collections.ConfigDict) -> RawDataset:
    """The registry's loader: ``dataset.data_dir`` is the IDX directory."""
    return load_fashion_mnist(cfg.data_dir)
