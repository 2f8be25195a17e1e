"""Predictions for a label audit of nlnoise runs: in-sample from a finished run, or out-of-fold
from K cross-fitted runs. :mod:`nlnoise.audit_report` turns them into the audit's files and
``nlnoise-audit`` (:mod:`nlnoise.audit_cli`) is the command.

    inp = audit_run.in_sample("runs/mine")                     # best/ if the run has it
    inp = audit_run.cross_fit(cfg, folds=2, workdir="runs/cf") # trains (or reads) 2 folds
    audit_report.write_audit("runs/mine-audit", inp)

Predictions are the clean-label softmax ``softmax(f(x))`` (the noise layer removed), ``[N,
K_out]``, for the examples of the run's training split (``NoisyDataset.train``, in its order).
A run is only read: :func:`nlnoise.restore.load_for_prediction` creates, moves or writes nothing in
its directory. Q is ``q[j, i] = p(noisy=j | true=i)``, ``[K_noisy, K_true]``, columns sum to 1.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nlnoise import config as config_lib
from nlnoise import data, resolve, restore
from nlnoise import run as run_lib
from nlnoise import step as step_lib
from nlnoise import workdir as workdir_lib


class AuditError(ValueError):
    """Bad input to an audit (flags, directories); the message names it and the fix."""


@dataclasses.dataclass
class AuditInput:
    """What an audit is computed from.

    Attributes:
      ds: the dataset of the audited run (for cross-fitting: of the config without folds).
      examples: the audited examples, ``ds.train``; position ``n`` is the ``index`` column.
      pred_probs: ``[N, K_out]`` float32 clean-label softmax (rows sum to 1).
      q_learned: ``[K_out, K_out]`` learned Q (the mean over folds when cross-fitted), or None
        when the run's noise model is not ``learned``.
      q_true: Q* of the run's output space when known, else None.
      class_names: ``K_out`` names (``"outlier"`` last for a model with an outlier class).
      fold: ``[N]`` the fold whose model predicted each example (cross-fitting), else None.
      identity: what makes this audit (mode, run directory, parameters, folds, config); an
        output directory holding an audit with another identity is not replaced silently.
      info: where the parameters came from (steps, directories), for the report.
    """

    ds: data.NoisyDataset
    examples: data.ExampleSource
    pred_probs: np.ndarray
    q_learned: np.ndarray | None
    q_true: np.ndarray | None
    class_names: list[str]
    fold: np.ndarray | None
    identity: dict[str, Any]
    info: dict[str, Any]


def predict_probs(state: step_lib.TrainState, source: data.ExampleSource, dataset_cfg: Any,
                  ds: data.NoisyDataset, *, batch_size: int | None = None,
                  progress: bool = True, desc: str = "predicting") -> np.ndarray:
    """``softmax(f(x))`` of every example of ``source`` (noise layer removed,
    :func:`nlnoise.step.predict`): ``[N, K_out]`` float32 in ``source``'s order.

    Batches of ``batch_size`` (default ``dataset.eval_batch_size``) are preprocessed as for
    evaluation (centre crop, no flip) and go through one jitted forward pass on the device that
    holds ``state`` (a restored run's, :class:`nlnoise.restore.LoadedRun`).
    """
    bs = int(batch_size or dataset_cfg.get("eval_batch_size") or 1000)
    fwd = jax.jit(lambda s, x: jax.nn.softmax(step_lib.predict(s, x).astype(jnp.float32),
                                              axis=-1))
    out: list[np.ndarray] = []
    batches = data.eval_batches(source, dataset_cfg, ds, global_batch_size=bs)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=-(-len(source) // bs), desc=desc, unit="batch",
                       file=sys.stderr, dynamic_ncols=True, mininterval=1.0)
    for b in batches:
        probs = np.asarray(fwd(state, b["image"]))
        out.append(probs[b["mask"]])
    if out:
        return np.concatenate(out)
    k = int(jax.eval_shape(fwd, state, jnp.zeros((1, *ds.image_shape))).shape[-1])
    return np.zeros((0, k), np.float32)


class _ReadOnlyNotice(logging.Filter):
    """Drops orbax's warning that a checkpoint directory is read-only: an audit opens every
    store read-only on purpose, so the warning says nothing the user needs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("Given directory is read only")


def _load(workdir: str, params: str, **kw) -> restore.LoadedRun:
    """:func:`nlnoise.restore.load_for_prediction` without orbax's read-only notice."""
    quiet, absl_log = _ReadOnlyNotice(), logging.getLogger("absl")
    absl_log.addFilter(quiet)
    try:
        return restore.load_for_prediction(workdir, params, **kw)
    finally:
        absl_log.removeFilter(quiet)


def default_params(workdir: str) -> str:
    """``"best"`` when the run kept best parameters (``dataset.val_size``), else ``"final"``."""
    return "best" if os.path.isdir(os.path.join(workdir, "best")) else "final"


def _class_names(ds: data.NoisyDataset, k_out: int) -> list[str]:
    names = [str(c) for c in ds.class_names]
    return names + ["outlier"] * (k_out - len(names))


def _learned_q(loaded: restore.LoadedRun) -> np.ndarray | None:
    if loaded.cfg.noise.model != "learned":
        return None
    return np.asarray(jax.device_get(loaded.state.q), np.float64)


def in_sample(workdir: str, params: str | None = None, *, progress: bool = True) -> AuditInput:
    """The run in ``workdir`` predicting its own training examples, read-only.

    ``params``: ``"best"`` (``<workdir>/best``), ``"final"`` (the newest intact checkpoint; a
    damaged newer one is skipped where it lies) or None (best if the run has it, else final).
    Raises ``WorkdirError``/``CheckpointError`` (one line each) when there is nothing to read.
    """
    if params not in (None, "best", "final"):
        raise AuditError(f"--params: must be 'best' or 'final', got {params!r}.")
    workdir = os.path.abspath(workdir)
    params = params or default_params(workdir)
    _check_run(workdir, params)
    loaded = _load(workdir, params)
    ds = loaded.ds
    probs = predict_probs(loaded.state, ds.train, loaded.cfg.dataset, ds, progress=progress)
    return AuditInput(
        ds=ds, examples=ds.train, pred_probs=probs, q_learned=_learned_q(loaded),
        q_true=loaded.spec.q_true, class_names=_class_names(ds, probs.shape[1]), fold=None,
        identity=in_sample_identity(workdir, params),
        info={"runs": [{"workdir": workdir, "params": params, "step": loaded.step,
                        "source": loaded.source, "finished": _finished(workdir)}],
              "noise_model": loaded.cfg.noise.model, "config": loaded.cfg.to_dict()})


def _check_run(workdir: str, params: str) -> None:
    """A one-line error, before anything is loaded, when ``workdir`` holds no run or no
    parameters of the kind asked for."""
    run_dir = workdir_lib.RunDir(workdir)
    if not os.path.exists(run_dir.config_path):
        raise workdir_lib.WorkdirError(f"no run in {run_dir.path}: config.json is missing; "
                                       "give the --workdir of an nlnoise-train run.")
    if params == "best" and not os.path.isdir(run_dir.best):
        raise AuditError(f"--params=best: the run in {run_dir.path} kept no best parameters (it "
                         "has no held-out split, dataset.val_size); use --params=final.")


def in_sample_identity(workdir: str, params: str) -> dict[str, Any]:
    """What makes an in-sample audit: the run and which of its parameters."""
    return {"mode": "in-sample", "run": os.path.abspath(workdir), "params": params}


def cross_fit_identity(cfg: ml_collections.ConfigDict, folds: int, workdir: str,
                       params: str | None) -> dict[str, Any]:
    """What makes a cross-fitted audit: the folds' directory, their number, the parameters and
    the config (without the keys that only change how a run is shown)."""
    return {"mode": "cross-fit", "run": os.path.abspath(workdir), "folds": int(folds),
            "params": params, "config": _identity_config(cfg)}


def _finished(workdir: str) -> bool:
    return os.path.exists(os.path.join(workdir, "summary.json"))


def fold_config(cfg: ml_collections.ConfigDict, num_folds: int, fold: int
                ) -> ml_collections.ConfigDict:
    """A copy of ``cfg`` whose run leaves fold ``fold`` of ``num_folds`` out of training
    (``dataset.num_folds``, ``dataset.fold``; ``num_folds=0``: no folds)."""
    out = copy.deepcopy(cfg)
    with out.unlocked():
        out.dataset.num_folds = int(num_folds)
        out.dataset.fold = int(fold)
    return out


def fold_dirs(workdir: str, folds: int) -> list[str]:
    """The run directories of the folds: ``<workdir>/fold-<i>``."""
    return [os.path.join(os.path.abspath(workdir), f"fold-{i}") for i in range(folds)]


def _identity_config(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as JSON values, without the keys that only change how a run is shown or laid
    out (``resolve.RESUMABLE_KEYS``): those do not make another audit."""
    out = json.loads(config_lib.to_json(cfg))
    for key in resolve.RESUMABLE_KEYS:
        out.pop(key, None)
    return out


def _keys(split: data.ExampleSource) -> np.ndarray:
    """One int per example, unique within a dataset: (image provider, row)."""
    return split.provider_id.astype(np.int64) << 48 | split.rows


def check_folds(cfg: ml_collections.ConfigDict, folds: Any) -> int:
    """``folds`` as an int >= 2 that agrees with the config's ``dataset.num_folds``."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise AuditError(f"--folds: must be a whole number >= 2 (each of K models trains on K-1 "
                         f"folds and predicts the one left out), got {folds!r}.")
    set_in_cfg = cfg.dataset.get("num_folds") or 0
    if set_in_cfg not in (0, folds):
        raise AuditError(f"--config.dataset.num_folds={set_in_cfg} disagrees with --folds={folds}; "
                         "leave dataset.num_folds unset, --folds sets it for every fold.")
    return folds


def train_folds(cfg: ml_collections.ConfigDict, folds: int, workdir: str, *,
                progress: bool = True) -> list[dict[str, Any]]:
    """Trains (or reads back, or resumes) the K fold runs ``<workdir>/fold-<i>`` of ``cfg``;
    returns their summaries. Each is an ordinary ``nlnoise-train`` run of ``cfg`` with
    ``dataset.num_folds=K, dataset.fold=i``: a finished fold trains nothing again."""
    folds = check_folds(cfg, folds)
    if os.path.exists(workdir_lib.RunDir(workdir).config_path):
        raise AuditError(f"--workdir={workdir}: holds an nlnoise-train run; the folds (and the "
                         "audit) would be written into it. Give the cross-fitted audit a "
                         "directory of its own.")
    dirs = fold_dirs(workdir, folds)
    indices = range(folds)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="folds", unit="fold", file=sys.stderr, dynamic_ncols=True)
    summaries = []
    for i in indices:
        try:
            summaries.append(run_lib.train_and_evaluate(fold_config(cfg, folds, i), dirs[i]))
        except workdir_lib.WorkdirError as e:
            # nlnoise-audit's --overwrite replaces an audit, never a fold run: say so.
            raise AuditError(f"fold {i}: {e} nlnoise-audit never moves or replaces fold runs; "
                             "give this config a new --workdir.") from None
    return summaries


def cross_fit(cfg: ml_collections.ConfigDict, folds: int, workdir: str, params: str | None = None,
              *, progress: bool = True) -> AuditInput:
    """Out-of-fold predictions: K models, each trained on K-1 folds of ``cfg``'s training split
    (with its noise model) in ``<workdir>/fold-<i>``, each predicting the fold it left out.

    The audited examples are the training split of ``cfg`` without folds (its ``val_size``
    examples, if any, are held out there and not audited); each is predicted exactly once, by
    the model that did not train on it (``AuditInput.fold``). ``q_learned`` is the mean of the
    K learned Qs. ``params``: as :func:`in_sample`, per fold.
    """
    if params not in (None, "best", "final"):
        raise AuditError(f"--params: must be 'best' or 'final', got {params!r}.")
    train_folds(cfg, folds, workdir, progress=progress)
    ref = resolve.load_dataset(fold_config(cfg, 0, 0))
    ref_keys = _keys(ref.train)
    order = np.argsort(ref_keys)
    n, probs, fold, qs, runs = len(ref.train), None, np.full(len(ref.train), -1), [], []
    for i, d in enumerate(fold_dirs(workdir, folds)):
        which = params or default_params(d)
        _check_run(d, which)
        loaded = _load(d, which)
        out = loaded.ds.fold_out
        p = predict_probs(loaded.state, out, loaded.cfg.dataset, loaded.ds, progress=progress,
                          desc=f"fold {i}")
        pos = np.searchsorted(ref_keys, _keys(out), sorter=order)
        pos = order[np.minimum(pos, n - 1)]
        audited = ref_keys[pos] == _keys(out)  # the rest are the reference's held-out split
        if probs is None:
            probs = np.zeros((n, p.shape[1]), np.float32)
        if (fold[pos[audited]] >= 0).any():
            raise AuditError(f"fold {i}: an example is left out by two folds; the folds of "
                             f"{workdir} do not come from one config. Use a new --workdir.")
        probs[pos[audited]], fold[pos[audited]] = p[audited], i
        q = _learned_q(loaded)
        if q is not None:
            qs.append(q)
        runs.append({"workdir": d, "params": which, "step": loaded.step,
                     "source": loaded.source, "finished": _finished(d)})
    if (fold < 0).any():
        raise AuditError(f"{int((fold < 0).sum())} training examples were left out by no fold; "
                         f"the fold runs in {workdir} do not match the config. Use a new "
                         "--workdir.")
    spec = resolve.resolve_run(fold_config(cfg, 0, 0), ref)
    return AuditInput(
        ds=ref, examples=ref.train, pred_probs=probs, q_learned=np.mean(qs, axis=0) if qs
        else None, q_true=spec.q_true, class_names=_class_names(ref, probs.shape[1]), fold=fold,
        identity=cross_fit_identity(cfg, folds, workdir, params),
        info={"runs": runs, "noise_model": cfg.noise.model, "config": cfg.to_dict()})
