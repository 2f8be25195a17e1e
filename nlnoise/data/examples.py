"""What :func:`nlnoise.data.load` returns: :class:`NoisyDataset`, whose splits are
:class:`ExampleSource` (random access, grain-compatible).

Inliers and outliers may come from different datasets: each example is a row of one image
provider, with its training label, clean label and outlier flag.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from nlnoise.data.preprocess import Preprocessor
from nlnoise.data.schema import DataError
from nlnoise.data.sources.base import ImageProvider


class ExampleSource:
    """A random-access split (grain-compatible): ``len(src)``, ``src[i]`` and ``get_batch``.

    Examples are rows of one or more image providers (inliers and outliers may come from
    different datasets) with per-example label arrays. ``src[i]`` returns::

        {"image": uint8 [H, W, C], "label": int32, "clean_label": int32 (-1 unknown),
         "is_outlier": bool, "index": int64 (== i)}
    """

    def __init__(
        self,
        providers: Sequence[ImageProvider],
        provider_id: np.ndarray,
        rows: np.ndarray,
        labels: np.ndarray,
        clean_labels: np.ndarray,
        is_outlier: np.ndarray,
    ):
        n = len(rows)
        if not (len(provider_id) == len(labels) == len(clean_labels) == len(is_outlier) == n):
            raise ValueError("ExampleSource: all per-example arrays must have equal length")
        shapes = {tuple(p.shape) for p in providers}
        if len(shapes) > 1:
            raise DataError(
                f"dataset.outlier_source: outlier images have shape {sorted(shapes)[1:]} but "
                f"inliers have {sorted(shapes)[0]}; pick an outlier dataset with the same image "
                "shape (e.g. cifar100 or svhn_cropped for cifar10)."
            )
        self.providers = tuple(providers)
        self.image_shape = tuple(self.providers[0].shape)
        self.provider_id = np.asarray(provider_id, np.int8)
        self.rows = np.asarray(rows, np.int64)
        self.labels = np.asarray(labels, np.int32)
        self.clean_labels = np.asarray(clean_labels, np.int32)
        self.is_outlier = np.asarray(is_outlier, bool)
        for a in (self.provider_id, self.rows, self.labels, self.clean_labels, self.is_outlier):
            a.setflags(write=False)

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = int(index)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {index} out of range for a split of {len(self)} examples")
        i %= len(self)
        image = self.providers[self.provider_id[i]].take(self.rows[i : i + 1])[0]
        return {
            "image": image,
            "label": np.int32(self.labels[i]),
            "clean_label": np.int32(self.clean_labels[i]),
            "is_outlier": np.bool_(self.is_outlier[i]),
            "index": np.int64(i),
        }

    def subset(self, positions: np.ndarray) -> ExampleSource:
        """The examples at ``positions`` (in that order) as a split of their own."""
        pos = np.asarray(positions, np.int64)
        return ExampleSource(self.providers, self.provider_id[pos], self.rows[pos],
                             self.labels[pos], self.clean_labels[pos], self.is_outlier[pos])

    def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The examples at ``indices`` stacked along a new first axis (one gather per provider)."""
        idx = np.asarray(indices, np.int64)
        pid = self.provider_id[idx]
        rows = self.rows[idx]
        if len(self.providers) == 1:
            images = self.providers[0].take(rows)
        else:
            images = np.empty((idx.size, *self.image_shape), np.uint8)
            for p, provider in enumerate(self.providers):
                sel = pid == p
                if sel.any():
                    images[sel] = provider.take(rows[sel])
        return {
            "image": images,
            "label": self.labels[idx],
            "clean_label": self.clean_labels[idx],
            "is_outlier": self.is_outlier[idx],
            "index": idx,
        }


@dataclasses.dataclass(frozen=True, eq=False)
class NoisyDataset:
    """A dataset with its training labels corrupted as configured.

    Attributes:
      train, test, test_noisy, val: :class:`ExampleSource` splits. ``test`` holds the test
        split's labels of inlier test images (taken as correct). ``test_noisy`` (None without an
        outlier pool) adds test outliers (``label == num_classes``, ``clean_label == -1``,
        ``is_outlier``) for outlier detection. ``val`` (None unless ``dataset.val_size``) is
        held out of the training set with its noisy labels, for label-free model selection.
      num_classes: K, the number of inlier classes (training labels also use K for known
        outliers).
      image_shape: the model input shape ``[H, W, C]`` (after any crop).
      q_true: Q*, ``[K, K]`` float64, ``q[j, i] = p(noisy=j | clean=i)`` (columns sum to 1): the
        flip matrix used when flips are injected into clean labels; the realized transition
        from clean to training labels when the labels come from a file or
        ``corruption.kind="given"``; None when nothing is flipped or no clean label is known.
      alpha: Eqn 9's alpha = N_known / (N_known + N_out), or None without training outliers.
      class_names: the K inlier class names, in label order.
      mean_image: float32 per-pixel training mean at the stored resolution, or None.
      train_labels, train_clean_labels, train_is_outlier: per-example arrays of ``train``
        (clean label -1: an outlier, or not known).
      num_outliers, num_known_outliers: N_out and N_known in ``train``.
      preprocessor: what the pipeline applies to each batch.
      label_fingerprint: sha256 over the training labels and rows; store it with a
        checkpoint to detect a changed dataset on resume.
      has_clean_labels: False when no clean training label is known (``dataset.clean_labels``);
        ``train_clean_labels`` is then all -1 and clean-label metrics are left out.
      fold_out: with ``dataset.num_folds``, the fold left out of training (noisy labels), for
        out-of-fold predictions; None otherwise.
      source_train_labels: the labels training started from for every image of the source's
        training split, in its order (a label file's, else the source's; -1 = left out), before
        ``dataset.inlier_classes`` remaps them.
      source_classes: the source class id of each of the K classes (label ``k`` is source class
        ``source_classes[k]``).
    """

    name: str
    train: ExampleSource
    test: ExampleSource
    test_noisy: ExampleSource | None
    val: ExampleSource | None
    num_classes: int
    image_shape: tuple[int, int, int]
    q_true: np.ndarray | None
    alpha: float | None
    class_names: tuple[str, ...]
    mean_image: np.ndarray | None
    train_labels: np.ndarray
    train_clean_labels: np.ndarray
    train_is_outlier: np.ndarray
    num_outliers: int
    num_known_outliers: int
    preprocessor: Preprocessor
    label_fingerprint: str
    has_clean_labels: bool = True
    fold_out: ExampleSource | None = None
    source_train_labels: np.ndarray | None = None
    source_classes: tuple[int, ...] = ()

    @property
    def realized_flip_rate(self) -> float | None:
        """Fraction of training inliers whose label differs from their known clean label, or
        None when no clean label is known."""
        known = ~self.train_is_outlier & (self.train_clean_labels >= 0)
        if not self.has_clean_labels or not known.any():
            return None
        return float(np.mean(self.train_labels[known] != self.train_clean_labels[known]))
