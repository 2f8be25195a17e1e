"""The training labels a run starts from, before any synthetic corruption.

``dataset.train_labels_path`` replaces the source's training labels with a file's (``.npy``, or
``.csv`` with one column and an optional header; one label per training image, in the source's
order). An entry of -1 leaves its image out of training (the only negative value allowed; see
:mod:`nlnoise.data.splits`). ``dataset.clean_labels`` says which labels are clean: None (the
source's, unless a file replaces them, when none are known), ``"source"`` (the source's, even
with a file: the file's labels are then noisy labels of known clean ones) or ``"none"`` (no
clean label is known).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import ml_collections
import numpy as np

from nlnoise import noise
from nlnoise.data.schema import DataError
from nlnoise.data.sources.base import RawDataset
from nlnoise.data.splits import LEFT_OUT

_FORMAT = ("Write one integer class index per training image, in the source's training order "
           "(-1 leaves the image out of training): np.save(path, labels.astype(np.int64)), or a "
           ".csv with one column (an optional header line first).")


@dataclasses.dataclass(frozen=True, eq=False)
class SourceLabels:
    """Labels of every image of the source's training split (``[N_train]`` each).

    Attributes:
      given: the labels training starts from, in ``[0, K_source)``, or -1 (left out of
        training; label files only).
      clean: the clean reference, or None when no clean label is known.
      from_file: whether ``given`` came from ``dataset.train_labels_path``.
    """

    given: np.ndarray
    clean: np.ndarray | None
    from_file: bool


def read_label_file(path: str) -> np.ndarray:
    """int64 ``[N]`` from a ``.npy`` (integer vector) or a one-column ``.csv``; range and length
    are checked against the dataset by :func:`source_labels`."""
    file = Path(path).expanduser()
    field = f"dataset.train_labels_path ({file})"
    if file.suffix.lower() not in (".npy", ".csv"):
        raise DataError(f"{field}: must end in .npy or .csv. {_FORMAT}")
    if not file.is_file():
        raise DataError(f"{field}: no such file; fix the path. {_FORMAT}")
    if file.suffix.lower() == ".csv":
        return _read_csv(file, field)
    try:
        arr = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{field}: cannot read it as .npy ({e}). {_FORMAT}") from None
    if arr.ndim != 1:
        raise DataError(f"{field}: holds an array of shape {arr.shape}, expected a 1-D vector. "
                        f"{_FORMAT}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{field}: holds {arr.dtype} values, expected integers. {_FORMAT}")
    return arr.astype(np.int64)


def _read_csv(file: Path, field: str) -> np.ndarray:
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{field}: cannot read it as text ({e}). {_FORMAT}") from None
    values = []
    for n, line in enumerate(lines, start=1):
        text = line.strip().strip('"').strip()
        if not text:
            continue
        if any(sep in text for sep in (",", ";", "\t")):
            raise DataError(f"{field}: line {n} ({line!r}) has several columns; expected one. "
                            f"{_FORMAT}")
        try:
            values.append(int(text))
        except ValueError:
            if not values and n == _first_nonblank(lines):
                continue  # a header
            raise DataError(f"{field}: line {n} ({line!r}) is not an integer class index. "
                            f"{_FORMAT}") from None
    return np.asarray(values, np.int64)


def _first_nonblank(lines: list[str]) -> int:
    return next(n for n, line in enumerate(lines, start=1) if line.strip())


def source_labels(raw: RawDataset, cfg: ml_collections.ConfigDict,
                  file_labels: np.ndarray | None) -> SourceLabels:
    """The training split's given and clean labels under ``dataset.train_labels_path`` (already
    read into ``file_labels``) and ``dataset.clean_labels``."""
    source = raw.train.labels
    if file_labels is None:
        clean = None if cfg.clean_labels == "none" else source
        return SourceLabels(given=source, clean=clean, from_file=False)
    field = f"dataset.train_labels_path ({Path(cfg.train_labels_path).expanduser()})"
    if len(file_labels) != len(source):
        raise DataError(f"{field}: holds {len(file_labels)} labels but the training split of "
                        f"{raw.name} has {len(source)} images. {_FORMAT}")
    hint = (f"Labels must be class indices 0..{raw.num_classes - 1} (classes: "
            f"{', '.join(raw.class_names[:12])}{', ...' if raw.num_classes > 12 else ''}), or -1 "
            "to leave an image out of training.")
    negative = file_labels < LEFT_OUT
    if negative.any():
        n = int(np.argmax(negative))
        raise DataError(f"{field}: {int(negative.sum())} labels below -1; first is "
                        f"{file_labels[n]} at index {n}. The only negative label allowed is -1 "
                        f"(left out of training). {hint}")
    left_out = file_labels == LEFT_OUT
    given = noise.check_labels(np.where(left_out, 0, file_labels), raw.num_classes, field,
                               error=DataError, hint=hint)
    given[left_out] = LEFT_OUT
    clean = source if cfg.clean_labels == "source" else None
    return SourceLabels(given=given, clean=clean, from_file=True)


def realized_q(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """``q[j, i]`` = fraction of examples of clean class ``i`` labelled ``j`` (``[K, K]``,
    columns sum to 1), over the examples whose clean label is known (``>= 0``). A class with
    no such example gets the identity's column: nothing is known of its noise."""
    known = clean >= 0
    q = noise.realized_transition(clean[known], noisy[known], num_classes)
    empty = np.isnan(q).any(axis=0)
    q[:, empty] = np.eye(num_classes)[:, empty]
    return q


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
