"""The config-driven experiment behind ``nlnoise-train``: the loop, its checkpoints and the summary.

:func:`train_and_evaluate` runs (or resumes) a config in a workdir. What the config means once
the data is loaded (classes, Q*, the optimizer, the initial state) is :mod:`nlnoise.resolve`;
the maths is :mod:`nlnoise.step` (the jitted step), :mod:`nlnoise.q_schedule` (the decay rule
for learned Q) and :mod:`nlnoise.eval_loop` (the evaluation passes); reading a run back is
:mod:`nlnoise.restore`. This module wires them together in the order that makes a resumed run
reproduce an uninterrupted one bit for bit.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from nlnoise import checkpoint, data, eval_loop, optim, q_schedule, resolve, sharding
from nlnoise import config as config_lib
from nlnoise import lock as lock_lib
from nlnoise import step as step_lib
from nlnoise import workdir as workdir_lib

log = logging.getLogger("nlnoise")

# Called as on_phase(name, step) when the loop enters a phase: "train" after every step
# (dispatched, maybe not finished), "eval" before an evaluation, "checkpoint-writing" while a
# checkpoint is written in the background. For fault injection (bench/soak_preemption.py).
PhaseCallback = Callable[[str, int], None]


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


def _lower_decay_if_due(state, records, record, spec: resolve.RunSpec, eval_every: int,
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
    if not overwrite:
        # A finished run is read back without writing anything, not even the lock file, so
        # that reading it (a sweep's finished cell, an audit's finished fold) leaves it as it was.
        finished = run_dir.check_config(cfg, resolve.RESUMABLE_KEYS)
        if finished is not None:
            log.info("run in %s already finished; returning its summary.", workdir)
            return finished
    owner = lock_lib.own_workdir(run_dir.path, break_lock=break_lock)
    try:
        return _train_owned(cfg, run_dir, wall_start, overwrite=overwrite,
                            phase=on_phase or (lambda name, step: None))
    finally:
        owner.release()


def _resume_point(cfg, run_dir: workdir_lib.RunDir, spec: resolve.RunSpec, identity: dict[str, str],
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
    finished = run_dir.check_config(cfg, resolve.RESUMABLE_KEYS, overwrite=overwrite)
    if finished is not None:
        log.info("run in %s already finished; returning its summary.", run_dir.path)
        return finished
    ds = resolve.load_dataset(cfg)
    spec = resolve.resolve_run(cfg, ds)
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.model)
    init = resolve.state_init(cfg, ds, spec)
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
    target = checkpoint.abstract_like(resolve.checkpoint_tree(state),
                                      resolve.checkpoint_tree(state_sh))
    store, items, start = _resume_point(
        cfg, run_dir, spec, run_dir.identity(cfg, resolve.RESUMABLE_KEYS, ds.label_fingerprint),
        lambda st: st.restore(target, it, defaults=resolve.checkpoint_tree(state),
                              fillable=optim.REBUILT_STATE), overwrite=overwrite)
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
                store.save(step, resolve.checkpoint_tree(state), it)
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


def _summary(cfg, ds, spec: resolve.RunSpec, state, records, last_confusion, *, wall_s: float,
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
