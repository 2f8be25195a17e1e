"""Which examples of the training split are trained on: cross-fitting folds, the held-out split
and the examples a label file leaves out.

:func:`nlnoise.data.load` applies them in this order, after the training split (inliers and
outliers, labels flipped) is built:

1. :func:`fold_split` (``dataset.num_folds``, ``dataset.fold``): the ``fold``-th of
   ``num_folds`` seeded folds is taken out of training (``NoisyDataset.fold_out``), for
   cross-fitting (``nlnoise-audit --folds``);
2. :func:`hold_out` (``dataset.val_size``): a seeded held-out split with noisy labels, drawn from
   what the folds left;
3. :func:`leave_out`: examples whose label is -1 (``dataset.train_labels_path`` entries of -1)
   are dropped from every split.

Every draw depends only on ``subset_seed`` and the number of examples, and -1 entries are
dropped last, so a label file that relabels or leaves out examples of a run keeps that run's
folds and held-out split (``nlnoise-audit``'s ``relabelled_labels.npy`` and
``pruned_labels.npy``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nlnoise.data.examples import ExampleSource
from nlnoise.data.schema import DataError

# Stream tags so that the held-out split and the folds draw independent numbers.
VAL_STREAM = 0x0F411
FOLD_STREAM = 0xF01D5
# A training label of -1 (from a label file): the example is left out of training.
LEFT_OUT = -1


def seeded_rng(seed: int, stream: int) -> np.random.Generator:
    """A generator for one purpose (``stream``) of one seed."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream]))


def check_count(value: Any, field: str) -> int:
    """``value`` as a non-negative int (None: 0), or a DataError naming ``field``."""
    if value is None:
        return 0
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise DataError(f"{field}: must be a non-negative integer, got {value!r}.")
    return int(value)


def fold_of(num_examples: int, num_folds: int, seed: int) -> np.ndarray:
    """Each example's fold in ``[0, num_folds)``: ``[num_examples]`` int64. A seeded permutation
    dealt round-robin, so fold sizes differ by at most one."""
    perm = seeded_rng(seed, FOLD_STREAM).permutation(num_examples)
    folds = np.empty(num_examples, np.int64)
    folds[perm] = np.arange(num_examples) % num_folds
    return folds


def check_folds(num_folds: Any, fold: Any) -> tuple[int, int]:
    """``(num_folds, fold)`` checked: no folds (0), or ``fold`` in ``[0, num_folds)``."""
    k = check_count(num_folds, "dataset.num_folds")
    f = check_count(fold, "dataset.fold")
    if k == 1:
        raise DataError("dataset.num_folds: 1 fold would leave nothing to train on; use 0 (no "
                        "folds) or at least 2.")
    if k and f >= k:
        raise DataError(f"dataset.fold: {f} is not one of the {k} folds (0..{k - 1}); "
                        f"dataset.num_folds={k}.")
    if not k and f:
        raise DataError(f"dataset.fold: {f} without dataset.num_folds; set dataset.num_folds "
                        "(>= 2) or leave dataset.fold at 0.")
    return k, f


def fold_split(train: ExampleSource, num_folds: Any, fold: Any, subset_seed: int
               ) -> tuple[ExampleSource, ExampleSource | None]:
    """``(rest, fold_out)``: the ``fold``-th of ``num_folds`` seeded folds (:func:`fold_of`)
    taken out of ``train``; ``fold_out`` is None without folds (``num_folds=0``)."""
    k, f = check_folds(num_folds, fold)
    if not k:
        return train, None
    if len(train) < k:
        raise DataError(f"dataset.num_folds={k} exceeds the {len(train)} training examples; "
                        "use fewer folds.")
    folds = fold_of(len(train), k, subset_seed)
    return train.subset(np.flatnonzero(folds != f)), train.subset(np.flatnonzero(folds == f))


def hold_out(train: ExampleSource, val_size: int, subset_seed: int
             ) -> tuple[ExampleSource, ExampleSource | None]:
    """``(train, val)``: ``val_size`` random examples (``subset_seed``) held out with their
    noisy labels; ``val`` is None for 0."""
    n_val = check_count(val_size, "dataset.val_size")
    if not n_val:
        return train, None
    if n_val >= len(train):
        raise DataError(
            f"dataset.val_size={n_val} leaves no training examples of the {len(train)} "
            "(inliers and outliers); hold out fewer, e.g. a tenth."
        )
    perm = seeded_rng(subset_seed, VAL_STREAM).permutation(len(train))
    return train.subset(np.sort(perm[n_val:])), train.subset(np.sort(perm[:n_val]))


def leave_out(split: ExampleSource | None) -> ExampleSource | None:
    """``split`` without its examples labelled -1 (:data:`LEFT_OUT`); the same object when it
    has none (so splits without -1 labels are untouched)."""
    if split is None or not np.any(split.labels == LEFT_OUT):
        return split
    return split.subset(np.flatnonzero(split.labels != LEFT_OUT))
