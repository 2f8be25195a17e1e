"""Preprocessing as in the paper, vectorised over whole batches.

- Per-pixel mean subtraction with the mean image of the training split (cached on disk).
- Global contrast normalization per image (SVHN), before the mean subtraction, whose mean is
  then the mean of contrast-normalized training images.
- Crops (ImageNet: random ``image_size`` crops + horizontal flips for training, centre crop for
  evaluation). Random draws are a pure function of ``(seed, epoch, example index)``, so a
  resumed run and any process count see the same crops.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from nlnoise.data.cache import atomic_save_npy, cache_root, load_cached_npy
from nlnoise.data.schema import DataError
from nlnoise.data.sources.base import ImageProvider, RawDataset

# Added to each image's pixel variance (pixel units, 0..255) before dividing by its standard
# deviation, so flat images are not blown up (Coates & Ng's value for 0..255 pixels).
GCN_EPS = 10.0


def global_contrast_normalize(x: np.ndarray) -> np.ndarray:
    """Per image: subtract its mean and divide by ``sqrt(var + GCN_EPS)`` (float32, in place
    when ``x`` is float32)."""
    x = np.asarray(x, dtype=np.float32)
    axes = tuple(range(1, x.ndim))
    mu = x.mean(axis=axes, keepdims=True)
    x -= mu
    var = np.mean(np.square(x), axis=axes, keepdims=True)
    x /= np.sqrt(var + GCN_EPS)
    return x


def hash_uniform(seed: int, epoch: int, keys: np.ndarray, stream: int) -> np.ndarray:
    """One Uniform[0, 1) per key, a pure function of ``(seed, epoch, key, stream)``
    (SplitMix64 finaliser over a mixed counter)."""
    keys = np.asarray(keys, dtype=np.uint64)
    base = (
        int(seed) * 0x9E3779B97F4A7C15
        + int(epoch) * 0xBF58476D1CE4E5B9
        + int(stream) * 0x94D049BB133111EB
    ) % 2**64
    with np.errstate(over="ignore"):
        z = keys * np.uint64(0xD1B54A32D192ED03) + np.uint64(base)
        for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            z ^= z >> np.uint64(shift)
            z *= np.uint64(mult)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def crop_batch(x: np.ndarray, size: int, top: np.ndarray, left: np.ndarray) -> np.ndarray:
    """``x[n, top[n]:top[n]+size, left[n]:left[n]+size]`` for every ``n``, one gather."""
    b = x.shape[0]
    rows = top[:, None] + np.arange(size)
    cols = left[:, None] + np.arange(size)
    return x[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocessor:
    """uint8 ``[b, H, W, C]`` batches -> float32 model inputs.

    Attributes:
      mean: float32 ``[H, W, C]`` at the stored resolution, or None (no mean subtraction).
      pixel_scale: multiplies pixels after mean subtraction (ignored with contrast
        normalization, which already yields unit-scale values).
      contrast_normalization: per-image global contrast normalization first (SVHN).
      stored_shape: ``[H, W, C]`` of the images read from the source.
      crop_size: output height/width when smaller than the stored size, else None.
      random_flip: horizontal flips with p=0.5 in training.
    """

    mean: np.ndarray | None
    pixel_scale: float
    contrast_normalization: bool
    stored_shape: tuple[int, int, int]
    crop_size: int | None = None
    random_flip: bool = False

    @property
    def output_shape(self) -> tuple[int, int, int]:
        h, w, c = self.stored_shape
        if self.crop_size is None:
            return (h, w, c)
        return (self.crop_size, self.crop_size, c)

    @property
    def augments(self) -> bool:
        return self.crop_size is not None or self.random_flip

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """Contrast normalization and/or mean subtraction and scaling, no cropping."""
        x = images.astype(np.float32)
        if self.contrast_normalization:
            x = global_contrast_normalize(x)
        if self.mean is not None:
            x -= self.mean
        if not self.contrast_normalization and self.pixel_scale != 1.0:
            x *= np.float32(self.pixel_scale)
        return x

    def __call__(
        self,
        images: np.ndarray,
        *,
        train: bool,
        keys: np.ndarray | None = None,
        seed: int = 0,
        epoch: int = 0,
    ) -> np.ndarray:
        """Preprocesses a batch. ``keys`` (example indices) seed the random crops/flips."""
        x = self.normalize(images)
        if not self.augments:
            return x
        _, h, w, _ = x.shape
        if self.crop_size is not None:
            s = self.crop_size
            if train:
                if keys is None:
                    raise ValueError("keys are required for random crops")
                top = np.floor(hash_uniform(seed, epoch, keys, 1) * (h - s + 1)).astype(np.int64)
                left = np.floor(hash_uniform(seed, epoch, keys, 2) * (w - s + 1)).astype(np.int64)
                x = crop_batch(x, s, top, left)
            else:
                top, left = (h - s) // 2, (w - s) // 2
                x = np.ascontiguousarray(x[:, top : top + s, left : left + s])
        if train and self.random_flip:
            if keys is None:
                raise ValueError("keys are required for random flips")
            flip = hash_uniform(seed, epoch, keys, 3) < 0.5
            x[flip] = x[flip, :, ::-1]
        return x


def compute_mean_image(
    images: ImageProvider, *, contrast_normalization: bool, max_examples: int | None = None
) -> np.ndarray:
    """Per-pixel mean (float32 ``[H, W, C]``) of a split; of at most ``max_examples`` evenly
    spaced images when the split is larger (ImageNet), summed in float64."""
    n = len(images)
    if n == 0:
        raise DataError("dataset: cannot compute a mean image of an empty training split.")
    rows = np.arange(n)
    if max_examples is not None and n > max_examples:
        rows = np.unique(np.linspace(0, n - 1, int(max_examples)).round().astype(np.int64))
    total = np.zeros(images.shape, np.float64)
    for start in range(0, rows.size, 2048):
        chunk = images.take(rows[start : start + 2048]).astype(np.float32)
        if contrast_normalization:
            chunk = global_contrast_normalize(chunk)
        total += chunk.sum(axis=0, dtype=np.float64)
    return (total / rows.size).astype(np.float32)


def mean_image_path(raw: RawDataset, cache_dir, contrast_normalization: bool, max_examples) -> Path:
    tag = (
        f"{raw.name}-{raw.source}-{raw.fingerprint}-cn{int(contrast_normalization)}-m{max_examples}"
    )
    return cache_root(cache_dir) / "mean" / f"{tag}.npy"


def cached_mean_image(
    raw: RawDataset, cache_dir, *, contrast_normalization: bool, max_examples: int | None
) -> np.ndarray:
    """The training split's mean image, read from or written (atomically) to the cache."""
    path = mean_image_path(raw, cache_dir, contrast_normalization, max_examples)
    mean = load_cached_npy(path)
    if mean is None or mean.shape != raw.image_shape or mean.dtype != np.float32:
        mean = compute_mean_image(
            raw.train.images,
            contrast_normalization=contrast_normalization,
            max_examples=max_examples,
        )
        atomic_save_npy(path, mean)
    return mean


def make_preprocessor(cfg, raw: RawDataset) -> Preprocessor:
    """Resolves the config's automatic settings for ``raw`` and builds the preprocessor."""
    h, w, _ = raw.image_shape
    contrast = cfg.contrast_normalization
    if contrast is None:
        contrast = raw.name == "svhn_cropped"
    image_size = cfg.image_size
    if image_size is None and raw.name == "imagenet2012":
        image_size = 227
    crop = None
    if image_size is not None:
        if int(image_size) != image_size or not 1 <= image_size <= min(h, w):
            raise DataError(
                f"dataset.image_size: must be an integer in [1, {min(h, w)}] (the stored size "
                f"{h}x{w}), got {image_size!r}."
            )
        crop = int(image_size) if image_size < min(h, w) or h != w else None
    flip = cfg.random_flip
    if flip is None:
        flip = raw.name == "imagenet2012"
    scale = float(cfg.pixel_scale)
    if not np.isfinite(scale) or scale <= 0:
        raise DataError(f"dataset.pixel_scale: must be a positive number, got {cfg.pixel_scale!r}.")
    mean = None
    if cfg.mean_subtraction:
        mean = cached_mean_image(
            raw,
            cfg.cache_dir,
            contrast_normalization=bool(contrast),
            max_examples=cfg.mean_max_examples,
        )
    return Preprocessor(
        mean=mean,
        pixel_scale=scale,
        contrast_normalization=bool(contrast),
        stored_shape=raw.image_shape,
        crop_size=crop,
        random_flip=bool(flip),
    )
