"""Reading a run back for prediction, read-only: nothing under its workdir is created, moved,
renamed or written (an audit must never change the run it reads)."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections

from nlnoise import checkpoint, data, optim
from nlnoise import step as step_lib
from nlnoise import workdir as workdir_lib
from nlnoise.resolve import (
    RESUMABLE_KEYS,
    RunSpec,
    checkpoint_tree,
    load_dataset,
    resolve_run,
    state_init,
)


@dataclasses.dataclass
class LoadedRun:
    """A run read back for prediction. ``state`` holds the restored parameters, so
    ``nlnoise.step.predict(state, images)`` gives clean-label logits ``[B, K_out]`` and
    ``state.q`` is Q (``[K_noisy, K_true]``, columns sum to 1); ``step`` is the training step
    the parameters are from and ``source`` the directory they were read from."""

    cfg: ml_collections.ConfigDict
    spec: RunSpec
    ds: data.NoisyDataset
    state: step_lib.TrainState
    step: int
    source: str


def load_for_prediction(workdir: str, params: str = "best", *,
                        ds: data.NoisyDataset | None = None) -> LoadedRun:
    """Loads a finished or interrupted run's parameters without changing its workdir.

    ``params="best"``: the parameters at the lowest held-out noisy loss (``<workdir>/best``,
    runs with ``dataset.val_size``); ``"final"``: the newest intact checkpoint (a damaged newer
    one is skipped where it lies). Nothing under ``workdir`` is created, moved, renamed or
    written. ``ds``: the run's dataset if already loaded (else it is loaded from the run's
    config). The arrays land on the first local device, unsharded. Raises
    :class:`~nlnoise.workdir.WorkdirError` when ``workdir`` holds no run or the data changed,
    and :class:`~nlnoise.checkpoint.CheckpointError` when there is nothing intact to read.
    """
    if params not in ("best", "final"):
        raise ValueError(f"params: must be 'best' or 'final', got {params!r}.")
    run_dir = workdir_lib.RunDir(workdir)
    if not os.path.exists(run_dir.config_path):
        raise workdir_lib.WorkdirError(f"no run in {run_dir.path}: config.json is missing; "
                                       "give the --workdir of an nlnoise-train run.")
    with open(run_dir.config_path) as f:
        saved = json.load(f)
    cfg = ml_collections.ConfigDict(saved["config"])
    ds = load_dataset(cfg) if ds is None else ds
    if saved.get("dataset_fingerprint") not in (None, ds.label_fingerprint):
        raise workdir_lib.WorkdirError(
            f"the training labels differ from those of the run in {run_dir.path}: the data "
            "files changed. Load it with the data it was trained on.")
    spec = resolve_run(cfg, ds)
    # Refuses a checkpoint that another run left here (see checkpoint.CheckpointStore).
    identity = {"config_fingerprint": workdir_lib.config_fingerprint(saved["config"],
                                                                     RESUMABLE_KEYS),
                "dataset_fingerprint": ds.label_fingerprint}
    init = state_init(cfg, ds, spec)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    state = jax.jit(init, out_shardings=device)()
    if params == "best":
        best = checkpoint.BestParams(run_dir.best, read_only=True)
        target = checkpoint.abstract_like(state.params, jax.tree.map(lambda _: device,
                                                                     state.params))
        found = best.restore(target)
        best.close()
        if found is None:
            raise checkpoint.CheckpointError(f"no best parameters saved under {run_dir.best} "
                                             "yet; use params='final'.")
        restored, step = found
        state, source = state.replace(params=restored), run_dir.best
    else:
        store = checkpoint.CheckpointStore(run_dir.checkpoints, read_only=True,
                                           identity=identity)
        tree = checkpoint_tree(state)
        found = store.restore(checkpoint.abstract_like(tree, jax.tree.map(lambda _: device,
                                                                          tree)),
                              defaults=tree, fillable=optim.REBUILT_STATE)
        store.close()
        if found is None:
            raise checkpoint.CheckpointError(f"no checkpoint under {run_dir.checkpoints} yet.")
        items, step = found
        state = state.replace(**items["state"], window=items["acc"])
        source = os.path.join(run_dir.checkpoints, str(step))
    return LoadedRun(cfg=cfg, spec=spec, ds=ds, state=state, step=int(step), source=source)
