"""Evaluating a train state on whole splits (clean test, noisy test with outliers, held-out val).

A split does not change during a run, so :class:`Evaluator` preprocesses it once, on its first
evaluation, and keeps it on the devices as ``[num_batches, eval_batch_size, ...]`` arrays
sharded over ``data`` along the batch axis. Each evaluation is then one jitted pass
(``lax.map`` of :func:`nlnoise.step.eval_step` or :func:`~nlnoise.step.val_step` over the
batches) and one gather of the per-example outputs to every process
(``process_allgather``): no host preprocessing, transfer or wait per batch. A split whose
images would take more than :data:`DEVICE_CACHE_MAX_BYTES` on a process is streamed batch by
batch instead (ImageNet's validation set). Both ways give the same per-example outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nlnoise import data, evaluate, sharding
from nlnoise import step as step_lib

# Preprocessed images a process may keep on its devices per split (float32 bytes). CIFAR-10's
# test set is 123 MB; ImageNet's 50k validation images at 227x227 would be 31 GB.
DEVICE_CACHE_MAX_BYTES = 2 << 30


def _stacked_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """``[num_batches, batch, ...]``: the batch axis split over ``data``."""
    return NamedSharding(mesh, P(None, sharding.DATA))


class Evaluator:
    """The evaluation of one run: ``evaluator(state)`` gives the record's evaluation fields.

    Args:
      dataset_cfg: the config's ``dataset`` section (its ``eval_batch_size`` is the global
        batch of the pass; read options for the one-time preprocessing).
      ds: the loaded dataset; ``ds.test`` always, ``ds.test_noisy`` and ``ds.val`` if present.
      mesh, state_sharding: where the state lives (``sharding.state_shardings``).
      num_classes: K, the inlier classes (the confusion matrix is ``[K, K]``).
      q_true: Q* ``[K_out, K_out]`` (``q[j, i] = p(noisy=j | true=i)``), or None if unknown.
      max_cached_bytes: per-process budget for keeping a split on device; larger ones stream.
    """

    def __init__(self, dataset_cfg: Any, ds: data.NoisyDataset, mesh: jax.sharding.Mesh,
                 state_sharding: Any, *, num_classes: int, q_true: np.ndarray | None,
                 max_cached_bytes: int = DEVICE_CACHE_MAX_BYTES):
        self.dataset_cfg, self.ds, self.mesh = dataset_cfg, ds, mesh
        self.batch_size = int(dataset_cfg.eval_batch_size)
        self.num_classes, self.q_true = num_classes, q_true
        self.max_cached_bytes = max_cached_bytes
        self.state_sharding = state_sharding
        self._passes: dict[Callable, Callable] = {}
        self._steps: dict[Callable, Callable] = {}
        self._cache: dict[int, tuple[Any, dict[str, jax.Array], dict[str, np.ndarray]]] = {}

    def _pass(self, fn: Callable) -> Callable:
        """``fn`` mapped over stacked batches in one jitted program (built once per ``fn``)."""
        if fn not in self._passes:
            stacked = _stacked_sharding(self.mesh)
            self._passes[fn] = jax.jit(
                lambda state, batches: jax.lax.map(lambda b: fn(state, b), batches),
                in_shardings=(self.state_sharding, stacked), out_shardings=stacked)
        return self._passes[fn]

    def _batches(self, source: data.ExampleSource):
        return data.eval_batches(source, self.dataset_cfg, self.ds,
                                 global_batch_size=self.batch_size,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())

    def fits_on_device(self, source: data.ExampleSource) -> bool:
        """Whether ``source``'s preprocessed images fit this process's device budget."""
        padded = math.ceil(len(source) / self.batch_size) * self.batch_size
        nbytes = padded * math.prod(self.ds.image_shape) * 4 // jax.process_count()
        return nbytes <= self.max_cached_bytes

    def _cached(self, source: data.ExampleSource):
        """The split on device (image, label, mask) and its global host label/outlier/mask."""
        if id(source) not in self._cache:
            local = list(self._batches(source))
            stacked = {k: np.stack([b[k] for b in local])
                       for k in ("image", "label", "mask", "is_outlier")}
            arrays = data.make_global_batch(stacked, _stacked_sharding(self.mesh))
            host = multihost_utils.process_allgather(
                {k: arrays[k] for k in ("label", "mask", "is_outlier")}, tiled=True)
            host = {k: np.asarray(v).reshape(-1) for k, v in host.items()}
            del arrays["is_outlier"]  # no step reads it: only the host copy is kept
            # The source is kept with its arrays so that its id is not reused while cached.
            self._cache[id(source)] = (source, arrays, host)
        return self._cache[id(source)][1:]

    def outputs(self, state: step_lib.TrainState, source: data.ExampleSource,
                fn: Callable = step_lib.eval_step) -> dict[str, np.ndarray]:
        """``fn``'s per-example outputs over ``source`` plus ``label`` and ``is_outlier``, as
        host arrays of the real (unpadded) examples in split order, on every process.

        ``fn(state, batch)`` is a per-example step such as :func:`~nlnoise.step.eval_step` or
        :func:`~nlnoise.step.val_step` (outputs ``[B, ...]``, including ``mask``)."""
        if not self.fits_on_device(source):
            return self._streamed(state, source, fn)
        arrays, host = self._cached(source)
        out = multihost_utils.process_allgather(self._pass(fn)(state, arrays), tiled=True)
        out = {k: np.asarray(v).reshape(-1, *np.shape(v)[2:]) for k, v in out.items()}
        out.update(label=host["label"], is_outlier=host["is_outlier"])
        keep = host["mask"].astype(bool)
        return {k: v[keep] for k, v in out.items()}

    def _streamed(self, state, source, fn) -> dict[str, np.ndarray]:
        outs: dict[str, list[np.ndarray]] = {}
        batch_sh = sharding.batch_sharding(self.mesh)
        for local in self._batches(source):
            batch = data.make_global_batch(
                {"image": local["image"], "label": local["label"], "mask": local["mask"]},
                batch_sh)
            if fn not in self._steps:
                self._steps[fn] = step_lib.jit_eval_step(self.mesh, self.state_sharding, fn)
            o = self._steps[fn](state, batch)
            extra = data.make_global_batch(
                {"is_outlier": local["is_outlier"], "label": local["label"]}, batch_sh)
            o = multihost_utils.process_allgather({**o, **extra}, tiled=True)
            for k, v in o.items():
                outs.setdefault(k, []).append(np.asarray(v))
        out = {k: np.concatenate(v) for k, v in outs.items()}
        keep = out["mask"].astype(bool)
        return {k: v[keep] for k, v in out.items()}

    def __call__(self, state: step_lib.TrainState) -> dict[str, Any]:
        """The evaluation fields of a metrics record: ``test_error`` (clean, noise layer
        removed); with outliers ``outlier_ap``; with a held-out split ``val_noisy_loss`` and
        ``val_noisy_error``; for a noise model ``q_trace`` (and ``q_rel_l1``,
        ``q_star_trace`` if Q* is known). Also ``_confusion`` (``[K, K]``, ``c[pred, true]``)
        and, with outliers, ``_pr`` (the PR curve), which are not logged as metrics."""
        res = self.outputs(state, self.ds.test)
        out: dict[str, Any] = {"test_error": 1.0 - float(res["correct"].mean()),
                               "_confusion": evaluate.confusion(res["pred"], res["label"],
                                                                self.num_classes)}
        if self.ds.test_noisy is not None:
            noisy = self.outputs(state, self.ds.test_noisy)
            det = evaluate.outlier_detection(noisy["outlier_score"], noisy["is_outlier"])
            out["outlier_ap"] = det["average_precision"]
            out["_pr"] = det
        if self.ds.val is not None:
            val = self.outputs(state, self.ds.val, step_lib.val_step)
            out["val_noisy_loss"] = float(val["nll"].mean())
            out["val_noisy_error"] = 1.0 - float(val["noisy_correct"].mean())
        if state.noise_model != "none":
            q = np.asarray(jax.device_get(state.q), np.float64)
            out.update(evaluate.q_metrics(q, self.q_true))
        return out
