"""The config-driven experiment behind ``nlnoise-train``: data, mesh, loop, checkpoints, summary.

:func:`train_and_evaluate` runs (or resumes) a config in a workdir; :func:`load_for_prediction`
reads a finished or interrupted run back, read-only. The maths lives in :mod:`nlnoise.step`
(the jitted step), :mod:`nlnoise.q_schedule` (the decay rule for learned Q) and
:mod:`nlnoise.eval_loop` (the evaluation passes); this module wires them to a config.

It is longer than the library's other modules because everything that turns a config into a
run (resolving it, the optimizer, the dataset, the loop, reading the run back) is kept in one
place, so a change to what a config means is made here once, for training and for tools.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from nlnoise import checkpoint, data, eval_loop, models, noise, optim, q_schedule, sharding
from nlnoise import config as config_lib
from nlnoise import lock as lock_lib
from nlnoise import step as step_lib
from nlnoise import workdir as workdir_lib

log = logging.getLogger("nlnoise")

# Called as on_phase(name, step) when the loop enters a phase: "train" after every step
# (dispatched, maybe not finished), "eval" before an evaluation, "checkpoint-writing" while a
# checkpoint is written in the background. For fault injection (bench/soak_preemption.py).
PhaseCallback = Callable[[str, int], None]

# Keys a resumed run may change without being refused as a different run: how it is shown,
# the device layout (restoring onto another device count is supported) and its length.
RESUMABLE_KEYS = ("progress_bar", "tensorboard", "plots", "log_every_steps", "mesh",
                  "num_epochs", "max_steps", "compilation_cache_dir")


@dataclasses.dataclass
class RunSpec:
    """What a config resolves to once the data is loaded (shared by training and tools)."""

    num_classes: int  # K, inlier classes
    num_outputs: int  # K, or K+1 for the outlier model
    q_true: np.ndarray | None  # the Q* of the combined model's output space, if known
    q_init: np.ndarray
    steps_per_epoch: int
    total_steps: int
    freeze_steps: int
    alpha: float | None
    q_init_step: int  # -1: Q starts as q_init and is never replaced
    q_stats_from: int


def resolve_run(cfg: ml_collections.ConfigDict, ds: data.NoisyDataset) -> RunSpec:
    """Derives class counts, Q* and the initial Q (``[K_out, K_out]``, ``q[j, i] =
    p(noisy=j | true=i)``) and the step counts from config + dataset."""
    k = int(ds.num_classes)
    has_known = bool(np.any(ds.train_labels == k))
    outlier = cfg.noise.model == "outlier"
    num_outputs = k + 1 if (outlier or has_known) else k
    alpha = None
    if outlier:
        alpha = cfg.noise.alpha if cfg.noise.alpha is not None else ds.alpha
        alpha = float(np.clip(alpha * cfg.noise.alpha_scale, 0.0, 1.0))
    if outlier:
        q_true = noise.outlier_eqn9(k, ds.alpha) if ds.alpha is not None else None
    elif ds.q_true is not None:
        q_true = np.asarray(ds.q_true)
        if num_outputs == k + 1:  # known outliers keep their label K
            q_true = np.pad(q_true, ((0, 1), (0, 1)))
            q_true[k, k] = 1.0
    elif cfg.corruption.kind == "identity" or (not cfg.corruption.level
                                                and cfg.corruption.kind != "given"):
        # No flips were injected: the noise process is the identity (the level-0 point of a
        # noise sweep, where `true` and `learned` start from the same Q as `none`).
        q_true = np.eye(num_outputs)
    else:
        q_true = None
    if cfg.noise.model == "true":
        if q_true is None:
            raise config_lib.ConfigError(
                "noise.model: 'true' needs the Q* that made the noise, and this dataset's "
                "is not known; use noise.model='learned' or 'none'.")
        q_init = q_true
    elif outlier:
        q_init = noise.outlier_eqn9(k, alpha)
    else:
        q_init = np.eye(num_outputs)
    spe = data.steps_per_epoch(ds, cfg.batch_size)
    if spe < 1:
        raise config_lib.ConfigError(
            f"batch_size: {cfg.batch_size} exceeds the {len(ds.train)} training examples.")
    total = spe * cfg.num_epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    freeze = round(cfg.q.freeze_epochs * spe)
    confusion = cfg.noise.model == "learned" and cfg.q.init == "confusion"
    return RunSpec(
        num_classes=k, num_outputs=num_outputs, q_true=q_true,
        q_init=noise.validate_transition(q_init, num_outputs, name="noise (initial Q)"),
        steps_per_epoch=spe, total_steps=total,
        freeze_steps=freeze, alpha=alpha,
        q_init_step=freeze if confusion else -1,
        q_stats_from=max(0, freeze - round(cfg.q.stats_epochs * spe)),
    )


def build_optimizer(cfg: ml_collections.ConfigDict, spec: RunSpec) -> optax.GradientTransformation:
    """The paper's recipe: SGD+momentum with per-layer decay for the net; Q's own chain."""
    lr = optim.schedule_from_epochs(cfg.learning_rate, spec.steps_per_epoch,
                                    tuple(cfg.lr_boundaries_epochs), cfg.lr_decay_factor)
    net_tx = optim.net_optimizer(lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                 layer_weight_decay=dict(cfg.layer_weight_decay),
                                 bias_lr_scale=cfg.bias_lr_scale)
    q_tx = None
    if cfg.noise.model == "learned":
        q_lr = cfg.q.learning_rate if cfg.q.learning_rate is not None else lr
        q_tx = optim.q_optimizer(q_lr, weight_decay=cfg.q.weight_decay,
                                 freeze_steps=spec.freeze_steps,
                                 momentum=cfg.q.momentum or None,
                                 regularizer=cfg.q.regularizer,
                                 grad_clip=cfg.q.grad_clip)
    return optim.train_state_optimizer(net_tx, q_tx)


def load_dataset(cfg: ml_collections.ConfigDict) -> data.NoisyDataset:
    """Loads the dataset with the config's label corruption (``corruption.*``).

    ``corruption.seed`` and ``dataset.subset_seed`` left at None follow ``seed``, so varying
    ``seed`` alone varies the flips, the subsets and the network together.
    """
    c = cfg.corruption
    kwargs: dict[str, Any] = {}
    if c.kind == "sparse_random":
        kwargs["m"] = c.m
    if c.kind == "block":
        kwargs["groups"] = tuple(tuple(g) for g in c.groups)
    if c.kind == "adversarial":
        kwargs["confusion"] = _load_confusion(c.confusion_path)
    if c.kind == "custom":
        kwargs["q"] = c.matrix_path
    dataset_cfg = cfg.dataset.to_dict()
    if dataset_cfg.get("subset_seed") is None:
        dataset_cfg["subset_seed"] = cfg.seed
    return data.load(dataset_cfg, noise_kind=c.kind, noise_level=c.level,
                     noise_seed=cfg.seed if c.seed is None else c.seed, noise_kwargs=kwargs)


def _load_confusion(path: str) -> np.ndarray:
    if not path or not os.path.exists(path):
        raise config_lib.ConfigError(
            f"corruption.confusion_path: no file at {path!r}. Train a clean model and save its "
            "confusion matrix (confusion[pred, true], .npy or .json) there, or point at that "
            "run's summary.json.")
    if path.endswith(".json"):
        with open(path) as f:
            obj = json.load(f)
        if isinstance(obj, dict):  # a finished run's summary.json
            if obj.get("test_confusion") is None:
                raise config_lib.ConfigError(
                    f"corruption.confusion_path: {path} has no 'test_confusion' (a summary.json of "
                    "a finished run has it); give a run's summary.json or a [K, K] matrix.")
            obj = obj["test_confusion"]
        return np.asarray(obj, dtype=np.float64)
    return np.load(path, allow_pickle=False)


def best_record(records: list[dict[str, Any]], key: str = "val_noisy_loss"
                ) -> dict[str, Any] | None:
    """The evaluation with the lowest ``key`` (the earliest on ties), or None if no record has
    it. With ``val_noisy_loss`` this is label-free early stopping: it picks an epoch by the
    fit to held-out noisy labels, never by a clean one."""
    scored = [r for r in records if r.get(key) is not None]
    return min(scored, key=lambda r: r[key]) if scored else None


def enable_compilation_cache(path: str) -> str | None:
    """Points jax's persistent compilation cache at ``path`` (``~`` expanded); "" = off.

    Returns the directory in use. An unusable directory is not fatal: the run compiles as
    usual and a warning says why.
    """
    if not path:
        return None
    path = os.path.abspath(os.path.expanduser(path))
    current = jax.config.jax_compilation_cache_dir
    if current:  # set by the user (JAX_COMPILATION_CACHE_DIR) or an earlier run: keep it
        return current
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        log.warning("compilation_cache_dir=%s cannot be created (%s); compiling without a "
                    "persistent cache. Set compilation_cache_dir='' to silence this.", path, e)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def _prepare_devices(cfg: ml_collections.ConfigDict) -> None:
    """Splits a CPU host into devices (before jax's first operation), then validates ``cfg``."""
    # Validate's device count is jax's first operation; malformed sizes are left to validate,
    # which names them.
    config_lib.check_cpu_devices(cfg)
    sizes = [b for b in (cfg.batch_size, cfg.dataset.get("eval_batch_size"))
             if isinstance(b, int) and b > 0]
    sharding.configure_cpu_devices(
        cfg.mesh.cpu_devices, batch_sizes=sizes,
        model=cfg.mesh.model if isinstance(cfg.mesh.model, int) else 1)
    config_lib.validate(cfg)
    enable_compilation_cache(cfg.compilation_cache_dir)


def _state_init(cfg: ml_collections.ConfigDict, ds: data.NoisyDataset, spec: RunSpec
                ) -> Callable[[], step_lib.TrainState]:
    """The function that creates the run's initial state (for ``jit``/``eval_shape``)."""
    model = models.get_model(cfg.model.name, spec.num_outputs, **dict(cfg.model.kwargs))
    return functools.partial(
        step_lib.create_train_state, model, build_optimizer(cfg, spec),
        input_shape=tuple(ds.image_shape), q_init=spec.q_init, noise_model=cfg.noise.model,
        num_classes=spec.num_classes, seed=cfg.seed, q_init_step=spec.q_init_step,
        q_stats_from=spec.q_stats_from)


def _checkpoint_tree(state: step_lib.TrainState) -> dict[str, Any]:
    """What a checkpoint holds: the state's items and the logging window's sums (``acc``), so
    a resumed run logs the same window means."""
    return {"state": state.checkpoint_items(), "acc": state.window}


def _lower_decay_if_due(state, records, record, spec: RunSpec, eval_every: int,
                        rule: q_schedule.DecayRule, set_scale) -> tuple[Any, float]:
    """Applies the decay rule after an evaluation past the freeze; returns (state, scale)."""
    scale = float(jax.device_get(optax.tree.get(state.opt_state, "q_decay_scale")))
    since = [*q_schedule.records_after_freeze(records, freeze_steps=spec.freeze_steps,
                                              window_steps=eval_every), record]
    new = q_schedule.scale_after_evaluation(since, scale, rule)
    if new != scale:
        state = state.replace(opt_state=set_scale(state.opt_state, new))
        log.info("noisy train loss rose or tr(Q) settled at step %d: decay on Q now x%g.",
                 record["step"], new)
    return state, new


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str, *, overwrite: bool = False,
                       break_lock: bool = False, on_phase: PhaseCallback | None = None
                       ) -> dict[str, Any]:
    """Runs (or resumes) the experiment ``cfg`` in ``workdir``; returns the summary.

    Everything that can be wrong with the config or the data is checked before anything is
    written. The run holds ``workdir``'s lock throughout (:func:`nlnoise.lock.own_workdir`: a
    second run there is refused at once, naming the holder; ``break_lock`` takes the lock
    over). Running the same command again resumes from the newest intact checkpoint; a
    finished run returns its summary without training. A workdir this run cannot continue
    (another config, checkpoints of another run or without a config.json, no intact
    checkpoint, damaged run files) is refused unless ``overwrite`` (its contents are then moved
    to ``workdir/archive/``), and so is a run already past this config's last step.
    ``on_phase``: see :data:`PhaseCallback`.
    """
    wall_start = time.time()
    _prepare_devices(cfg)
    run_dir = workdir_lib.RunDir(workdir)
    owner = lock_lib.own_workdir(run_dir.path, break_lock=break_lock)
    try:
        return _train_owned(cfg, run_dir, wall_start, overwrite=overwrite,
                            phase=on_phase or (lambda name, step: None))
    finally:
        owner.release()


def _resume_point(cfg, run_dir: workdir_lib.RunDir, spec: RunSpec, identity: dict[str, str],
                  restore: Callable[[checkpoint.CheckpointStore], Any], *, overwrite: bool
                  ) -> tuple[checkpoint.CheckpointStore, Any, int]:
    """Opens the checkpoint store and restores from it: ``(store, items or None, step)``.

    No intact checkpoint, or checkpoints of another run, are an error on every try unless
    ``overwrite`` (what is there is archived and the run starts afresh); a run already past
    this config's last step is refused, so a summary never describes parameters of another
    step. Then records this run's config.
    """
    def open_store():
        return checkpoint.CheckpointStore(run_dir.checkpoints, keep=cfg.keep_checkpoints,
                                          identity=identity)

    store = open_store()
    try:
        restored = restore(store)
    except (checkpoint.NoIntactCheckpointError, checkpoint.ForeignCheckpointError) as e:
        store.close(quiet=True)
        if not overwrite:
            raise
        log.warning("%s Starting afresh (--overwrite).", e)
        run_dir.archive()
        store, restored = open_store(), None
    start = 0 if restored is None else restored[1]
    if start > spec.total_steps:
        store.close(quiet=True)
        need = -(-start // spec.steps_per_epoch)
        raise workdir_lib.WorkdirError(
            f"workdir {run_dir.path} holds this run at step {start} (epoch "
            f"{start / spec.steps_per_epoch:g}), past the {spec.total_steps} steps this config "
            f"asks for (num_epochs={cfg.num_epochs}, max_steps={cfg.max_steps}): its "
            f"parameters are step {start}'s. Give num_epochs >= {need} (and max_steps 0 or >= "
            f"{start}) to resume it, or use a new --workdir.")
    # Nothing was written so far; from here on the workdir belongs to this run.
    run_dir.start(cfg, dataset_fingerprint=identity["dataset_fingerprint"],
                  config_fingerprint=identity["config_fingerprint"])
    return store, None if restored is None else restored[0], start


def _train_owned(cfg: ml_collections.ConfigDict, run_dir: workdir_lib.RunDir, wall_start: float,
                 *, overwrite: bool, phase: PhaseCallback) -> dict[str, Any]:
    """The run, once its workdir is owned (see :func:`train_and_evaluate`).

    One function of about 130 lines: the loop's order of syncs, evaluations, checkpoint saves
    and window resets decides what a resumed run reproduces bit for bit, so it reads top to
    bottom in one place; the steps it calls are helpers.
    """
    finished = run_dir.check_config(cfg, RESUMABLE_KEYS, overwrite=overwrite)
    if finished is not None:
        log.info("run in %s already finished; returning its summary.", run_dir.path)
        return finished
    ds = load_dataset(cfg)
    spec = resolve_run(cfg, ds)
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.model)
    init = _state_init(cfg, ds, spec)
    state_sh = sharding.state_shardings(mesh, jax.eval_shape(init))
    train_fn = step_lib.jit_train_step(mesh, state_sh)
    # Made by jit, not device_put: device_put of host scalars onto a multi-process mesh gives
    # arrays that orbax cannot save (jax 0.10.2).
    zero_window = jax.jit(step_lib.zero_window, out_shardings=state_sh.window)
    set_decay_scale = jax.jit(lambda opt, s: optax.tree.set(opt, q_decay_scale=s),
                              out_shardings=state_sh.opt_state, donate_argnums=(0,))
    rule = q_schedule.DecayRule.from_config(cfg.q)
    use_rule = cfg.noise.model == "learned" and rule.rule != "constant"
    evaluator = eval_loop.Evaluator(cfg.dataset, ds, mesh, state_sh,
                                    num_classes=spec.num_classes, q_true=spec.q_true)
    it = data.train_iterator(ds, cfg.dataset, global_batch_size=cfg.batch_size, seed=cfg.seed,
                             process_index=jax.process_index(),
                             process_count=jax.process_count())

    state = jax.jit(init, out_shardings=state_sh)()
    target = checkpoint.abstract_like(_checkpoint_tree(state), _checkpoint_tree(state_sh))
    store, items, start = _resume_point(
        cfg, run_dir, spec, run_dir.identity(cfg, RESUMABLE_KEYS, ds.label_fingerprint),
        lambda st: st.restore(target, it), overwrite=overwrite)
    if items is not None:
        state = state.replace(**items["state"], window=items["acc"])
        log.info("resumed from the checkpoint at step %d.", start)
    records = run_dir.metrics.truncate_after(start)
    run_dir.begin_segment(wall_start, start)
    # Label-free early stopping keeps its model: the parameters at the lowest held-out noisy
    # loss. Saves after the resumed step are replayed, like the metrics.
    best_store = checkpoint.BestParams(run_dir.best) if ds.val is not None else None
    if best_store is not None:
        best_store.drop_after(start)

    spe, total = spec.steps_per_epoch, spec.total_steps
    eval_every = max(1, round(cfg.eval_every_epochs * spe))
    ckpt_every = cfg.checkpoint_every_steps or spe
    batch_sh = sharding.batch_sharding(mesh)
    reporter = run_dir.reporter(cfg, total=total, initial=start)
    train_time, timed_steps, last_sync, last_step = 0.0, 0, None, start
    step, last_confusion = start, None
    in_flight = step_lib.DispatchWindow()
    try:
        while step < total:
            local = next(it)
            batch = data.make_global_batch({"image": local["image"], "label": local["label"]},
                                           batch_sh)
            state, last_m = train_fn(state, batch)
            in_flight.push(last_m)
            step += 1
            phase("train", step)
            at_log = step % cfg.log_every_steps == 0 or step == total
            at_eval = step % eval_every == 0 or step == total
            at_ckpt = step % ckpt_every == 0 or step == total
            if at_log or at_eval or at_ckpt:
                step_lib.check_finite(state)  # also waits for the step: times below are real
                now = time.perf_counter()
                if last_sync is not None:
                    train_time += now - last_sync
                    timed_steps += step - last_step
                window = jax.device_get(state.window)
                reporter.log_step(step, jax.device_get(last_m), window)
            if at_eval:
                phase("eval", step)
                record = {"step": step, "epoch": step / spe, **step_lib.window_means(window),
                          **evaluator(state)}
                pr = record.pop("_pr", None)
                last_confusion = record.pop("_confusion")
                if use_rule and step > spec.freeze_steps:
                    state, record["q_decay_scale"] = _lower_decay_if_due(
                        state, records, record, spec, eval_every, rule, set_decay_scale)
                records.append(record)
                run_dir.metrics.append(record)
                if best_store is not None and best_record(records) is record:
                    best_store.save(step, state.params, record["val_noisy_loss"])
                reporter.log_eval(record, pr)
                state = state.replace(window=zero_window())
            if at_ckpt:
                store.save(step, _checkpoint_tree(state), it)
                phase("checkpoint-writing", step)
            if at_eval or at_ckpt:
                run_dir.update_segment(step, time.time() - wall_start)
            if at_log or at_eval or at_ckpt:
                last_sync, last_step = time.perf_counter(), step
        store.wait()
    except BaseException:
        # Keep the original error: closing may fail too (e.g. the same full disk).
        reporter.close()
        store.close(quiet=True)
        if best_store is not None:
            best_store.close(quiet=True)
        raise
    reporter.close()
    store.close()
    if best_store is not None:
        best_store.close()

    # The whole run's wall time: every start of it (segments.json), not only this one.
    wall_s = run_dir.update_segment(step, time.time() - wall_start)
    summary = _summary(cfg, ds, spec, state, records, last_confusion, wall_s=wall_s,
                       segments=run_dir.num_segments,
                       images_per_s=(timed_steps * cfg.batch_size / train_time
                                     if train_time else None),
                       best_params_dir=run_dir.best if best_store is not None else None)
    run_dir.finish(summary, records, q=np.asarray(summary["q"]), q_true=spec.q_true,
                   class_names=ds.class_names, plots=cfg.plots)
    return summary


def _summary(cfg, ds, spec: RunSpec, state, records, last_confusion, *, wall_s: float,
             segments: int, images_per_s: float | None, best_params_dir: str | None
             ) -> dict[str, Any]:
    """``summary.json``: the final and the selected evaluations, Q, speed and the config."""
    params = step_lib.host_params(state)
    q = np.asarray(sharding.unpad_q(params["q"]), np.float64)
    return {
        "final": records[-1] if records else {},
        # Selected by the held-out noisy loss (dataset.val_size): no clean label is used.
        "best": best_record(records),
        # Its parameters (network and Q): load_for_prediction(workdir, "best"), or
        # checkpoint.BestParams(<this>).restore().
        "best_params_dir": best_params_dir,
        "steps": spec.total_steps,
        "epochs": spec.total_steps / spec.steps_per_epoch,
        "wall_time_s": wall_s,  # summed over every start of the run
        "segments": segments,  # how many starts it took (1: never interrupted)
        "train_images_per_s": images_per_s,
        "num_devices": jax.device_count(),
        "num_processes": jax.process_count(),
        "realized_flip_rate": ds.realized_flip_rate,  # None without clean labels
        "alpha": spec.alpha,
        "q": q.tolist(),
        "class_names": [str(c) for c in ds.class_names]
        + (["outlier"] if q.shape[0] > len(ds.class_names) else []),
        "params_sha256": step_lib.params_digest(params),
        "q_true": None if spec.q_true is None else spec.q_true.tolist(),
        # confusion[pred, true] on the clean test set after the last step: the input of an
        # adversarial Q* (corruption.kind=adversarial, corruption.confusion_path=<this
        # summary.json>).
        "test_confusion": None if last_confusion is None else last_confusion.tolist(),
        "config": cfg.to_dict(),
    }


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
    init = _state_init(cfg, ds, spec)
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
        tree = _checkpoint_tree(state)
        found = store.restore(checkpoint.abstract_like(tree, jax.tree.map(lambda _: device,
                                                                          tree)))
        store.close()
        if found is None:
            raise checkpoint.CheckpointError(f"no checkpoint under {run_dir.checkpoints} yet.")
        items, step = found
        state = state.replace(**items["state"], window=items["acc"])
        source = os.path.join(run_dir.checkpoints, str(step))
    return LoadedRun(cfg=cfg, spec=spec, ds=ds, state=state, step=int(step), source=source)
