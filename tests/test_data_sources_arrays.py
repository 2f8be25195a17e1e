"""The npz source: a user's image arrays (``name=arrays``) and CIFAR-10's JPEG npz, real data."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

import nlnoise.data as data
from nlnoise.data.sources import arrays

CIFAR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10_jpeg.npz"
needs_cifar = pytest.mark.skipif(
    not CIFAR.exists(), reason=f"{CIFAR} is absent (see ../shared/data/README.md)"
)


def _cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


# ---- arrays ----------------------------------------------------------------------------------


def test_arrays_npz_round_trips_images_labels_and_class_names(tmp_path, make_digits_npz,
                                                              digits_arrays):
    images, labels = digits_arrays
    raw = arrays.load_arrays(make_digits_npz(tmp_path / "d.npz"), tmp_path / "cache")
    assert raw.name == "arrays" and raw.image_shape == (8, 8, 1)  # [N, H, W] gets a channel
    assert raw.class_names[3] == "three" and raw.num_classes == 10
    np.testing.assert_array_equal(raw.train.labels, labels[:1437])
    np.testing.assert_array_equal(raw.test.images.take(np.array([0, 5]))[..., 0],
                                  images[[1437, 1442]])
    assert _cache_files(tmp_path / "cache") == []  # plain arrays need no decoding cache


def test_arrays_without_class_names_are_numbered(tmp_path, make_digits_npz):
    raw = arrays.load_arrays(make_digits_npz(tmp_path / "d.npz", class_names=None))
    assert raw.class_names == tuple("0123456789")


def test_encoded_images_are_decoded_once_and_cached(tmp_path, make_digits_npz, digits_arrays):
    from PIL import Image

    images, _ = digits_arrays
    blobs = []
    for img in images[:1437]:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")  # lossless, so pixels must match
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([b.size for b in blobs])])
    path = make_digits_npz(tmp_path / "enc.npz", train_image=None,
                           train_jpeg=np.concatenate(blobs), train_offsets=offsets)
    cache = tmp_path / "cache"
    raw = data.load({"name": "arrays", "data_dir": str(path), "cache_dir": str(cache),
                     "mean_subtraction": False})
    np.testing.assert_array_equal(raw.train.get_batch(np.arange(3))["image"][..., 0],
                                  images[raw.train.rows[:3]])
    (cached,) = (cache / "arrays").iterdir()
    assert cached.name.endswith("-train_images.npy")
    again = arrays.load_arrays(path, cache)
    assert isinstance(again.train.images.images, np.memmap)


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        ({"test_label": None}, r"lacks \['test_label'\].*docs/data.md"),
        ({"train_image": None}, r"lacks \['train_jpeg', 'train_offsets'\]"),
        ({"train_image": np.zeros((1437, 8, 8), np.float32)},
         r"train_image has dtype float32, expected uint8.*astype\(np.uint8\)"),
        ({"train_label": np.zeros(1437, np.float64)},
         r"train_label has dtype float64.*astype\(np.int64\)"),
        ({"train_label": np.full(1437, 10)},
         r"train_label: 1437 labels outside \[0, 10\).*len\(class_names\)"),
        ({"train_label": np.zeros(1000, np.int64)},
         r"train_image holds 1437 images but train_label 1000 labels"),
        ({"test_image": np.zeros((360, 9, 9), np.uint8)}, r"images of shape .*one shape"),
        ({"train_image": np.zeros((1437, 8, 8, 2), np.uint8)}, r"C in \(1, 3\)"),
        ({"class_names": np.arange(10)}, r"class_names must be a 1-D array of at least 2 strings"),
    ],
)
def test_bad_npz_is_named_with_the_fix(tmp_path, make_digits_npz, replace, message):
    path = make_digits_npz(tmp_path / "bad.npz", **replace)
    with pytest.raises(data.DataError, match=message) as e:
        data.load({"name": "arrays", "data_dir": str(path), "cache_dir": str(tmp_path / "c")})
    assert str(path) in str(e.value)
    assert _cache_files(tmp_path / "c") == []


def test_arrays_need_an_npz_path(tmp_path):
    with pytest.raises(data.DataError, match=r"dataset.data_dir: name=arrays needs .*npz"):
        data.load({"name": "arrays"})
    with pytest.raises(data.DataError, match=r"no file at .*nope.npz; point it at the .npz"):
        data.load({"name": "arrays", "data_dir": str(tmp_path / "nope.npz")})


def test_truncated_arrays_npz(tmp_path, make_digits_npz):
    path = make_digits_npz(tmp_path / "d.npz")
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(data.DataError, match=r"cannot read the npz.*truncated or corrupt"):
        arrays.load_arrays(path)


# ---- CIFAR-10 --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar():
    # Default cache (~/.cache/nlnoise or $NLNOISE_CACHE): the first run decodes ~10 s once.
    return arrays.load_cifar10()


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
    assert arrays.default_cifar10_path().resolve() == CIFAR.resolve()


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
    raw = arrays.load_cifar10(small_cifar_npz.parent, cache)
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
    again = arrays.load_cifar10(small_cifar_npz, cache)
    assert isinstance(again.train.images.images, np.memmap)
    assert (again.train.images.take(np.arange(3)) == 7).all()


@needs_cifar
def test_rejected_cifar10_file_leaves_no_decoded_cache(small_cifar_npz, tmp_path):
    with np.load(small_cifar_npz) as z:
        out = {k: z[k] for k in z.files}
    out["test_label"] = out["test_label"].astype(np.int64)
    out["test_label"][3] = 12  # the test split is rejected after the train split was read
    np.savez(small_cifar_npz, **out)
    with pytest.raises(data.DataError, match=r"test_label: 1 labels outside \[0, 10\)"):
        arrays.load_cifar10(small_cifar_npz, tmp_path / "cache")
    assert _cache_files(tmp_path / "cache") == []


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
        arrays.load_cifar10(bad, tmp_path / "cache")


@needs_cifar
def test_cifar10_corrupt_jpeg_is_named(small_cifar_npz, tmp_path):
    with np.load(small_cifar_npz) as z:
        out = {k: z[k].copy() for k in z.files}
    off = out["train_offsets"]
    out["train_jpeg"][off[4] : off[4] + 20] = 0  # image 4 loses its JPEG header
    np.savez(small_cifar_npz, **out)
    with pytest.raises(data.DataError, match=r"train: image 4 is not a readable image"):
        arrays.load_cifar10(small_cifar_npz, tmp_path / "cache")
    assert _cache_files(tmp_path / "cache") == []
