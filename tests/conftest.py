"""Test-suite set-up: 8 simulated CPU devices, so sharding tests can build real meshes.

The flag must be set before jax initialises its backend; conftest is imported first.
Single-device tests are unaffected (jit places work on device 0).
"""

import os

import pytest

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()


# ---- small real datasets built from scikit-learn's digits, in the formats users bring -------

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _digits_arrays():
    """sklearn's digits as uint8 [N, 8, 8] (0..255) and int64 labels; rows < 1437 are train."""
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    return (np.round(d.images * (255.0 / 16.0)).astype(np.uint8), d.target.astype(np.int64))


def _write_digits_folder(root, per_class=(8, 3), rgb=False):
    """``root/{train,test}/<digit name>/<row>.png``: the first ``per_class`` digits of each class
    of the train and test rows. Returns ``{split: (rows, digit)}`` in the folder's order."""
    import numpy as np
    from PIL import Image

    images, labels = _digits_arrays()
    order = {}
    for split, lo, hi, n in (("train", 0, 1437, per_class[0]), ("test", 1437, 1797, per_class[1])):
        rows_all = []
        for c in np.argsort(DIGIT_NAMES):  # the folder order: sorted class names
            rows = lo + np.flatnonzero(labels[lo:hi] == c)[:n]
            folder = root / split / DIGIT_NAMES[c]
            folder.mkdir(parents=True)
            for r in rows:
                img = Image.fromarray(images[r])
                (img.convert("RGB") if rgb else img).save(folder / f"{r:04d}.png")
            rows_all += list(rows)
        order[split] = np.asarray(rows_all)
    return order


def _write_digits_npz(path, **replace):
    """An ``arrays`` npz of all digits ([N, 8, 8] images, class_names), arrays overridable."""
    import numpy as np

    images, labels = _digits_arrays()
    arrays = {"train_image": images[:1437], "train_label": labels[:1437],
              "test_image": images[1437:], "test_label": labels[1437:],
              "class_names": np.array(DIGIT_NAMES)}
    arrays.update(replace)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.fixture
def digits_arrays():
    """sklearn's digits: uint8 [1797, 8, 8] (0..255) and labels; rows < 1437 are train."""
    return _digits_arrays()


@pytest.fixture
def make_digits_folder():
    """``make(root, per_class=(8, 3), rgb=False)`` writes ``root/{train,test}/<digit name>/*.png``
    from real digits and returns ``{split: sklearn rows}`` in the folder's order."""
    return _write_digits_folder


@pytest.fixture
def make_digits_npz():
    """``make(path, **arrays)`` writes an ``arrays`` npz of the digits (None drops an array)."""
    return _write_digits_npz
