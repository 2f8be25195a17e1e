"""What every source returns: image providers and the clean splits built on them.

A source yields a :class:`RawDataset`: a train and a test :class:`RawSplit`, each an *image
provider* (random access to uint8 ``[H, W, C]`` images) plus the source's label vector. Nothing
here knows about noise, outliers or preprocessing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

import nlnoise
from nlnoise import noise
from nlnoise.data.schema import DataError


class ImageProvider(Protocol):
    """Random access to uint8 ``[H, W, C]`` images of one fixed shape."""

    shape: tuple[int, int, int]

    def __len__(self) -> int: ...

    def take(self, rows: np.ndarray) -> np.ndarray:
        """uint8 ``[len(rows), H, W, C]``."""
        ...


class ArrayImages:
    """Images held in a numpy array (or a read-only memmap of a cache file)."""

    def __init__(self, images: np.ndarray, field: str = "images"):
        self.images = check_images(images, field)
        self.shape = tuple(int(d) for d in self.images.shape[1:])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        # Sorted gathers are much faster on a memmap; restore the order afterwards.
        if rows.size > 1 and np.any(rows[1:] < rows[:-1]):
            order = np.argsort(rows, kind="stable")
            out = np.empty((rows.size, *self.shape), np.uint8)
            out[order] = self.images[rows[order]]
            return out
        return np.asarray(self.images[rows])


class ConcatImages:
    """Several providers of one image shape read as one (e.g. SVHN's ``train+extra``)."""

    def __init__(self, parts: Sequence[ImageProvider]):
        shapes = {tuple(p.shape) for p in parts}
        if len(shapes) != 1:
            raise DataError(f"dataset.train_split: the parts have different image shapes "
                            f"{sorted(shapes)}; combine splits of one dataset only.")
        self.parts = tuple(parts)
        self.shape = tuple(parts[0].shape)
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((rows.size, *self.shape), np.uint8)
        for p in np.unique(part):
            sel = part == p
            out[sel] = self.parts[p].take(rows[sel] - self.starts[p])
        return out


def check_images(images: Any, field: str) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` or a DataError naming ``field``."""
    arr = images if isinstance(images, np.ndarray) else np.asarray(images)
    if arr.dtype != np.uint8:
        raise DataError(
            f"{field}: images must be uint8 [N, H, W, C] (0..255), got dtype {arr.dtype}. "
            "Convert with np.clip(x, 0, 255).astype(np.uint8) (scale [0, 1] floats by 255 first)."
        )
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3) or min(arr.shape[1:3], default=0) < 1:
        raise DataError(
            f"{field}: images must have shape [N, H, W, C] with C in (1, 3), got {arr.shape}."
        )
    return arr


@dataclasses.dataclass(frozen=True, eq=False)
class RawSplit:
    """One split: images plus the source's labels in ``[0, num_classes)``."""

    images: ImageProvider
    labels: np.ndarray

    def __post_init__(self):
        if len(self.images) != len(self.labels):
            raise DataError(
                f"dataset: {len(self.images)} images but {len(self.labels)} labels in one split."
            )

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True, eq=False)
class RawDataset:
    """A dataset as read from its source, with the source's own labels."""

    name: str
    source: str
    train: RawSplit
    test: RawSplit
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    # Identifies the data (file, version, split sizes) for cache keys.
    fingerprint: str


def split_from_arrays(images: Any, labels: Any, num_classes: int, field: str,
                      hint: str = "The file does not match this dataset's classes.") -> RawSplit:
    """A split of in-memory images and labels, both checked (``field`` names them in errors)."""
    return RawSplit(
        ArrayImages(images, f"{field} images"),
        noise.check_labels(labels, num_classes, f"{field} labels", error=DataError,
                           integral_floats=False, hint=hint),
    )


def resize_center_square(image: np.ndarray, size: int) -> np.ndarray:
    """Shorter side to ``size`` (bilinear), then the centre ``size x size`` square."""
    from PIL import Image

    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    squeeze = image.shape[2] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image)
    arr = np.asarray(pil.resize((nw, nh), Image.BILINEAR))
    if squeeze:
        arr = arr[..., None]
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(arr[top : top + size, left : left + size])


def pil_to_array(image: Any, mode: str, size: int | None = None) -> np.ndarray:
    """A Pillow image as uint8 ``[H, W, C]`` in ``mode`` (``"RGB"`` or ``"L"``), optionally
    resized with :func:`resize_center_square`."""
    arr = np.asarray(image.convert(mode))
    if arr.ndim == 2:
        arr = arr[..., None]
    if size is not None:
        arr = resize_center_square(arr, size)
    return arr


def repo_root() -> Path:
    """The checkout that holds the ``nlnoise`` package (``<repo>/nlnoise/__init__.py``)."""
    return Path(nlnoise.__file__).resolve().parents[1]
