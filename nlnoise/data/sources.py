"""Raw image sources: local files (Fashion-MNIST IDX, CIFAR-10 JPEG npz, scikit-learn digits)
and TFDS ``data_source`` (ArrayRecord), all behind one small interface.

A source yields a :class:`RawDataset`: a train and a test :class:`RawSplit`, each an *image
provider* (random access to uint8 ``[H, W, C]`` images, batched or one at a time) plus the
clean label vector. Nothing here knows about noise, outliers or preprocessing.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import struct
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import ml_collections
import numpy as np

import nlnoise


class DataError(ValueError):
    """Bad data or a bad ``dataset`` config; the message names the field and the fix."""


# --------------------------------------------------------------------------------------------
# Config schema

LOCAL_NAMES = ("fashion_mnist", "cifar10", "digits")
TFDS_NAMES = ("cifar10", "svhn_cropped", "imagenet2012", "fashion_mnist", "cifar100")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
CIFAR10_FILE = "cifar10_jpeg.npz"


def default_dataset_config() -> ml_collections.ConfigDict:
    """The ``dataset`` sub-config with every key at its default (see ``nlnoise.data``).

    Keys that default to None are typed placeholders, so ``--config.dataset.KEY=VALUE`` works
    on the command line (``config_flags`` cannot infer the type of a plain None).
    """
    ph = ml_collections.config_dict.placeholder
    return ml_collections.ConfigDict(
        {
            "name": "fashion_mnist",
            "source": "local",
            "data_dir": ph(str),
            "cache_dir": ph(str),
            "train_split": ph(str),
            "test_split": ph(str),
            "train_size": ph(int),
            "subset_seed": ph(int),
            "inlier_classes": ph(tuple),
            "num_outliers": 0,
            "num_known_outliers": 0,
            "outlier_source": ph(str),
            "outlier_data_dir": ph(str),
            "num_test_outliers": ph(int),
            "num_test_examples": ph(int),
            "val_size": 0,
            "train_labels_path": ph(str),
            "clean_labels": ph(str),
            "image_size": ph(int),
            "resize_size": 256,
            "random_flip": ph(bool),
            "mean_subtraction": True,
            "mean_max_examples": 100_000,
            "contrast_normalization": ph(bool),
            "pixel_scale": 1.0 / 255.0,
            "eval_batch_size": 1000,
            "num_threads": 2,
            "prefetch_buffer_size": 4,
        }
    )


def resolve_config(cfg: Any) -> ml_collections.ConfigDict:
    """Fills missing keys with defaults; rejects unknown keys (usually typos)."""
    out = default_dataset_config()
    if cfg is None:
        return out
    items = cfg.items() if hasattr(cfg, "items") else dict(cfg).items()
    for key, value in items:
        if key not in out:
            raise DataError(
                f"dataset.{key}: unknown key. Known keys: {', '.join(sorted(out.keys()))}."
            )
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        try:
            out[key] = value
        except (TypeError, ValueError) as e:
            raise DataError(f"dataset.{key}: bad value {value!r} ({e}).") from None
    if out.subset_seed is None:
        out.subset_seed = 0
    if out.source not in ("local", "tfds"):
        raise DataError(f"dataset.source: must be 'local' or 'tfds', got {out.source!r}.")
    if out.source == "local" and out.name not in LOCAL_NAMES:
        raise DataError(
            f"dataset.name: {out.name!r} has no local source (local: {', '.join(LOCAL_NAMES)}). "
            "Set dataset.source='tfds' and prepare it with TFDS (see docs/data.md)."
        )
    return out


def repo_root() -> Path:
    """The checkout that holds the ``nlnoise`` package (``<repo>/nlnoise/__init__.py``)."""
    return Path(nlnoise.__file__).resolve().parents[1]


def default_cifar10_path() -> Path:
    return repo_root().parent / "shared" / "data" / CIFAR10_FILE


def cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """``cache_dir`` or ``$NLNOISE_CACHE`` or ``~/.cache/nlnoise``; created if missing."""
    if cache_dir is None:
        cache_dir = os.environ.get("NLNOISE_CACHE") or Path.home() / ".cache" / "nlnoise"
    path = Path(cache_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"dataset.cache_dir: cannot create {path} ({e}).") from None
    return path


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Writes ``array`` to ``path`` via a temp file + rename, so readers never see half a file
    (several processes or hosts may fill the same cache at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_cached_npy(path: Path, mmap: bool = False) -> np.ndarray | None:
    """The cached array, or None if absent or unreadable (a corrupt cache is rebuilt)."""
    if not path.exists():
        return None
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError):
        return None


def short_hash(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Image providers


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


def resize_center_square(image: np.ndarray, size: int) -> np.ndarray:
    """Shorter side to ``size`` (bilinear), then the centre ``size x size`` square."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    squeeze = image.shape[2] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image)
    arr = np.asarray(pil.resize((nw, nh), Image.BILINEAR))
    if squeeze:
        arr = arr[..., None]
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(arr[top : top + size, left : left + size])


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


def check_class_labels(labels: Any, num_classes: int, field: str) -> np.ndarray:
    """int64 ``[N]`` in ``[0, num_classes)`` or a DataError naming ``field``."""
    from nlnoise import noise

    return noise.check_labels(
        labels, num_classes, field, error=DataError, integral_floats=False,
        hint=f"The file does not match this dataset's {num_classes} classes.")


# --------------------------------------------------------------------------------------------
# Raw datasets


@dataclasses.dataclass(frozen=True, eq=False)
class RawSplit:
    """One split: images plus clean labels in ``[0, num_classes)``."""

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
    """A clean dataset as read from its source."""

    name: str
    source: str
    train: RawSplit
    test: RawSplit
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    # Identifies the data (file, version, split sizes) for cache keys.
    fingerprint: str


def _split_from_arrays(images, labels, num_classes, field):
    return RawSplit(
        ArrayImages(images, f"{field} images"),
        check_class_labels(labels, num_classes, f"{field} labels"),
    )


# ---- Fashion-MNIST IDX -----------------------------------------------------------------------

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

_FMNIST_HOWTO = (
    "Install the Debian package: `sudo apt-get install dataset-fashion-mnist` (files go to "
    f"{FASHION_MNIST_DIR}), or set dataset.data_dir to a directory holding "
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz (or uncompressed), or use dataset.source='tfds' after "
    "`tfds build fashion_mnist --data_dir=DIR`."
)


def read_idx(path: Path, expected_ndim: int, field: str = "dataset.data_dir") -> np.ndarray:
    """Reads one IDX file (optionally gzipped) of unsigned bytes into an array."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{field}: file not found: {path}. {_FMNIST_HOWTO}") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(
            f"{field}: cannot read {path} ({type(e).__name__}: {e}); the file is truncated or "
            f"corrupt. Reinstall it: `sudo apt-get install --reinstall dataset-fashion-mnist`."
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
            f"found {len(raw) - header}. Reinstall it: "
            "`sudo apt-get install --reinstall dataset-fashion-mnist`."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.exists():
            return candidate
    return directory / f"{stem}.gz"  # reported as missing by read_idx


def load_fashion_mnist_local(data_dir: str | os.PathLike | None = None) -> RawDataset:
    """Fashion-MNIST from the IDX files of Debian's ``dataset-fashion-mnist``."""
    directory = Path(data_dir or FASHION_MNIST_DIR).expanduser()
    if not directory.is_dir():
        raise DataError(f"dataset.data_dir: directory not found: {directory}. {_FMNIST_HOWTO}")
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
        splits[split] = _split_from_arrays(
            images[..., None], labels, 10, f"dataset.data_dir ({lab_path.name})"
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


# ---- CIFAR-10 JPEG npz -----------------------------------------------------------------------

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def _cifar_howto(path: Path) -> str:
    return (
        f"Tried {path}. Put {CIFAR10_FILE} there (its format is in ../shared/data/README.md: "
        "JPEG bytes + offsets + labels per split) or set dataset.data_dir to the file or its "
        "directory; or use dataset.source='tfds' after `tfds build cifar10 --data_dir=DIR` "
        "(needs tensorflow installed and internet)."
    )


def resolve_cifar10_path(data_dir: str | os.PathLike | None) -> Path:
    if data_dir is None:
        return default_cifar10_path()
    path = Path(data_dir).expanduser()
    return path / CIFAR10_FILE if path.is_dir() else path


def decode_jpegs(buf: np.ndarray, offsets: np.ndarray, shape: tuple[int, int, int], field: str):
    """Decodes concatenated JPEG files into uint8 ``[N, *shape]`` (Pillow, one core)."""
    from PIL import Image

    n = len(offsets) - 1
    out = np.empty((n, *shape), np.uint8)
    mode = "RGB" if shape[2] == 3 else "L"
    for i in range(n):
        data = buf[offsets[i] : offsets[i + 1]].tobytes()
        try:
            img = np.asarray(Image.open(io.BytesIO(data)).convert(mode))
        except Exception as e:
            raise DataError(f"{field}: image {i} is not a readable JPEG ({e}).") from None
        if img.ndim == 2:
            img = img[..., None]
        if img.shape != shape:
            raise DataError(f"{field}: image {i} decodes to shape {img.shape}, expected {shape}.")
        out[i] = img
    return out


def load_cifar10_local(
    data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
) -> RawDataset:
    """CIFAR-10 from ``cifar10_jpeg.npz``; decoded once, then read from an npy cache (mmap)."""
    path = resolve_cifar10_path(data_dir)
    if not path.is_file():
        raise DataError(f"dataset.data_dir: CIFAR-10 file not found. {_cifar_howto(path)}")
    stat = path.stat()
    key = short_hash("cifar10-jpeg-v1", stat.st_size, stat.st_mtime_ns)
    cache = cache_root(cache_dir) / "cifar10"
    field = f"dataset.data_dir ({path})"
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"train_offsets", "train_label", "test_offsets", "test_label"} - set(z.files)
            if missing:
                raise DataError(
                    f"{field}: npz lacks arrays {sorted(missing)}. {_cifar_howto(path)}"
                )
            meta = {k: z[k] for k in ("train_offsets", "train_label", "test_offsets", "test_label")}
            splits = {}
            for split in ("train", "test"):
                offsets = meta[f"{split}_offsets"].astype(np.int64)
                labels = meta[f"{split}_label"]
                if len(offsets) != len(labels) + 1 or np.any(np.diff(offsets) <= 0):
                    raise DataError(
                        f"{field}: {split}_offsets must be increasing with len(labels)+1 entries."
                    )
                cache_file = cache / f"{key}-{split}_images.npy"
                images = load_cached_npy(cache_file, mmap=True)
                if images is None or images.shape != (len(labels), 32, 32, 3):
                    buf = z[f"{split}_jpeg"]
                    if buf.size < offsets[-1]:
                        raise DataError(
                            f"{field}: {split}_jpeg holds {buf.size} bytes but the offsets need "
                            f"{offsets[-1]}; the file is truncated."
                        )
                    atomic_save_npy(
                        cache_file, decode_jpegs(buf, offsets, (32, 32, 3), f"{field} {split}")
                    )
                    images = np.load(cache_file, mmap_mode="r")
                splits[split] = _split_from_arrays(images, labels, 10, f"{field} {split}")
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(
            f"{field}: cannot read the npz ({type(e).__name__}: {e}); it is truncated or "
            f"corrupt. {_cifar_howto(path)}"
        ) from None
    return RawDataset(
        name="cifar10",
        source="local",
        train=splits["train"],
        test=splits["test"],
        num_classes=10,
        class_names=CIFAR10_CLASSES,
        image_shape=(32, 32, 3),
        fingerprint=key,
    )


# ---- scikit-learn digits ---------------------------------------------------------------------

DIGITS_NUM_TRAIN = 1437  # the first 80% (sklearn's order); the last 360 are the test split


def load_digits_local() -> RawDataset:
    """scikit-learn's 1,797 8x8 digits (shipped with sklearn), scaled from 0..16 to 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int64)
    n = DIGITS_NUM_TRAIN
    return RawDataset(
        name="digits",
        source="local",
        train=_split_from_arrays(images[:n], labels[:n], 10, "digits train"),
        test=_split_from_arrays(images[n:], labels[n:], 10, "digits test"),
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
        image_shape=(8, 8, 1),
        fingerprint=short_hash("digits", len(labels)),
    )


# ---- TFDS ------------------------------------------------------------------------------------

_TFDS_PREPARE = {
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


def tfds_howto(name: str, data_dir: str | None) -> str:
    cmd = _TFDS_PREPARE.get(name, f"`tfds build {name} --data_dir=DIR --file_format=array_record`")
    where = data_dir or "~/tensorflow_datasets (TFDS's default)"
    return (
        f"Looked in data_dir={where}. Prepare it on a machine with internet and tensorflow "
        f"installed (`pip install tensorflow-cpu`): {cmd}; then set dataset.data_dir=DIR "
        "(a gs:// bucket works on TPU VMs). See docs/data.md."
    )


def default_splits(name: str) -> tuple[str, str]:
    return ("train", "validation") if name == "imagenet2012" else ("train", "test")


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


def _tfds_labels(source, name: str, split: str, data_dir: str | None, cache_dir) -> np.ndarray:
    """The label column of a TFDS split, read once and cached."""
    info = source.dataset_info
    key = short_hash(name, split, str(info.data_dir), str(info.version), len(source))
    path = cache_root(cache_dir) / "tfds_labels" / f"{name}-{split}-{key}.npy"
    labels = load_cached_npy(path)
    if labels is None or labels.shape != (len(source),):
        reader = _label_only_source(name, split, data_dir)
        if reader is None:
            reader = source
        labels = np.fromiter(
            (int(reader[i]["label"]) for i in range(len(source))), np.int64, len(source)
        )
        atomic_save_npy(path, labels)
    return labels


def open_tfds(
    name: str,
    split: str,
    data_dir: str | None,
    field: str = "dataset.data_dir",
):
    """``tfds.data_source`` without ever downloading, with a how-to-prepare error."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - tfds is a dependency
        raise DataError(f"dataset.source: tensorflow_datasets is not importable ({e}).") from None
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
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


def load_tfds(
    name: str,
    data_dir: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    train_split: str | None = None,
    test_split: str | None = None,
    resize_size: int | None = None,
    field: str = "dataset.data_dir",
) -> RawDataset:
    """A TFDS dataset through ``tfds.data_source`` (ArrayRecord; no TensorFlow needed to read).

    ``resize_size`` (ImageNet): images are resized so their shorter side is ``resize_size`` and
    centre-cropped to a square, as variable-size images cannot be batched.
    """
    default_train, default_test = default_splits(name)
    splits = {}
    for role, split in (
        ("train", train_split or default_train),
        ("test", test_split or default_test),
    ):
        src = open_tfds(name, split, data_dir, field)
        features = src.dataset_info.features
        if "image" not in features or "label" not in features:
            raise DataError(
                f"dataset.name: TFDS {name!r} has features {list(features.keys())}; nlnoise "
                "needs 'image' and 'label'."
            )
        label_feature = features["label"]
        num_classes = int(label_feature.num_classes)
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
        labels = check_class_labels(
            _tfds_labels(src, name, split, data_dir, cache_dir),
            num_classes,
            f"{field} ({name} {split} labels)",
        )
        splits[role] = RawSplit(TfdsImages(src, shape, resize_size), labels)
        names = tuple(label_feature.names)
        version = str(src.dataset_info.version)
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


def load_raw(cfg: ml_collections.ConfigDict) -> RawDataset:
    """The clean dataset named by ``cfg.name`` from ``cfg.source``."""
    if cfg.source == "tfds":
        return load_tfds(
            cfg.name,
            cfg.data_dir,
            cfg.cache_dir,
            train_split=cfg.train_split,
            test_split=cfg.test_split,
            resize_size=cfg.resize_size if cfg.name == "imagenet2012" else None,
        )
    if cfg.name == "fashion_mnist":
        return load_fashion_mnist_local(cfg.data_dir)
    if cfg.name == "cifar10":
        return load_cifar10_local(cfg.data_dir, cfg.cache_dir)
    if cfg.name == "digits":
        if cfg.data_dir is not None:
            raise DataError("dataset.data_dir: digits ships with scikit-learn; leave it None.")
        return load_digits_local()
    raise DataError(f"dataset.name: no local source for {cfg.name!r}.")  # pragma: no cover


def load_outlier_raw(cfg: ml_collections.ConfigDict) -> RawDataset:
    """The dataset named by ``cfg.outlier_source``: ``"local:NAME"``, ``"tfds:NAME"`` or a bare
    TFDS name."""
    spec = str(cfg.outlier_source)
    kind, _, name = spec.partition(":") if ":" in spec else ("tfds", "", spec)
    field = "dataset.outlier_source"
    if kind == "local":
        if name not in LOCAL_NAMES:
            raise DataError(f"{field}: no local source {name!r}; local: {', '.join(LOCAL_NAMES)}.")
        sub = resolve_config(
            {
                "name": name,
                "source": "local",
                "cache_dir": cfg.cache_dir,
                "data_dir": cfg.outlier_data_dir,
            }
        )
        return load_raw(sub)
    if kind != "tfds":
        raise DataError(
            f"{field}: expected 'tfds:NAME', 'local:NAME' or a TFDS name, got {spec!r}."
        )
    # The main dataset's data_dir is only a TFDS directory when the main source is TFDS too.
    fallback = cfg.data_dir if cfg.source == "tfds" else None
    return load_tfds(
        name,
        cfg.outlier_data_dir if cfg.outlier_data_dir is not None else fallback,
        cfg.cache_dir,
        resize_size=cfg.resize_size if name == "imagenet2012" else None,
        field=field,
    )
