"""Image arrays in one ``.npz`` file: a user's own data (``name=arrays``) and CIFAR-10's JPEG npz
(``name=cifar10``), which is the same format with JPEG-encoded images.

Per split (``train``, ``test``) the file holds ``{split}_label`` (integer ``[N]``) and either
``{split}_image`` (uint8 ``[N, H, W, C]`` or ``[N, H, W]``) or ``{split}_jpeg`` (every encoded
image concatenated, uint8) with ``{split}_offsets`` (``[N + 1]``; image ``i`` is
``jpeg[off[i]:off[i+1]]``). An optional ``class_names`` (strings ``[K]``) names the classes.
Encoded images are decoded once with Pillow and cached as ``.npy`` (read back memory-mapped);
nothing is cached until both splits have been read and checked.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from nlnoise import noise
from nlnoise.data.cache import cache_root, load_cached_splits, save_splits, short_hash
from nlnoise.data.schema import DataError
from nlnoise.data.sources.base import ArrayImages, RawDataset, RawSplit, pil_to_array, repo_root

CIFAR10_FILE = "cifar10_jpeg.npz"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
ARRAYS_HOWTO = (
    "The file needs train_image, train_label, test_image and test_label (uint8 images "
    "[N, H, W, C] or [N, H, W], integer labels) and may hold class_names; see docs/data.md "
    "('Bring your own data')."
)
SPLITS = ("train", "test")


def default_cifar10_path() -> Path:
    """``<repo>/../shared/data/cifar10_jpeg.npz``."""
    return repo_root().parent / "shared" / "data" / CIFAR10_FILE


def resolve_cifar10_path(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` if it is the file, ``data_dir/cifar10_jpeg.npz`` if a directory."""
    if data_dir is None:
        return default_cifar10_path()
    path = Path(data_dir).expanduser()
    return path / CIFAR10_FILE if path.is_dir() else path


def _cifar_howto(path: Path) -> str:
    return (
        f"Tried {path}. Put {CIFAR10_FILE} there (its format is in ../shared/data/README.md: "
        "JPEG bytes + offsets + labels per split) or set dataset.data_dir to the file or its "
        "directory; or use dataset.source='tfds' after `tfds build cifar10 --data_dir=DIR` "
        "(needs tensorflow installed and internet)."
    )


def decode_images(buf: np.ndarray, offsets: np.ndarray, field: str,
                  shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """Decodes concatenated image files (JPEG, PNG, ...) into uint8 ``[N, H, W, C]`` (Pillow,
    one core). Without ``shape``, the first image sets it (grayscale stays one channel)."""
    from PIL import Image

    n = len(offsets) - 1
    out = None
    mode = None if shape is None else ("RGB" if shape[2] == 3 else "L")
    for i in range(n):
        data = buf[offsets[i] : offsets[i + 1]].tobytes()
        try:
            image = Image.open(io.BytesIO(data))
            if mode is None:
                mode = "L" if image.mode in ("1", "L") else "RGB"
            img = pil_to_array(image, mode)
        except Exception as e:
            raise DataError(f"{field}: image {i} is not a readable image file ({e}).") from None
        if out is None:
            shape = shape or img.shape
            out = np.empty((n, *shape), np.uint8)
        if img.shape != shape:
            raise DataError(f"{field}: image {i} decodes to shape {img.shape}, expected {shape}; "
                            "store images of one size.")
        out[i] = img
    return np.empty((0, *(shape or (1, 1, 1))), np.uint8) if out is None else out


def _labels(z, split: str, num_classes: int | None, field: str) -> np.ndarray:
    labels = z[f"{split}_label"]
    if labels.ndim != 1 or labels.size == 0:
        raise DataError(f"{field}: {split}_label has shape {labels.shape}; it must be a non-empty "
                        "1-D vector with one class index per image.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{field}: {split}_label has dtype {labels.dtype}; class indices must be "
                        "integers: save labels.astype(np.int64).")
    k = num_classes if num_classes is not None else np.iinfo(np.int64).max
    return noise.check_labels(labels, k, f"{field} {split}_label", error=DataError,
                              hint="Labels must be class indices 0..K-1 (K = len(class_names)).")


def _raw_images(z, split: str, n: int, field: str) -> np.ndarray:
    images = z[f"{split}_image"]
    if images.dtype != np.uint8:
        raise DataError(f"{field}: {split}_image has dtype {images.dtype}, expected uint8 "
                        "(0..255); save np.clip(x, 0, 255).astype(np.uint8) (scale [0, 1] "
                        "floats by 255 first).")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"{field}: {split}_image has shape {images.shape}, expected [N, H, W, C] "
                        "with C in (1, 3), or [N, H, W].")
    if len(images) != n:
        raise DataError(f"{field}: {split}_image holds {len(images)} images but {split}_label "
                        f"{n} labels; give one label per image.")
    return images


def _offsets(z, split: str, n: int, field: str) -> np.ndarray:
    offsets = z[f"{split}_offsets"].astype(np.int64)
    if len(offsets) != n + 1 or np.any(np.diff(offsets) <= 0) or offsets[0] < 0:
        raise DataError(f"{field}: {split}_offsets must be increasing with len({split}_label)+1 "
                        "entries (image i is jpeg[off[i]:off[i+1]]).")
    return offsets


def _class_names(z, field: str) -> tuple[str, ...]:
    names = z["class_names"]
    if names.ndim != 1 or names.dtype.kind not in "US" or len(names) < 2:
        raise DataError(f"{field}: class_names must be a 1-D array of at least 2 strings, got "
                        f"{names.dtype}{list(names.shape)}; save np.array(['cat', 'dog', ...]).")
    return tuple(str(c) for c in names)


def _check_members(z, field: str, howto: str) -> None:
    for split in SPLITS:
        image = [f"{split}_image"] if f"{split}_image" in z.files else [f"{split}_jpeg",
                                                                         f"{split}_offsets"]
        missing = [a for a in (f"{split}_label", *image) if a not in z.files]
        if missing:
            raise DataError(f"{field}: the npz lacks {missing} (it has {sorted(z.files)}). {howto}")


def _decode_cached(z, offsets: dict[str, np.ndarray], paths: dict[str, Path],
                   shape: tuple[int, int, int] | None, raw: dict[str, np.ndarray],
                   field: str) -> dict[str, np.ndarray]:
    """The encoded splits' images: from the cache, or decoded, checked against the ``raw``
    splits' shape and only then cached."""
    cached = load_cached_splits(paths, {s: len(o) - 1 for s, o in offsets.items()})
    if cached is not None and all(shape in (None, a.shape[1:]) for a in cached.values()):
        return cached
    decoded = {}
    for split, off in offsets.items():
        buf = z[f"{split}_jpeg"]
        if buf.size < off[-1]:
            raise DataError(f"{field}: {split}_jpeg holds {buf.size} bytes but the offsets need "
                            f"{off[-1]}; the file is truncated.")
        decoded[split] = decode_images(buf, off, f"{field} {split}", shape)
    _check_shapes({**raw, **decoded}, field, shape)
    return save_splits(paths, decoded)


def load_npz(path: Path, *, name: str, field: str, howto: str, cache_dir: Any, cache_tag: str,
             key: str, class_names: tuple[str, ...] | None = None,
             shape: tuple[int, int, int] | None = None) -> RawDataset:
    """Reads ``path`` (format in the module docstring) into a :class:`RawDataset`.

    Every array is checked, and encoded images decoded, before any cache file is written.
    ``class_names`` and ``shape`` fix what the file must hold (CIFAR-10); ``key`` names the
    cache files ``<cache>/<cache_tag>/<key>-<split>_images.npy`` and is the fingerprint.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            _check_members(z, field, howto)
            names = class_names
            if names is None and "class_names" in z.files:
                names = _class_names(z, field)
            labels = {s: _labels(z, s, None if names is None else len(names), field)
                      for s in SPLITS}
            if names is None:
                names = tuple(str(i) for i in range(1 + max(int(v.max()) for v in
                                                            labels.values())))
            images = {s: _raw_images(z, s, len(labels[s]), field) for s in SPLITS
                      if f"{s}_image" in z.files}
            offsets = {s: _offsets(z, s, len(labels[s]), field) for s in SPLITS
                       if s not in images}
            if offsets:
                cache = cache_root(cache_dir) / cache_tag
                paths = {s: cache / f"{key}-{s}_images.npy" for s in offsets}
                images.update(_decode_cached(z, offsets, paths, shape, images, field))
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{field}: cannot read the npz ({type(e).__name__}: {e}); it is truncated "
                        f"or corrupt. {howto}") from None
    _check_shapes(images, field, shape)
    splits = {s: RawSplit(ArrayImages(images[s], f"{field} {s}_image"), labels[s]) for s in SPLITS}
    return RawDataset(name=name, source="local", train=splits["train"], test=splits["test"],
                      num_classes=len(names), class_names=tuple(names),
                      image_shape=splits["train"].images.shape, fingerprint=key)


def _check_shapes(images: dict[str, np.ndarray], field: str, shape) -> None:
    shapes = {s: tuple(a.shape[1:]) for s, a in images.items() if len(a)}
    want = shape or next(iter(shapes.values()), None)
    bad = {s: v for s, v in shapes.items() if v != want}
    if bad:
        raise DataError(f"{field}: images of shape {want} and {bad}; every image of both splits "
                        "must have one shape [H, W, C].")


def load_cifar10(data_dir: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None) -> RawDataset:
    """CIFAR-10 from ``cifar10_jpeg.npz``: decoded once, then read from an npy cache (mmap)."""
    path = resolve_cifar10_path(data_dir)
    if not path.is_file():
        raise DataError(f"dataset.data_dir: CIFAR-10 file not found. {_cifar_howto(path)}")
    stat = path.stat()
    return load_npz(path, name="cifar10", field=f"dataset.data_dir ({path})",
                    howto=_cifar_howto(path), cache_dir=cache_dir, cache_tag="cifar10",
                    key=short_hash("cifar10-jpeg-v1", stat.st_size, stat.st_mtime_ns),
                    class_names=CIFAR10_CLASSES, shape=(32, 32, 3))


def load_arrays(path: str | os.PathLike | None,
                cache_dir: str | os.PathLike | None = None) -> RawDataset:
    """A user's ``.npz`` of images and labels (format in the module docstring)."""
    if path is None:
        raise DataError(f"dataset.data_dir: name=arrays needs the path of an .npz file. "
                        f"{ARRAYS_HOWTO}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"dataset.data_dir: no file at {file}; point it at the .npz. "
                        f"{ARRAYS_HOWTO}")
    stat = file.stat()
    return load_npz(file, name="arrays", field=f"dataset.data_dir ({file})", howto=ARRAYS_HOWTO,
                    cache_dir=cache_dir, cache_tag="arrays",
                    key=short_hash("arrays-v1", str(file.resolve()), stat.st_size,
                                   stat.st_mtime_ns))


def load(cfg: ml_collections.ConfigDict) -> RawDataset:
    """The registry's loader for ``name=arrays``."""
    return load_arrays(cfg.data_dir, cfg.cache_dir)


def load_cifar10_cfg(cfg: ml_collections.ConfigDict) -> RawDataset:
    """The registry's loader for ``name=cifar10`` (local)."""
    return load_cifar10(cfg.data_dir, cfg.cache_dir)
