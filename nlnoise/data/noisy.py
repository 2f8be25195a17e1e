"""Noise injection at the dataset level: training subsets, label flips and outliers.

Everything here is a pure function of the config and the seeds, computed from label vectors
only (no image is read), so every host and every resumed run rebuilds identical labels:

- the training subset depends on ``(dataset, subset_seed, train_size)`` and is nested: with one
  seed, a smaller ``train_size`` is a subset of a larger one;
- a flipped label depends on ``(dataset, noise seed, Q, the example's index in its split)``
  (``noise.corrupt_labels`` is counter-based), so it does not change with ``train_size``;
- outlier choice depends on ``subset_seed``; outlier labels on the noise seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nlnoise import noise
from nlnoise.data import sources
from nlnoise.data.preprocess import Preprocessor, make_preprocessor
from nlnoise.data.sources import DataError, ImageProvider, RawDataset

# Stream tags so that subsets, outlier picks and outlier labels draw independent numbers.
_SUBSET_STREAM = 0x5B5E7
_OUTLIER_PICK_STREAM = 0x0B71C
_TEST_OUTLIER_STREAM = 0x7E570
_OUTLIER_LABEL_STREAM = 0x0A7E1
_TEST_SUBSET_STREAM = 0x7E5B5
_VAL_STREAM = 0x0F411


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream]))


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
      train, test, test_noisy, val: :class:`ExampleSource` splits. ``test`` holds clean labels
        of inlier test images. ``test_noisy`` (None without an outlier pool) adds test outliers
        (``label == num_classes``, ``clean_label == -1``, ``is_outlier``) for outlier detection.
        ``val`` (None unless ``dataset.val_size``) is held out of the training set with its
        noisy labels, for label-free model selection.
      num_classes: K, the number of inlier classes (training labels also use K for known
        outliers).
      image_shape: the model input shape ``[H, W, C]`` (after any crop).
      q_true: the ``[K, K]`` flip matrix used (float64), or None when no label is flipped.
      alpha: Eqn 9's alpha = N_known / (N_known + N_out), or None without training outliers.
      class_names: the K inlier class names, in label order.
      mean_image: float32 per-pixel training mean at the stored resolution, or None.
      train_labels, train_clean_labels, train_is_outlier: per-example arrays of ``train``.
      num_outliers, num_known_outliers: N_out and N_known in ``train``.
      preprocessor: what the pipeline applies to each batch.
      label_fingerprint: sha256 over the training labels and rows; store it with a
        checkpoint to detect a changed dataset on resume.
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


# --------------------------------------------------------------------------------------------
# Building blocks (pure, label-level)


def flip_matrix(
    kind: str,
    num_classes: int,
    level: float,
    seed: int,
    kwargs: dict | None = None,
) -> np.ndarray | None:
    """The ``[K, K]`` flip matrix for ``corruption.kind``, or None when it flips nothing.

    ``kind="custom"`` takes the matrix itself from ``kwargs["q"]`` (array or ``.npy`` path).
    For ``adversarial``, ``kwargs["confusion_path"]`` (an ``.npy`` of ``confusion[pred, true]``)
    is loaded when ``kwargs["confusion"]`` is absent.
    """
    kw = dict(kwargs or {})
    try:
        if kind == "custom":
            q = kw.get("q")
            if q is None:
                raise DataError("corruption.kind=custom needs the matrix in noise_kwargs['q'].")
            if isinstance(q, str | os.PathLike):
                q = np.load(Path(q), allow_pickle=False)
        else:
            path = kw.pop("confusion_path", None)
            if kind == "adversarial" and kw.get("confusion") is None and path:
                try:
                    kw["confusion"] = np.load(Path(path), allow_pickle=False)
                except OSError as e:
                    raise DataError(
                        f"corruption.confusion_path: cannot read {path} ({e}).") from None
            kw = {k: v for k, v in kw.items() if v is not None}
            q = noise.make(kind, num_classes, level, seed=seed, **kw)
        q = noise.validate_transition(q, num_classes, name="noise matrix (corruption.kind)")
    except noise.NoiseMatrixError as e:
        raise DataError(
            f"{e} The dataset has K={num_classes} classes (after dataset.inlier_classes)."
        ) from None
    except TypeError as e:
        raise DataError(f"noise: bad arguments for corruption.kind={kind!r} ({e}).") from None
    if np.array_equal(q, np.eye(num_classes)):
        return None
    return q


def select_subset(num_candidates: int, size: int | None, seed: int, field: str) -> np.ndarray:
    """Sorted positions of a random ``size``-subset of ``range(num_candidates)``; nested in
    ``size`` for one seed (it is a prefix of one permutation)."""
    if size is None:
        return np.arange(num_candidates)
    if int(size) != size or size < 1:
        raise DataError(f"{field}: must be a positive integer or None, got {size!r}.")
    if size > num_candidates:
        raise DataError(
            f"{field}={size} is larger than the {num_candidates} examples available in the "
            "training split (after dataset.inlier_classes); lower it or set it to None."
        )
    perm = _rng(seed, _SUBSET_STREAM).permutation(num_candidates)
    return np.sort(perm[: int(size)])


def uniform_labels(num: int, num_classes: int, seed: int, keys: np.ndarray) -> np.ndarray:
    """Uniformly random labels in ``[0, K)`` as a pure function of ``(seed, key)``."""
    q = np.full((num_classes, 1), 1.0 / num_classes)
    outlier_seed = int(
        np.random.SeedSequence([int(seed), _OUTLIER_LABEL_STREAM]).generate_state(1)[0]
    )
    return noise.corrupt_labels(np.zeros(num, np.int64), q, outlier_seed, indices=keys)


def _check_count(value: Any, field: str) -> int:
    if value is None:
        return 0
    if int(value) != value or value < 0:
        raise DataError(f"{field}: must be a non-negative integer, got {value!r}.")
    return int(value)


def _class_remap(raw: RawDataset, inlier_classes) -> tuple[np.ndarray, tuple[int, ...]]:
    """``remap[c]`` = new label of original class ``c`` (-1 for non-inlier classes)."""
    if inlier_classes is None:
        return np.arange(raw.num_classes), tuple(range(raw.num_classes))
    classes = tuple(int(c) for c in inlier_classes)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise DataError(
            f"dataset.inlier_classes: need at least 2 distinct classes, got {inlier_classes!r}."
        )
    bad = [c for c in classes if not 0 <= c < raw.num_classes]
    if bad:
        raise DataError(
            f"dataset.inlier_classes: {bad} outside [0, {raw.num_classes}) for {raw.name}."
        )
    remap = np.full(raw.num_classes, -1, np.int64)
    remap[list(classes)] = np.arange(len(classes))
    return remap, classes


def _fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
        h.update(b"|")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# load


def load(
    dataset_cfg: Any,
    *,
    noise_kind: str = "identity",
    noise_level: float = 0.0,
    noise_seed: int = 0,
    noise_kwargs: dict | None = None,
) -> NoisyDataset:
    """Reads the configured dataset and applies training-set size, label flips and outliers.

    Args:
      dataset_cfg: the training config's ``dataset`` sub-dict (missing keys take defaults).
      noise_kind, noise_level, noise_seed, noise_kwargs: the ``noise`` config: a
        ``noise.make`` family (or ``"custom"`` with ``noise_kwargs["q"]``), its level and seed,
        and extra arguments (``m``, ``confusion``/``confusion_path``).

    Raises:
      DataError: naming the config field and the fix.
    """
    cfg = sources.resolve_config(dataset_cfg)
    raw = sources.load_raw(cfg)
    remap, inlier_classes = _class_remap(raw, cfg.inlier_classes)
    k = len(inlier_classes)
    n_out = _check_count(cfg.num_outliers, "dataset.num_outliers")
    n_known = _check_count(cfg.num_known_outliers, "dataset.num_known_outliers")
    if n_known > n_out:
        raise DataError(
            f"dataset.num_known_outliers={n_known} exceeds dataset.num_outliers={n_out}: the "
            "known (label K) outliers are meant to be a small set next to the N_out randomly "
            "labelled ones (alpha = N_known / (N_known + N_out) <= 0.5). Lower "
            "num_known_outliers or raise num_outliers."
        )
    open_set = cfg.inlier_classes is not None and len(inlier_classes) < raw.num_classes
    has_pool = cfg.outlier_source is not None or open_set
    if (n_out or n_known) and not has_pool:
        raise DataError(
            "dataset.num_outliers: outliers need a source: set dataset.inlier_classes (the other "
            "classes become outliers, e.g. (0, 1, 2, 3, 4) for CIFAR-10) or "
            "dataset.outlier_source (a TFDS name)."
        )

    # ---- inliers: subset, then flips keyed by the split index
    inlier_rows = np.flatnonzero(remap[raw.train.labels] >= 0)
    inlier_rows = inlier_rows[
        select_subset(inlier_rows.size, cfg.train_size, cfg.subset_seed, "dataset.train_size")
    ]
    clean = remap[raw.train.labels[inlier_rows]]
    q = flip_matrix(noise_kind, k, noise_level, noise_seed, noise_kwargs)
    noisy = clean if q is None else noise.corrupt_labels(clean, q, noise_seed, indices=inlier_rows)

    # ---- outlier pools: the dataset's other classes, or another dataset
    providers: list[ImageProvider] = [raw.train.images]
    test_providers: list[ImageProvider] = [raw.test.images]
    out_train_rows = out_test_rows = np.zeros(0, np.int64)
    out_pid = 0
    # Outlier-label keys: split rows for the open-set pool (disjoint from inlier rows); offset
    # rows for another dataset, so they never share a key with an inlier's flip.
    out_key_base = 0
    if has_pool:
        if cfg.outlier_source is None:
            pool_train = np.flatnonzero(remap[raw.train.labels] < 0)
            pool_test = np.flatnonzero(remap[raw.test.labels] < 0)
        else:
            out_raw = sources.load_outlier_raw(cfg)
            pool_train = np.arange(len(out_raw.train))
            pool_test = np.arange(len(out_raw.test))
            providers.append(out_raw.train.images)
            test_providers.append(out_raw.test.images)
            out_pid = 1
            out_key_base = 1 << 40
        if n_out + n_known > pool_train.size:
            raise DataError(
                f"dataset.num_outliers + dataset.num_known_outliers = {n_out + n_known} exceeds "
                f"the {pool_train.size} images in the outlier pool's training split; lower them."
            )
        pick = _rng(cfg.subset_seed, _OUTLIER_PICK_STREAM).permutation(pool_train.size)
        out_train_rows = pool_train[pick[: n_out + n_known]]
        n_test_out = _check_count(
            pool_test.size if cfg.num_test_outliers is None else cfg.num_test_outliers,
            "dataset.num_test_outliers",
        )
        if n_test_out > pool_test.size:
            raise DataError(
                f"dataset.num_test_outliers={n_test_out} exceeds the {pool_test.size} images in "
                "the outlier pool's test split; lower it or set it to None (all)."
            )
        pick = _rng(cfg.subset_seed, _TEST_OUTLIER_STREAM).permutation(pool_test.size)
        out_test_rows = np.sort(pool_test[pick[:n_test_out]])
    # The first N_out picked outliers get uniform labels, the next N_known the outlier label K.
    out_labels = np.concatenate(
        [
            uniform_labels(n_out, k, noise_seed, out_train_rows[:n_out] + out_key_base),
            np.full(n_known, k, np.int64),
        ]
    )

    n_in = inlier_rows.size
    n_o = n_out + n_known
    train = ExampleSource(
        providers,
        provider_id=np.concatenate([np.zeros(n_in, np.int8), np.full(n_o, out_pid, np.int8)]),
        rows=np.concatenate([inlier_rows, out_train_rows]),
        labels=np.concatenate([noisy, out_labels]),
        clean_labels=np.concatenate([clean, np.full(n_o, -1)]),
        is_outlier=np.concatenate([np.zeros(n_in, bool), np.ones(n_o, bool)]),
    )

    val = None
    n_val = _check_count(cfg.val_size, "dataset.val_size")
    if n_val:
        if n_val >= len(train):
            raise DataError(
                f"dataset.val_size={n_val} leaves no training examples of the {len(train)} "
                "(inliers and outliers); hold out fewer, e.g. a tenth."
            )
        perm = _rng(cfg.subset_seed, _VAL_STREAM).permutation(len(train))
        val = train.subset(np.sort(perm[:n_val]))
        train = train.subset(np.sort(perm[n_val:]))
        # Eqn 9's alpha and the counts describe the examples that are trained on.
        n_known = int(np.sum(train.is_outlier & (train.labels == k)))
        n_out = int(np.sum(train.is_outlier)) - n_known
        n_o = n_out + n_known

    test_in_rows = np.flatnonzero(remap[raw.test.labels] >= 0)
    if cfg.num_test_examples is not None:
        n_test = _check_count(cfg.num_test_examples, "dataset.num_test_examples")
        if not 0 < n_test <= test_in_rows.size:
            raise DataError(
                f"dataset.num_test_examples={n_test} must lie in [1, {test_in_rows.size}] (the "
                "inlier test images); set it to None to use them all."
            )
        pick = _rng(cfg.subset_seed, _TEST_SUBSET_STREAM).permutation(test_in_rows.size)
        test_in_rows = np.sort(test_in_rows[pick[:n_test]])
    test_clean = remap[raw.test.labels[test_in_rows]]
    test = ExampleSource(
        [raw.test.images],
        provider_id=np.zeros(test_in_rows.size, np.int8),
        rows=test_in_rows,
        labels=test_clean,
        clean_labels=test_clean,
        is_outlier=np.zeros(test_in_rows.size, bool),
    )
    test_noisy = None
    if has_pool:
        n_t, n_ti = out_test_rows.size, test_in_rows.size
        test_noisy = ExampleSource(
            test_providers,
            provider_id=np.concatenate([np.zeros(n_ti, np.int8), np.full(n_t, out_pid, np.int8)]),
            rows=np.concatenate([test_in_rows, out_test_rows]),
            labels=np.concatenate([test_clean, np.full(n_t, k)]),
            clean_labels=np.concatenate([test_clean, np.full(n_t, -1)]),
            is_outlier=np.concatenate([np.zeros(n_ti, bool), np.ones(n_t, bool)]),
        )

    pre = make_preprocessor(cfg, raw)
    return NoisyDataset(
        name=raw.name,
        train=train,
        test=test,
        test_noisy=test_noisy,
        val=val,
        num_classes=k,
        image_shape=pre.output_shape,
        q_true=q,
        alpha=noise.outlier_alpha(n_known, n_out) if n_o else None,
        class_names=tuple(raw.class_names[c] for c in inlier_classes),
        mean_image=pre.mean,
        train_labels=train.labels,
        train_clean_labels=train.clean_labels,
        train_is_outlier=train.is_outlier,
        num_outliers=n_out,
        num_known_outliers=n_known,
        preprocessor=pre,
        # From labels and rows only (not file metadata), so every host computes the same one.
        label_fingerprint=_fingerprint(
            np.frombuffer(raw.name.encode(), np.uint8),
            train.provider_id,
            train.rows,
            train.labels,
            train.clean_labels,
        ),
    )
