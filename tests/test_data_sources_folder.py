"""The folder source (one subfolder per class), on PNGs written from real digits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import DIGIT_NAMES

import nlnoise.data as data
from nlnoise.data.sources import folder


def _cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


@pytest.fixture
def digits_dir(tmp_path, make_digits_folder):
    root = tmp_path / "digits"
    order = make_digits_folder(root)
    return root, order


def test_classes_labels_and_pixels_follow_the_folders(digits_dir, digits_arrays, tmp_path):
    root, order = digits_dir
    images, labels = digits_arrays
    raw = folder.load_folder(root, tmp_path / "cache")
    assert raw.class_names == tuple(sorted(DIGIT_NAMES)) and raw.num_classes == 10
    assert raw.image_shape == (8, 8, 1)  # every PNG is grayscale
    assert (len(raw.train), len(raw.test)) == (80, 30)
    # Label k is the k-th sorted folder name: "eight" is 0, "zero" is 9.
    names = np.array(raw.class_names)
    assert list(names[raw.train.labels]) == [DIGIT_NAMES[d] for d in labels[order["train"]]]
    np.testing.assert_array_equal(raw.train.images.take(np.arange(80))[..., 0],
                                  images[order["train"]])
    np.testing.assert_array_equal(raw.test.images.take(np.arange(30))[..., 0],
                                  images[order["test"]])


def test_decoded_folder_is_cached_and_a_changed_file_is_read_again(digits_dir, tmp_path):
    root, _ = digits_dir
    cache = tmp_path / "cache"
    folder.load_folder(root, cache)
    files = _cache_files(cache)
    assert len(files) == 2 and all(f.endswith("_images.npy") for f in files)  # no temp files
    path = next((cache / "folder").glob("*-train_images.npy"))
    arr = np.load(path)
    arr[:] = 7
    np.save(path, arr)
    again = folder.load_folder(root, cache)
    assert isinstance(again.train.images.images, np.memmap)
    assert (again.train.images.take(np.arange(3)) == 7).all()  # read from the cache
    png = next((root / "train" / "one").iterdir())
    os.utime(png, ns=(0, 10**18))
    fresh = folder.load_folder(root, cache)
    assert not (fresh.train.images.take(np.arange(80)) == 7).all()  # a new key: decoded again


def test_rgb_images_give_three_channels_and_image_size_resizes(tmp_path, make_digits_folder):
    root = tmp_path / "rgb"
    make_digits_folder(root, per_class=(2, 1), rgb=True)
    raw = folder.load_folder(root, tmp_path / "cache")
    assert raw.image_shape == (8, 8, 3)
    small = folder.load_folder(root, tmp_path / "cache", image_size=6)
    assert small.image_shape == (6, 6, 3) and small.fingerprint != raw.fingerprint


def test_mixed_sizes_need_image_size(digits_dir, tmp_path):
    from PIL import Image

    root, _ = digits_dir
    odd = root / "train" / "two" / "big.png"
    Image.new("L", (12, 10), 128).save(odd)
    with pytest.raises(data.DataError) as e:
        folder.load_folder(root, tmp_path / "cache")
    assert "dataset.image_size" in str(e.value) and "big.png is 12x10" in str(e.value)
    assert _cache_files(tmp_path / "cache") == []
    raw = folder.load_folder(root, tmp_path / "cache", image_size=8)
    assert raw.image_shape == (8, 8, 1) and len(raw.train) == 81


def _empty_class(root: Path) -> str:
    (root / "train" / "extra").mkdir()
    (root / "train" / "extra" / "notes.txt").write_text("not an image")
    return r"class folder .*train/extra holds no image file.*add images or remove the folder"


def _one_class(root: Path) -> str:
    for d in (root / "train").iterdir():
        if d.name != "one":
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
    return r"train has 1 class folders \('one',\); a classifier needs at least 2"


def _no_classes(root: Path) -> str:
    import shutil

    shutil.rmtree(root / "train")
    (root / "train").mkdir()
    (root / "train" / "loose.png").write_bytes(b"")  # files outside class folders do not count
    return r"train has 0 class folders \(\); a classifier needs at least 2\. Lay it out as"


def _unreadable(root: Path) -> str:
    (root / "train" / "one" / "9999.png").write_bytes(b"this is not a PNG")
    return r"cannot read the image .*train/one/9999.png .*replace or delete the file"


def _truncated(root: Path) -> str:
    png = sorted((root / "test" / "two").iterdir())[0]
    png.write_bytes(png.read_bytes()[:60])  # the header survives, the pixels do not
    return rf"cannot (read|decode) the image .*{png.name}.*replace or delete the file"


def _no_test(root: Path) -> str:
    (root / "test").rename(root / "val")
    return r"no folder .*/test\. Lay it out as DIR/train/<class>/"


def _unknown_test_class(root: Path) -> str:
    (root / "test" / "two").rename(root / "test" / "deux")
    return r"test has class folders \['deux'\] that .*train lacks"


@pytest.mark.parametrize("break_it", [_empty_class, _one_class, _no_classes, _unreadable,
                                      _truncated,
                                      _no_test, _unknown_test_class])
def test_bad_folders_are_named_with_the_fix_and_nothing_is_cached(digits_dir, tmp_path,
                                                                  break_it):
    root, _ = digits_dir
    message = break_it(root)
    with pytest.raises(data.DataError, match=message) as e:
        data.load({"name": "folder", "data_dir": str(root), "cache_dir": str(tmp_path / "c")})
    assert str(e.value).startswith("dataset.")
    assert _cache_files(tmp_path / "c") == []


def test_folder_needs_a_directory(tmp_path):
    with pytest.raises(data.DataError, match=r"dataset.data_dir: name=folder needs"):
        data.load({"name": "folder"})
    with pytest.raises(data.DataError, match=r"no directory .*nope"):
        data.load({"name": "folder", "data_dir": str(tmp_path / "nope")})


def test_hidden_and_non_image_files_are_skipped(digits_dir, tmp_path):
    root, _ = digits_dir
    (root / "train" / "one" / ".DS_Store").write_bytes(b"\0\0")
    (root / "train" / "one" / "README.txt").write_text("digits")
    (root / "train" / ".cache").mkdir()
    assert len(folder.load_folder(root, tmp_path / "cache").train) == 80


def test_files_in_nested_folders_are_in_path_order(tmp_path, make_digits_folder):
    root = tmp_path / "d"
    make_digits_folder(root, per_class=(2, 1))
    one = root / "train" / "one"
    first, last = sorted(one.glob("*.png"))
    first.rename(one / "b.png")
    (one / "a").mkdir()
    last.rename(one / "a" / "z.png")  # os.walk lists b.png first; path order puts a/z.png first
    classes, files, labels = folder.list_split(root, "train")
    ones = [f.relative_to(one).as_posix() for f, k in zip(files, labels, strict=True)
            if classes[k] == "one"]
    assert ones == ["a/z.png", "b.png"]
