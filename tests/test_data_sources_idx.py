"""The Fashion-MNIST IDX source: real files, small real copies, and every way a file can be bad."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

import nlnoise.data as data
from nlnoise.data.sources import idx

FMNIST = Path(idx.FASHION_MNIST_DIR)

needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").exists(),
    reason=f"Fashion-MNIST IDX files absent from {FMNIST} (apt-get install dataset-fashion-mnist)",
)


def _write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + np.ascontiguousarray(array, np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.fixture(scope="module")
def fmnist():
    return idx.load_fashion_mnist()


@pytest.fixture
def small_fmnist_dir(tmp_path, fmnist):
    """A directory of real Fashion-MNIST IDX files, cut to 100 train and 50 test images."""
    for prefix, split, n in (("train", fmnist.train, 100), ("t10k", fmnist.test, 50)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", split.images.images[:n, ..., 0])
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", split.labels[:n])
    return tmp_path


@needs_fmnist
def test_fashion_mnist_local_reads_the_idx_files(fmnist):
    assert fmnist.image_shape == (28, 28, 1)
    assert len(fmnist.train) == 60_000 and len(fmnist.test) == 10_000
    assert np.array_equal(np.bincount(fmnist.train.labels), np.full(10, 6000))
    # The first training image of Fashion-MNIST is an ankle boot (class 9).
    assert fmnist.train.labels[0] == 9 and fmnist.class_names[9] == "Ankle boot"
    img = fmnist.train.images.take(np.array([0]))
    assert img.dtype == np.uint8 and img.shape == (1, 28, 28, 1) and img.max() > 200


@needs_fmnist
def test_fashion_mnist_small_copy_round_trips(small_fmnist_dir, fmnist):
    raw = idx.load_fashion_mnist(small_fmnist_dir)
    assert len(raw.train) == 100 and len(raw.test) == 50
    assert np.array_equal(raw.train.images.images, fmnist.train.images.images[:100])


@needs_fmnist
def test_uncompressed_idx_files_are_read_too(small_fmnist_dir, fmnist):
    gz = small_fmnist_dir / "t10k-labels-idx1-ubyte.gz"
    _write_idx(small_fmnist_dir / "t10k-labels-idx1-ubyte", fmnist.test.labels[:50], False)
    gz.unlink()
    np.testing.assert_array_equal(idx.load_fashion_mnist(small_fmnist_dir).test.labels,
                                  fmnist.test.labels[:50])


def test_fashion_mnist_missing_dir_says_how_to_install(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(data.DataError) as e:
        data.load({"name": "fashion_mnist", "data_dir": str(missing)})
    msg = str(e.value)
    assert "dataset.data_dir" in msg and str(missing) in msg
    assert "apt-get install dataset-fashion-mnist" in msg


@needs_fmnist
def test_fashion_mnist_missing_file_names_it(small_fmnist_dir):
    (small_fmnist_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataError, match=r"t10k-labels-idx1-ubyte.gz.*apt-get install"):
        idx.load_fashion_mnist(small_fmnist_dir)


@needs_fmnist
def test_fashion_mnist_truncated_gzip(small_fmnist_dir):
    path = small_fmnist_dir / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(data.DataError, match=r"truncated or corrupt.*--reinstall"):
        idx.load_fashion_mnist(small_fmnist_dir)


@needs_fmnist
def test_fashion_mnist_truncated_idx_payload(small_fmnist_dir, fmnist):
    # A valid gzip whose IDX header promises more bytes than follow.
    labels = fmnist.train.labels[:100].astype(np.uint8)
    raw = struct.pack(">HBBI", 0, 8, 1, 100) + labels[:60].tobytes()
    (small_fmnist_dir / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(data.DataError, match=r"truncated or padded.*found 60"):
        idx.load_fashion_mnist(small_fmnist_dir)


@needs_fmnist
def test_fashion_mnist_wrong_image_shape(small_fmnist_dir, fmnist):
    _write_idx(
        small_fmnist_dir / "train-images-idx3-ubyte.gz",
        fmnist.train.images.images[:100, :27, :27, 0],
    )
    with pytest.raises(data.DataError, match=r"dataset.data_dir.*\(27, 27\).*28x28"):
        idx.load_fashion_mnist(small_fmnist_dir)


@needs_fmnist
def test_fashion_mnist_label_out_of_range(small_fmnist_dir, fmnist):
    labels = fmnist.train.labels[:100].copy()
    labels[7] = 12
    _write_idx(small_fmnist_dir / "train-labels-idx1-ubyte.gz", labels)
    with pytest.raises(data.DataError, match=r"outside \[0, 10\); first is 12 at index 7"):
        idx.load_fashion_mnist(small_fmnist_dir)


def test_not_an_idx_file(tmp_path):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(data.DataError, match=r"not an IDX file of 1-D unsigned bytes"):
        idx.read_idx(path, 1)
