"""A directory of image files, one subfolder per class (``name=folder``).

The layout of torchvision's ``ImageFolder`` and ``tfds.folder_dataset.ImageFolder``::

    DIR/train/<class>/<any path>.png|jpg|...
    DIR/test/<class>/...

Class names are the sorted names of ``DIR/train``'s subfolders, and label ``k`` is the k-th of
them; ``DIR/test`` may lack a class but not add one. A split's order (which the rows of a
``dataset.train_labels_path`` file follow) is class by class in that order, then file by file in
sorted order of the path below the class folder. Files without an image extension and hidden
files are skipped. Images are decoded with Pillow, as RGB, or as one channel (L) when every image
is grayscale, and resized to ``dataset.image_size`` when it is set (shorter side, then the centre
square); without it every image must have one size. The decoded arrays are cached as ``.npy``
under a key of the file list, sizes and mtimes, and only once every image has been read.
"""

from __future__ import annotations

import os
from pathlib import Path

import ml_collections
import numpy as np

from nlnoise.data.cache import cache_root, load_cached_splits, save_splits, short_hash
from nlnoise.data.schema import DataError
from nlnoise.data.sources.base import ArrayImages, RawDataset, RawSplit, pil_to_array

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".pbm")
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")
SPLITS = ("train", "test")
_LAYOUT = ("Lay it out as DIR/train/<class>/<image files> and DIR/test/<class>/<image files> "
           "(see docs/data.md, 'Bring your own data').")


def _image_files(class_dir: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(class_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files += [Path(root) / n for n in names
                  if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: p.relative_to(class_dir).as_posix())


def list_split(directory: Path, split: str,
               classes: tuple[str, ...] | None = None) -> tuple[tuple[str, ...], list[Path],
                                                                np.ndarray]:
    """``(class names, files, labels)`` of ``directory/split`` in the split's order.

    With ``classes`` (the training split's), the split's folders must be among them and
    labels follow them.
    """
    root = directory / split
    if not root.is_dir():
        raise DataError(f"dataset.data_dir: no folder {root}. {_LAYOUT}")
    found = tuple(sorted(d.name for d in root.iterdir() if d.is_dir()
                         and not d.name.startswith(".")))
    if classes is None:
        if len(found) < 2:
            raise DataError(f"dataset.data_dir: {root} has {len(found)} class folders {found}; a "
                            f"classifier needs at least 2. {_LAYOUT}")
        classes = found
    extra = sorted(set(found) - set(classes))
    if extra:
        raise DataError(f"dataset.data_dir: {root} has class folders {extra} that "
                        f"{directory / 'train'} lacks; every test class must be a training "
                        "class (rename or remove them).")
    files: list[Path] = []
    labels: list[int] = []
    for name in found:
        members = _image_files(root / name)
        if not members:
            raise DataError(f"dataset.data_dir: class folder {root / name} holds no image file "
                            f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder.")
        files += members
        labels += [classes.index(name)] * len(members)
    return classes, files, np.asarray(labels, np.int64)


def _open(path: Path):
    from PIL import Image

    try:
        image = Image.open(path)
        image.size  # noqa: B018 - the header is read here, so a non-image fails now
        return image
    except Exception as e:
        raise DataError(f"dataset.data_dir: cannot read the image {path} ({type(e).__name__}: "
                        f"{e}); replace or delete the file.") from None


def _target(files: dict[str, list[Path]], image_size: int | None) -> tuple[str, int | None]:
    """Pillow mode and size (None: every image already has one size) from the headers only."""
    modes, sizes = set(), {}
    for path in (p for split in SPLITS for p in files[split]):
        with _open(path) as image:
            modes.add(image.mode)
            sizes.setdefault(image.size, path)
    if image_size is None and len(sizes) > 1:
        (a, pa), (b, pb) = list(sizes.items())[:2]
        raise DataError(f"dataset.image_size: the images have {len(sizes)} sizes (e.g. {pa} is "
                        f"{a[0]}x{a[1]}, {pb} is {b[0]}x{b[1]}); set dataset.image_size to "
                        "resize them all to one square size.")
    return ("L" if modes <= set(GRAYSCALE_MODES) else "RGB"), image_size


def decode_files(files: list[Path], mode: str, size: int | None) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` from image files; a file that fails to decode is named."""
    out = None
    for i, path in enumerate(files):
        try:
            with _open(path) as image:
                arr = pil_to_array(image, mode, size)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"dataset.data_dir: cannot decode the image {path} "
                            f"({type(e).__name__}: {e}); replace or delete the file.") from None
        if out is None:
            out = np.empty((len(files), *arr.shape), np.uint8)
        if arr.shape != out.shape[1:]:
            raise DataError(f"dataset.image_size: {path} decodes to {arr.shape}, the first image "
                            f"to {out.shape[1:]}; set dataset.image_size to resize them all.")
        out[i] = arr
    return out


def load_folder(data_dir: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None,
                image_size: int | None = None) -> RawDataset:
    """Images and labels from ``data_dir/{train,test}/<class>/`` (layout in the docstring)."""
    if data_dir is None:
        raise DataError(f"dataset.data_dir: name=folder needs the directory DIR. {_LAYOUT}")
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise DataError(f"dataset.image_size: must be a positive integer, got {image_size!r}.")
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise DataError(f"dataset.data_dir: no directory {directory}. {_LAYOUT}")
    classes, train_files, train_labels = list_split(directory, "train")
    _, test_files, test_labels = list_split(directory, "test", classes)
    files = {"train": train_files, "test": test_files}
    labels = {"train": train_labels, "test": test_labels}
    stats = [(p.relative_to(directory).as_posix(), st.st_size, st.st_mtime_ns)
             for split in SPLITS for p in files[split] for st in (p.stat(),)]
    key = short_hash("folder-v1", str(directory.resolve()), stats, image_size)
    paths = {s: cache_root(cache_dir) / "folder" / f"{key}-{s}_images.npy" for s in SPLITS}
    images = load_cached_splits(paths, {s: len(files[s]) for s in SPLITS})
    if images is None:
        mode, size = _target(files, image_size)
        decoded = {s: decode_files(files[s], mode, size) for s in SPLITS}
        if decoded["train"].shape[1:] != decoded["test"].shape[1:]:
            raise DataError(f"dataset.image_size: train images are {decoded['train'].shape[1:]} "
                            f"but test images {decoded['test'].shape[1:]}; set "
                            "dataset.image_size to resize them all.")
        images = save_splits(paths, decoded)
    splits = {s: RawSplit(ArrayImages(images[s], f"dataset.data_dir ({directory / s})"),
                          labels[s]) for s in SPLITS}
    return RawDataset(name="folder", source="local", train=splits["train"], test=splits["test"],
                      num_classes=len(classes), class_names=classes,
                      image_shape=splits["train"].images.shape, fingerprint=key)


def load(cfg: ml_collections.ConfigDict) -> RawDataset:
    """The registry's loader: ``dataset.data_dir`` is DIR, ``dataset.image_size`` resizes."""
    return load_folder(cfg.data_dir, cfg.cache_dir, cfg.image_size)
