"""The on-disk cache of decoded images, label columns and mean images.

Several processes or hosts may fill the same cache at once, so every file is written to a temp
file and renamed; a file that cannot be read is treated as absent and rebuilt. Inside
:func:`rollback_on_data_error`, the files written are deleted again if the input is then
rejected, so bad input leaves no cache behind.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nlnoise.data.schema import DataError

# The cache files written inside the innermost rollback_on_data_error block (None: outside one).
_WRITTEN: contextvars.ContextVar[list[Path] | None] = contextvars.ContextVar(
    "nlnoise_cache_written", default=None)


@contextlib.contextmanager
def rollback_on_data_error() -> Iterator[None]:
    """Deletes the cache files written inside the block if it raises a :class:`DataError`.

    A source checks its own files before caching anything, but some input is only rejected
    later (a label file of the wrong length is checked against the decoded split).
    """
    outer = _WRITTEN.get()
    written: list[Path] = []
    token = _WRITTEN.set(written)
    try:
        yield
    except DataError:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    finally:
        _WRITTEN.reset(token)
    if outer is not None:
        outer.extend(written)


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
    """Writes ``array`` to ``path`` via a temp file + rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
        written = _WRITTEN.get()
        if written is not None:
            written.append(path)
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


def load_cached_splits(paths: dict[str, Path], lengths: dict[str, int]) -> dict | None:
    """Every split's cached uint8 images (memory-mapped) if all are present with the expected
    number of images, else None."""
    out = {}
    for split, path in paths.items():
        images = load_cached_npy(path, mmap=True)
        if images is None or images.ndim != 4 or images.shape[0] != lengths[split]:
            return None
        out[split] = images
    return out


def save_splits(paths: dict[str, Path], images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Writes every split's images (atomically, one file each) and returns them memory-mapped.

    Called only once all splits have been decoded and validated, so rejected input leaves no
    cache file behind.
    """
    for split, path in paths.items():
        atomic_save_npy(path, images[split])
    return {split: np.load(path, mmap_mode="r") for split, path in paths.items()}


def short_hash(*parts: Any) -> str:
    """16 hex digits of sha256 over ``repr(parts)``: a cache key."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
