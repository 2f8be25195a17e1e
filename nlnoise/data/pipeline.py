"""The grain input pipeline: sharded, seeded, resumable training batches and padded eval batches.

Training, for global batch ``G`` over ``P`` processes (local batch ``b = G // P``)::

    MapDataset.range(N).seed(seed).shuffle()     # epoch e uses permutation seed + e
      .batch(G, drop_remainder=True)             # global batches of *indices*, per epoch
      .repeat()                                  # infinite; reshuffles every epoch
      .map_with_index(read + preprocess)         # process p reads only indices [p*b, (p+1)*b)
      .to_iter_dataset(ReadOptions(...))         # threaded prefetch; get_state()/set_state()

Only integer indices are batched globally, so each process reads just its own images, and the
global batch of a step is the same whatever the process count. Each epoch covers
``N - N % G`` distinct examples; the ``N % G`` left over differ from epoch to epoch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from nlnoise.data.examples import ExampleSource, NoisyDataset
from nlnoise.data.preprocess import Preprocessor
from nlnoise.data.schema import DataError, resolve_config


def _read_options(cfg) -> grain.ReadOptions:
    return grain.ReadOptions(
        num_threads=int(cfg.num_threads), prefetch_buffer_size=int(cfg.prefetch_buffer_size)
    )


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
    if int(global_batch_size) != global_batch_size or global_batch_size < 1:
        raise DataError(
            f"global_batch_size: must be a positive integer, got {global_batch_size!r}."
        )
    if process_count < 1 or not 0 <= process_index < process_count:
        raise DataError(
            f"process_index={process_index} must lie in [0, process_count={process_count})."
        )
    if global_batch_size % process_count:
        raise DataError(
            f"global_batch_size={global_batch_size} is not divisible by process_count="
            f"{process_count}; every process needs the same local batch size."
        )
    return global_batch_size // process_count


def steps_per_epoch(ds: NoisyDataset, global_batch_size: int) -> int:
    """Full global batches per epoch (the remainder of each epoch is dropped)."""
    return len(ds.train) // int(global_batch_size)


@dataclasses.dataclass(frozen=True)
class _TrainBatch:
    """Step index + global index batch -> this process's preprocessed local batch."""

    source: ExampleSource
    preprocessor: Preprocessor
    seed: int
    steps_per_epoch: int
    start: int
    stop: int

    def __call__(self, step: int, global_indices: np.ndarray) -> dict[str, np.ndarray]:
        idx = np.asarray(global_indices[self.start : self.stop], np.int64)
        batch = self.source.get_batch(idx)
        batch["image"] = self.preprocessor(
            batch["image"],
            train=True,
            keys=idx,
            seed=self.seed,
            epoch=step // self.steps_per_epoch,
        )
        return batch


def train_iterator(
    ds: NoisyDataset,
    dataset_cfg: Any,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DatasetIterator:
    """Infinite iterator of this process's training batches (dicts of numpy arrays).

    Each batch has ``global_batch_size // process_count`` examples: ``image`` float32
    ``[b, H, W, C]`` (preprocessed), ``label`` int32 (noisy), ``clean_label`` int32 (-1 for
    outliers), ``is_outlier`` bool and ``index`` int64 (position in ``ds.train``).

    Guarantees: epoch ``e`` is a permutation seeded by ``seed + e``; within an epoch, the union
    over processes of all batches holds ``steps_per_epoch * global_batch_size`` distinct
    examples, i.e. all but ``len(ds.train) % global_batch_size``. ``get_state()`` /
    ``set_state()`` (or grain's orbax ``CheckpointSave``/``CheckpointRestore``) resume exactly.
    """
    cfg = resolve_config(dataset_cfg)
    b = _local_batch_size(global_batch_size, process_index, process_count)
    n = len(ds.train)
    if n < global_batch_size:
        raise DataError(
            f"global_batch_size={global_batch_size} exceeds the {n} training examples "
            "(dataset.train_size plus outliers); lower the batch size or add data."
        )
    if not 0 <= int(seed) < 2**32:
        raise DataError(f"seed: must be in [0, 2**32), got {seed!r}.")
    fn = _TrainBatch(
        source=ds.train,
        preprocessor=ds.preprocessor,
        seed=int(seed),
        steps_per_epoch=n // global_batch_size,
        start=process_index * b,
        stop=(process_index + 1) * b,
    )
    pipeline = (
        grain.MapDataset.range(n)
        .seed(int(seed))
        .shuffle()
        .batch(int(global_batch_size), drop_remainder=True)
        .repeat()
        .map_with_index(fn)
    )
    return pipeline.to_iter_dataset(_read_options(cfg)).__iter__()


@dataclasses.dataclass(frozen=True)
class _EvalBatch:
    source: ExampleSource
    preprocessor: Preprocessor
    global_batch_size: int
    local_batch_size: int
    process_index: int

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        start = step * self.global_batch_size + self.process_index * self.local_batch_size
        pos = start + np.arange(self.local_batch_size, dtype=np.int64)
        mask = pos < len(self.source)
        idx = np.where(mask, pos, 0)
        batch = self.source.get_batch(idx)
        batch["image"] = self.preprocessor(batch["image"], train=False)
        batch["index"] = np.where(mask, idx, -1)
        batch["mask"] = mask
        return batch


def eval_batches(
    source: ExampleSource,
    dataset_cfg: Any,
    ds: NoisyDataset,
    *,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Finite iterator of local eval batches covering ``source`` exactly once over processes.

    Every process yields ``ceil(len(source) / global_batch_size)`` batches of
    ``global_batch_size // process_count`` examples (fixed shapes for jit). Step ``s`` of
    process ``p`` holds positions ``s*G + p*b + [0, b)``; positions past the end are padding
    with ``mask == False`` and ``index == -1`` (their other fields repeat example 0).
    """
    cfg = resolve_config(dataset_cfg)
    b = _local_batch_size(global_batch_size, process_index, process_count)
    num_steps = math.ceil(len(source) / global_batch_size)
    fn = _EvalBatch(source, ds.preprocessor, int(global_batch_size), b, int(process_index))
    if num_steps == 0:
        return iter(())
    return iter(grain.MapDataset.range(num_steps).map(fn).to_iter_dataset(_read_options(cfg)))


def make_global_batch(local_batch: dict[str, Any], sharding: Any) -> dict[str, Any]:
    """Assembles per-process local batches into global ``jax.Array`` s.

    ``sharding`` is one ``jax.sharding.Sharding`` for every key (typically
    ``NamedSharding(mesh, P("data"))``, sharding the batch axis) or a dict of them per key.
    Every process must call this with its own local batch.
    """
    import jax

    out = {}
    for key, value in local_batch.items():
        s = sharding[key] if isinstance(sharding, dict) else sharding
        out[key] = jax.make_array_from_process_local_data(s, np.asarray(value))
    return out
