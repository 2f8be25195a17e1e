"""Noise injection at the dataset level: class selection, training subsets, label flips,
outliers, the held-out split and the label fingerprint, as a pipeline of small stages.

:func:`load` runs, in order: the source (:mod:`nlnoise.data.sources`) -> the labels training
starts from (:mod:`nlnoise.data.labels`) -> :func:`class_remap` -> :func:`training_subset` ->
:func:`corrupt_inliers` -> :func:`pick_outliers` -> :func:`training_split` ->
:func:`~nlnoise.data.splits.fold_split` -> :func:`~nlnoise.data.splits.hold_out` ->
:func:`~nlnoise.data.splits.leave_out` -> :func:`test_splits` -> :func:`label_fingerprint`.
Every stage is a pure function of the config, the seeds and label vectors (no image is read),
so every host and every resumed run rebuilds identical labels:

- the training subset depends on ``(dataset, subset_seed, train_size)`` and is nested: with one
  seed, a smaller ``train_size`` is a subset of a larger one;
- a flipped label depends on ``(dataset, noise seed, Q, the example's index in its split)``
  (``noise.corrupt_labels`` is counter-based), so it does not change with ``train_size``;
- outlier choice depends on ``subset_seed``; outlier labels on the noise seed;
- labels from ``dataset.train_labels_path`` replace the source's before any of this, so flips
  act on them. An entry of -1 leaves its image out of training: it counts as a candidate inlier
  for ``train_size``, the folds and the held-out split, and is dropped after them
  (:mod:`nlnoise.data.splits`), so those splits stay those of the run the file came from.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import ml_collections
import numpy as np

from nlnoise import noise
from nlnoise.data import labels as labels_lib
from nlnoise.data import sources, splits
from nlnoise.data.cache import rollback_on_data_error
from nlnoise.data.examples import ExampleSource, NoisyDataset
from nlnoise.data.preprocess import make_preprocessor
from nlnoise.data.schema import DataError, resolve_config
from nlnoise.data.sources import ImageProvider, RawDataset
from nlnoise.data.splits import LEFT_OUT, hold_out
from nlnoise.data.splits import check_count as _check_count
from nlnoise.data.splits import seeded_rng as _rng

# Stream tags so that subsets, outlier picks and outlier labels draw independent numbers.
_SUBSET_STREAM = 0x5B5E7
_OUTLIER_PICK_STREAM = 0x0B71C
_TEST_OUTLIER_STREAM = 0x7E570
_OUTLIER_LABEL_STREAM = 0x0A7E1
_TEST_SUBSET_STREAM = 0x7E5B5
# Outlier-label keys of another dataset's images are offset by this, so they never share a key
# with an inlier's flip (open-set outliers are keyed by their own rows, disjoint from inliers').
_OTHER_DATASET_KEYS = 1 << 40


# --------------------------------------------------------------------------------------------
# Building blocks (pure, label-level)


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


def _fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
        h.update(b"|")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Stages of load


@dataclasses.dataclass(frozen=True, eq=False)
class ClassMap:
    """``remap[c]``: the label of source class ``c`` (-1 outside the inlier classes);
    ``classes``: the source ids of the K inlier classes, in label order."""

    remap: np.ndarray
    classes: tuple[int, ...]

    @property
    def k(self) -> int:
        return len(self.classes)


def class_remap(raw: RawDataset, inlier_classes: Any) -> ClassMap:
    """The ``dataset.inlier_classes`` selection (None: every class, unchanged)."""
    if inlier_classes is None:
        return ClassMap(np.arange(raw.num_classes), tuple(range(raw.num_classes)))
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
    return ClassMap(remap, classes)


def outlier_counts(cfg: ml_collections.ConfigDict, raw: RawDataset,
                   cmap: ClassMap) -> tuple[int, int, bool]:
    """``(N_out, N_known, has_pool)``, checked; the pool is the other classes (open set) or
    ``dataset.outlier_source``."""
    n_out = _check_count(cfg.num_outliers, "dataset.num_outliers")
    n_known = _check_count(cfg.num_known_outliers, "dataset.num_known_outliers")
    if n_known > n_out:
        raise DataError(
            f"dataset.num_known_outliers={n_known} exceeds dataset.num_outliers={n_out}: the "
            "known (label K) outliers are meant to be a small set next to the N_out randomly "
            "labelled ones (alpha = N_known / (N_known + N_out) <= 0.5). Lower "
            "num_known_outliers or raise num_outliers."
        )
    open_set = cfg.inlier_classes is not None and cmap.k < raw.num_classes
    has_pool = cfg.outlier_source is not None or open_set
    if (n_out or n_known) and not has_pool:
        raise DataError(
            "dataset.num_outliers: outliers need a source: set dataset.inlier_classes (the other "
            "classes become outliers, e.g. (0, 1, 2, 3, 4) for CIFAR-10) or "
            "dataset.outlier_source (a TFDS name)."
        )
    return n_out, n_known, has_pool


def remap_labels(given: np.ndarray, cmap: ClassMap) -> np.ndarray:
    """Source labels -> labels in ``[0, K)``; -1 for other classes and for left-out (-1)
    entries (tell those apart with ``given == -1``)."""
    return np.where(given >= 0, cmap.remap[np.maximum(given, 0)], -1)


def training_subset(given: np.ndarray, cmap: ClassMap, train_size: int | None,
                    subset_seed: int) -> np.ndarray:
    """Sorted training-split rows of the inliers trained on (``dataset.train_size`` of them).

    Rows labelled -1 (left out) are candidates too, so that leaving examples out does not move
    the subset; :func:`~nlnoise.data.splits.leave_out` drops them later."""
    rows = np.flatnonzero((remap_labels(given, cmap) >= 0) | (given == LEFT_OUT))
    return rows[select_subset(rows.size, train_size, subset_seed, "dataset.train_size")]


@dataclasses.dataclass(frozen=True, eq=False)
class Inliers:
    """The inliers trained on: training-split ``rows``, training ``labels`` (-1: left out) and
    ``clean`` labels (-1 unknown) in ``[0, K)``, and Q* (see :class:`NoisyDataset`)."""

    rows: np.ndarray
    labels: np.ndarray
    clean: np.ndarray
    q_true: np.ndarray | None


def corrupt_inliers(start: labels_lib.SourceLabels, cmap: ClassMap, rows: np.ndarray, *,
                    noise_kind: str, noise_level: float, noise_seed: int,
                    noise_kwargs: dict | None) -> Inliers:
    """The inliers' labels: the given ones, flipped with ``noise_kind`` unless it is ``given``
    (use them as they are), keyed by ``rows`` so a flip does not depend on the subset."""
    given = remap_labels(start.given[rows], cmap)  # -1: left out
    clean = (np.full(rows.size, -1, np.int64) if start.clean is None
             else cmap.remap[start.clean[rows]])
    q = None if noise_kind == "given" else labels_lib.flip_matrix(
        noise_kind, cmap.k, noise_level, noise_seed, noise_kwargs)
    kept = given >= 0
    noisy = given.copy()
    if q is not None:
        noisy[kept] = noise.corrupt_labels(given[kept], q, noise_seed, indices=rows[kept])
    if start.clean is None:
        q_true = None
    elif not start.from_file and noise_kind != "given":
        q_true = q  # the flips were drawn from Q* itself
    else:
        q_true = labels_lib.realized_q(clean[kept], noisy[kept], cmap.k)
    return Inliers(rows=rows, labels=noisy, clean=clean, q_true=q_true)


@dataclasses.dataclass(frozen=True, eq=False)
class Outliers:
    """Outlier images picked from a pool: ``train_rows`` (the first N_out labelled uniformly,
    the next N_known labelled K), ``test_rows`` for ``test_noisy``, and the providers they are
    rows of (None: the main dataset's own, for the open-set pool)."""

    train_rows: np.ndarray
    test_rows: np.ndarray
    labels: np.ndarray
    num_outliers: int
    num_known: int
    train_images: ImageProvider | None = None
    test_images: ImageProvider | None = None


def pick_outliers(cfg: ml_collections.ConfigDict, raw: RawDataset, given: np.ndarray,
                  cmap: ClassMap, n_out: int, n_known: int, noise_seed: int) -> Outliers:
    """Picks training and test outliers from the pool (``subset_seed``) and labels them
    (``noise_seed``)."""
    other = None
    if cfg.outlier_source is None:
        pool_train = np.flatnonzero((given >= 0) & (remap_labels(given, cmap) < 0))
        pool_test = np.flatnonzero(cmap.remap[raw.test.labels] < 0)
    else:
        other = sources.load_outlier_raw(cfg)
        pool_train, pool_test = np.arange(len(other.train)), np.arange(len(other.test))
    if n_out + n_known > pool_train.size:
        raise DataError(
            f"dataset.num_outliers + dataset.num_known_outliers = {n_out + n_known} exceeds "
            f"the {pool_train.size} images in the outlier pool's training split; lower them."
        )
    pick = _rng(cfg.subset_seed, _OUTLIER_PICK_STREAM).permutation(pool_train.size)
    train_rows = pool_train[pick[: n_out + n_known]]
    n_test = _check_count(
        pool_test.size if cfg.num_test_outliers is None else cfg.num_test_outliers,
        "dataset.num_test_outliers",
    )
    if n_test > pool_test.size:
        raise DataError(
            f"dataset.num_test_outliers={n_test} exceeds the {pool_test.size} images in "
            "the outlier pool's test split; lower it or set it to None (all)."
        )
    pick = _rng(cfg.subset_seed, _TEST_OUTLIER_STREAM).permutation(pool_test.size)
    test_rows = np.sort(pool_test[pick[:n_test]])
    key_base = 0 if other is None else _OTHER_DATASET_KEYS
    out_labels = np.concatenate([
        uniform_labels(n_out, cmap.k, noise_seed, train_rows[:n_out] + key_base),
        np.full(n_known, cmap.k, np.int64),
    ])
    return Outliers(train_rows, test_rows, out_labels, n_out, n_known,
                    None if other is None else other.train.images,
                    None if other is None else other.test.images)


def _mix(main: ImageProvider, inlier_rows: np.ndarray, other: ImageProvider | None,
         outlier_rows: np.ndarray) -> tuple[list[ImageProvider], np.ndarray, np.ndarray]:
    """Providers, provider ids and rows of inliers followed by outliers."""
    providers = [main] if other is None else [main, other]
    pid = np.concatenate([np.zeros(inlier_rows.size, np.int8),
                          np.full(outlier_rows.size, len(providers) - 1, np.int8)])
    return providers, pid, np.concatenate([inlier_rows, outlier_rows])


def training_split(raw: RawDataset, inliers: Inliers, outliers: Outliers | None) -> ExampleSource:
    """Inliers followed by the training outliers (clean label -1)."""
    out_rows = np.zeros(0, np.int64) if outliers is None else outliers.train_rows
    out_labels = np.zeros(0, np.int64) if outliers is None else outliers.labels
    providers, pid, rows = _mix(raw.train.images, inliers.rows,
                                None if outliers is None else outliers.train_images, out_rows)
    n_in, n_o = inliers.rows.size, out_rows.size
    return ExampleSource(
        providers, provider_id=pid, rows=rows,
        labels=np.concatenate([inliers.labels, out_labels]),
        clean_labels=np.concatenate([inliers.clean, np.full(n_o, -1)]),
        is_outlier=np.concatenate([np.zeros(n_in, bool), np.ones(n_o, bool)]),
    )


def test_splits(cfg: ml_collections.ConfigDict, raw: RawDataset, cmap: ClassMap,
                outliers: Outliers | None) -> tuple[ExampleSource, ExampleSource | None]:
    """``(test, test_noisy)``: the inlier test images (``dataset.num_test_examples`` of them),
    and with an outlier pool the same plus the test outliers (label K)."""
    rows = np.flatnonzero(cmap.remap[raw.test.labels] >= 0)
    if cfg.num_test_examples is not None:
        n_test = _check_count(cfg.num_test_examples, "dataset.num_test_examples")
        if not 0 < n_test <= rows.size:
            raise DataError(
                f"dataset.num_test_examples={n_test} must lie in [1, {rows.size}] (the "
                "inlier test images); set it to None to use them all."
            )
        pick = _rng(cfg.subset_seed, _TEST_SUBSET_STREAM).permutation(rows.size)
        rows = np.sort(rows[pick[:n_test]])
    labels = cmap.remap[raw.test.labels[rows]]
    test = ExampleSource([raw.test.images], provider_id=np.zeros(rows.size, np.int8), rows=rows,
                         labels=labels, clean_labels=labels,
                         is_outlier=np.zeros(rows.size, bool))
    if outliers is None:
        return test, None
    providers, pid, all_rows = _mix(raw.test.images, rows, outliers.test_images,
                                    outliers.test_rows)
    n_t = outliers.test_rows.size
    test_noisy = ExampleSource(
        providers, provider_id=pid, rows=all_rows,
        labels=np.concatenate([labels, np.full(n_t, cmap.k)]),
        clean_labels=np.concatenate([labels, np.full(n_t, -1)]),
        is_outlier=np.concatenate([np.zeros(rows.size, bool), np.ones(n_t, bool)]),
    )
    return test, test_noisy


def label_fingerprint(name: str, train: ExampleSource) -> str:
    """sha256 over the dataset name and the training rows and labels: from labels and rows only
    (not file metadata), so every host computes the same one."""
    return _fingerprint(np.frombuffer(name.encode(), np.uint8), train.provider_id, train.rows,
                        train.labels, train.clean_labels)


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
    """Reads the configured dataset and applies its labels, training-set size, flips and
    outliers (the stages in the module docstring).

    Args:
      dataset_cfg: the training config's ``dataset`` sub-dict (missing keys take defaults).
      noise_kind, noise_level, noise_seed, noise_kwargs: the ``corruption`` config: a
        ``noise.make`` family, ``"custom"`` (with ``noise_kwargs["q"]``) or ``"given"`` (use the
        labels as they are); its level and seed, and extra arguments (``m``, ``groups``,
        ``confusion``/``confusion_path``).

    Raises:
      DataError: naming the config field or file and the fix.
    """
    cfg = resolve_config(dataset_cfg)
    with rollback_on_data_error():
        return _load(cfg, noise_kind, noise_level, noise_seed, noise_kwargs)


def _load(cfg: ml_collections.ConfigDict, noise_kind: str, noise_level: float, noise_seed: int,
          noise_kwargs: dict | None) -> NoisyDataset:
    # A malformed label file fails here, before any image is decoded.
    file_labels = (None if cfg.train_labels_path is None
                   else labels_lib.read_label_file(cfg.train_labels_path))
    splits.check_folds(cfg.num_folds, cfg.fold)
    raw = sources.load_raw(cfg)
    start = labels_lib.source_labels(raw, cfg, file_labels)
    cmap = class_remap(raw, cfg.inlier_classes)
    n_out, n_known, has_pool = outlier_counts(cfg, raw, cmap)
    rows = training_subset(start.given, cmap, cfg.train_size, cfg.subset_seed)
    inliers = corrupt_inliers(start, cmap, rows, noise_kind=noise_kind, noise_level=noise_level,
                              noise_seed=noise_seed, noise_kwargs=noise_kwargs)
    outliers = (pick_outliers(cfg, raw, start.given, cmap, n_out, n_known, noise_seed)
                if has_pool else None)
    train, fold_out = splits.fold_split(training_split(raw, inliers, outliers), cfg.num_folds,
                                        cfg.fold, cfg.subset_seed)
    train, val = hold_out(train, cfg.val_size, cfg.subset_seed)
    train, val, fold_out = (splits.leave_out(s) for s in (train, val, fold_out))
    for split, what in ((train, "training split"), (val, "held-out split (dataset.val_size)")):
        if split is not None and not len(split):
            raise DataError(f"dataset.train_labels_path: every example of the {what} is "
                            "labelled -1 (left out of training); keep some labelled.")
    # Eqn 9's alpha and the counts describe the examples that are trained on.
    n_known = int(np.sum(train.is_outlier & (train.labels == cmap.k)))
    n_out = int(np.sum(train.is_outlier)) - n_known
    test, test_noisy = test_splits(cfg, raw, cmap, outliers)
    pre = make_preprocessor(cfg, raw)
    return NoisyDataset(
        name=raw.name,
        train=train,
        test=test,
        test_noisy=test_noisy,
        val=val,
        fold_out=fold_out,
        num_classes=cmap.k,
        image_shape=pre.output_shape,
        q_true=inliers.q_true,
        alpha=noise.outlier_alpha(n_known, n_out) if n_out + n_known else None,
        class_names=tuple(raw.class_names[c] for c in cmap.classes),
        mean_image=pre.mean,
        train_labels=train.labels,
        train_clean_labels=train.clean_labels,
        train_is_outlier=train.is_outlier,
        num_outliers=n_out,
        num_known_outliers=n_known,
        preprocessor=pre,
        label_fingerprint=label_fingerprint(raw.name, train),
        has_clean_labels=start.clean is not None,
        source_train_labels=start.given,
        source_classes=cmap.classes,
    )
