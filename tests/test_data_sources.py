"""Sources: local Fashion-MNIST / CIFAR-10 / digits, TFDS under tfds.testing.mock_data, errors."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
import pytest

import nlnoise.data as data
from nlnoise.data import sources

FMNIST = Path(sources.FASHION_MNIST_DIR)
CIFAR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10_jpeg.npz"

needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").exists(),
    reason=f"Fashion-MNIST IDX files absent from {FMNIST} (apt-get install dataset-fashion-mnist)",
)
needs_cifar = pytest.mark.skipif(
    not CIFAR.exists(), reason=f"{CIFAR} is absent (see ../shared/data/README.md)"
)


def _write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + np.ascontiguousarray(array, np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.fixture(scope="module")
def fmnist():
    return sources.load_fashion_mnist_local()


@pytest.fixture
def small_fmnist_dir(tmp_path, fmnist):
    """A directory of real Fashion-MNIST IDX files, cut to 100 train and 50 test images."""
    for prefix, split, n in (("train", fmnist.train, 100), ("t10k", fmnist.test, 50)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", split.images.images[:n, ..., 0])
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", split.labels[:n])
    return tmp_path


# ---- Fashion-MNIST ---------------------------------------------------------------------------


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
    raw = sources.load_fashion_mnist_local(small_fmnist_dir)
    assert len(raw.train) == 100 and len(raw.test) == 50
    assert np.array_equal(raw.train.images.images, fmnist.train.images.images[:100])


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
        sources.load_fashion_mnist_local(small_fmnist_dir)


@needs_fmnist
def test_fashion_mnist_truncated_gzip(small_fmnist_dir):
    path = small_fmnist_dir / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(data.DataError, match=r"truncated or corrupt"):
        sources.load_fashion_mnist_local(small_fmnist_dir)


@needs_fmnist
def test_fashion_mnist_truncated_idx_payload(small_fmnist_dir, fmnist):
    # A valid gzip whose IDX header promises more bytes than follow.
    labels = fmnist.train.labels[:100].astype(np.uint8)
    raw = struct.pack(">HBBI", 0, 8, 1, 100) + labels[:60].tobytes()
    (small_fmnist_dir / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(data.DataError, match=r"truncated or padded.*found 60"):
        sources.load_fashion_mnist_local(small_fmnist_dir)


@needs_fmnist
def test_fashion_mnist_wrong_image_shape(small_fmnist_dir, fmnist):
    _write_idx(
        small_fmnist_dir / "train-images-idx3-ubyte.gz",
        fmnist.train.images.images[:100, :27, :27, 0],
    )
    with pytest.raises(data.DataError, match=r"dataset.data_dir.*\(27, 27\).*28x28"):
        sources.load_fashion_mnist_local(small_fmnist_dir)


@needs_fmnist
def test_fashion_mnist_label_out_of_range(small_fmnist_dir, fmnist):
    labels = fmnist.train.labels[:100].copy()
    labels[7] = 12
    _write_idx(small_fmnist_dir / "train-labels-idx1-ubyte.gz", labels)
    with pytest.raises(data.DataError, match=r"outside \[0, 10\); first is 12 at index 7"):
        sources.load_fashion_mnist_local(small_fmnist_dir)


# ---- CIFAR-10 --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar():
    # Default cache (~/.cache/nlnoise or $NLNOISE_CACHE): the first run decodes ~10 s once.
    return sources.load_cifar10_local()


@pytest.fixture
def small_cifar_npz(tmp_path):
    """A real CIFAR-10 npz cut to 40 training and 20 test JPEGs."""
    with np.load(CIFAR) as z:
        out = {}
        for split, n in (("train", 40), ("test", 20)):
            off = z[f"{split}_offsets"]
            out[f"{split}_jpeg"] = z[f"{split}_jpeg"][: off[n]]
            out[f"{split}_offsets"] = off[: n + 1]
            out[f"{split}_label"] = z[f"{split}_label"][:n]
    path = tmp_path / "cifar10_jpeg.npz"
    np.savez(path, **out)
    return path


@needs_cifar
def test_cifar10_default_path_is_repo_relative():
    assert sources.default_cifar10_path().resolve() == CIFAR.resolve()


@needs_cifar
def test_cifar10_local_decodes_real_images(cifar):
    assert cifar.image_shape == (32, 32, 3) and cifar.class_names[3] == "cat"
    assert len(cifar.train) == 50_000 and len(cifar.test) == 10_000
    assert np.array_equal(np.bincount(cifar.train.labels), np.full(10, 5000))
    # The test split is grouped by class (see the data README).
    assert np.array_equal(cifar.test.labels, np.repeat(np.arange(10), 1000))
    imgs = cifar.train.images.take(np.arange(0, 50_000, 997))
    assert imgs.dtype == np.uint8 and 80 < imgs.mean() < 180 and imgs.std() > 30


@needs_cifar
def test_cifar10_cache_is_written_atomically_and_reused(small_cifar_npz, tmp_path):
    from PIL import Image

    cache = tmp_path / "cache"
    raw = sources.load_cifar10_local(small_cifar_npz.parent, cache)
    files = sorted(p.name for p in (cache / "cifar10").iterdir())
    assert len(files) == 2 and all(f.endswith("_images.npy") for f in files)  # no temp files
    with np.load(small_cifar_npz) as z:
        buf, off = z["train_jpeg"], z["train_offsets"]
        want = np.asarray(Image.open(io.BytesIO(buf[off[5] : off[6]].tobytes())).convert("RGB"))
    assert np.array_equal(raw.train.images.take(np.array([5]))[0], want)
    # A second load must read the cache rather than decode: poison it and look for the poison.
    path = next((cache / "cifar10").glob("*-train_images.npy"))
    arr = np.load(path)
    arr[:] = 7
    np.save(path, arr)
    again = sources.load_cifar10_local(small_cifar_npz, cache)
    assert isinstance(again.train.images.images, np.memmap)
    assert (again.train.images.take(np.arange(3)) == 7).all()


def test_cifar10_missing_file_names_the_path(tmp_path):
    with pytest.raises(data.DataError) as e:
        data.load({"name": "cifar10", "data_dir": str(tmp_path)})
    msg = str(e.value)
    assert str(tmp_path / "cifar10_jpeg.npz") in msg and "tfds build cifar10" in msg


@needs_cifar
def test_cifar10_truncated_npz(small_cifar_npz, tmp_path):
    bad = tmp_path / "trunc" / "cifar10_jpeg.npz"
    bad.parent.mkdir()
    bad.write_bytes(small_cifar_npz.read_bytes()[:5000])
    with pytest.raises(data.DataError, match=r"truncated or corrupt"):
        sources.load_cifar10_local(bad, tmp_path / "cache")


# ---- digits ----------------------------------------------------------------------------------


def test_digits_local():
    raw = sources.load_digits_local()
    assert raw.image_shape == (8, 8, 1)
    assert (len(raw.train), len(raw.test)) == (1437, 360)
    imgs = raw.train.images.images
    assert imgs.dtype == np.uint8 and imgs.max() == 255 and imgs.min() == 0
    assert set(np.unique(raw.test.labels)) == set(range(10))


# ---- config and validation -------------------------------------------------------------------


def test_unknown_config_key_is_named():
    with pytest.raises(data.DataError, match=r"dataset.trainsize: unknown key"):
        data.load({"name": "digits", "trainsize": 10})


def test_local_source_rejects_tfds_only_names():
    with pytest.raises(data.DataError, match=r"dataset.name.*svhn_cropped.*source='tfds'"):
        data.load({"name": "svhn_cropped", "source": "local"})


def test_default_config_has_every_documented_key():
    cfg = data.default_dataset_config()
    for key in (
        "name", "source", "data_dir", "cache_dir", "train_size", "subset_seed",
        "inlier_classes", "num_outliers", "num_known_outliers", "outlier_source",
        "num_test_outliers", "image_size", "mean_subtraction", "contrast_normalization",
        "eval_batch_size",
    ):  # fmt: skip
        assert key in cfg
        assert f"``{key}``" in data.__doc__


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
    ]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", root, flag_values=fv, sys_argv=argv)
    fv(argv)
    cfg = sources.resolve_config(fv.config.dataset)
    assert cfg.train_size == 5000 and cfg.inlier_classes == (0, 1, 2, 3, 4)
    assert cfg.contrast_normalization is True and cfg.outlier_source == "tfds:cifar100"
    assert sources.resolve_config({"inlier_classes": [1, 2]}).inlier_classes == (1, 2)


def test_array_images_reject_wrong_dtype_and_shape():
    with pytest.raises(data.DataError, match=r"outlier images: images must be uint8.*float32"):
        sources.ArrayImages(np.zeros((2, 8, 8, 1), np.float32), "outlier images")
    with pytest.raises(data.DataError, match=r"myfield: .*\[N, H, W, C\].*\(2, 8, 8\)"):
        sources.ArrayImages(np.zeros((2, 8, 8), np.uint8), "myfield")


# ---- TFDS (tfds.testing.mock_data) ------------------------------------------------------------


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


def test_tfds_missing_dataset_says_how_to_prepare(tmp_path):
    where = tmp_path / "empty_tfds"
    with pytest.raises(data.DataError) as e:
        data.load({"name": "cifar10", "source": "tfds", "data_dir": str(where)})
    msg = str(e.value)
    assert "dataset.data_dir" in msg and str(where) in msg
    assert "tfds build cifar10 --data_dir=DIR" in msg and "tensorflow" in msg


def test_tfds_imagenet_howto_mentions_manual_download():
    assert "downloads/manual" in sources.tfds_howto("imagenet2012", None)
