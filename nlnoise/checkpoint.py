"""Checkpoints: the train state and the data iterator's position, saved together with orbax.

A checkpoint is only complete once orbax has finalised it (written under a temporary name, then
renamed), so a save interrupted by SIGKILL never looks like a checkpoint. A checkpoint that is
complete but damaged later (truncated or overwritten files) fails to restore; :meth:`restore`
then says so and falls back to the next newest one. Nothing here ever deletes a checkpoint
except orbax's ``max_to_keep`` rotation of older, intact ones after a successful save.

A store opened with an ``identity`` (the run's config and label fingerprints) writes it into
every checkpoint and refuses to restore a checkpoint that carries another one: a directory
never resumes a run that is not the one asking. When no checkpoint is intact, nothing is moved,
so the same error comes back on every retry until someone decides (a silent fresh start would
throw the run away).

A checkpoint written before the state gained a field that a step rebuilds exactly (the Q step's
``support``) restores with that field fresh, when the caller names it (``fillable``) and gives
its fresh value (``defaults``): upgrading nlnoise does not strand a run. Any other difference
between the checkpoint's tree and the state's is a restore error as before.

``read_only=True`` (:class:`CheckpointStore` and :class:`BestParams`) reads a run without
changing anything under its directory: nothing is created, moved, renamed or written, and a
damaged checkpoint is skipped where it lies (for tools that inspect a finished or running run).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger("nlnoise")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or no intact one could be read."""


class NoIntactCheckpointError(CheckpointError):
    """Checkpoints exist (or were set aside as damaged) but none of them can be read."""


class ForeignCheckpointError(CheckpointError):
    """A checkpoint carries another run's identity (config or training labels)."""


def abstract_like(tree, shardings):
    """``ShapeDtypeStruct``s carrying ``shardings``: the restore target for a new device layout."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _leaf_paths(tree: Any) -> dict[tuple[str, ...], Any]:
    """Leaves by path, in orbax's saved form: NamedTuple fields and dict keys by name, sequence
    items by index (a NamedTuple is saved as a dict of its fields, a tuple as a list)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {tuple(_key_name(e) for e in path): leaf for path, leaf in flat}


def _fill_plan(saved_tree: Any, abstract_state: Any, fillable: tuple[str, ...]):
    """``(target, missing)`` to restore a checkpoint whose tree lacks only fillable leaves.

    ``target`` has the saved tree's structure (nested dicts and lists) with ``abstract_state``'s
    leaves; ``missing`` are the paths to take from the defaults. None when the trees differ in
    any other way (the restore then fails as before) or do not differ.
    """
    saved, wanted = _leaf_paths(saved_tree), _leaf_paths(abstract_state)
    missing = sorted(set(wanted) - set(saved))
    if not missing or set(saved) - set(wanted):
        return None
    if not all(any(name in path for name in fillable) for path in missing):
        return None
    target = jax.tree_util.tree_map_with_path(
        lambda path, _: wanted[tuple(_key_name(e) for e in path)], saved_tree)
    return target, missing


def _read_only_options(**kwargs) -> ocp.CheckpointManagerOptions:
    # Orbax's read-only mode skips saves, deletions, directory creation and its root metadata.
    return ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                        enable_async_checkpointing=False, **kwargs)


class CheckpointStore:
    """Periodic, asynchronous saves of ``{state, data}`` under ``directory``, last ``keep`` kept.

    With ``read_only`` the store only restores, and never changes the directory (see the
    module docstring).
    """

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True,
                 read_only: bool = False, identity: dict[str, str] | None = None):
        self.directory = os.path.abspath(directory)
        self.read_only = read_only
        self.identity = None if identity is None else dict(identity)
        self._pending: int | None = None
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(f"no checkpoint directory at {self.directory}: the run has "
                                  "not saved a checkpoint yet.")
        options = (_read_only_options() if read_only else ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save))
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "data", "meta"))

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(self, step: int, state_items: Any, data_iterator) -> None:
        """Starts saving ``state_items`` (a pytree) and the iterator's position at ``step``.

        The iterator state is captured now; the arrays are written in the background. Raises
        :class:`CheckpointError` (the previous checkpoints stay as they were) if it fails.
        """
        if self.read_only:
            raise CheckpointError(f"the checkpoint store at {self.directory} was opened "
                                  "read-only; open it without read_only=True to save.")
        self._pending = int(step)
        items = {"state": ocp.args.StandardSave(state_items),
                 "data": grain.checkpoint.CheckpointSave(data_iterator)}
        if self.identity is not None:
            # In the same step directory, so finalised (made visible) together with the state.
            items["meta"] = ocp.args.JsonSave(self.identity)
        try:
            self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)
        except Exception as e:  # orbax raises many types (OSError, ValueError, ...)
            log.debug("checkpoint save failed", exc_info=True)
            raise CheckpointError(
                f"saving the checkpoint for step {step} under {self.directory} failed: {e!r}. "
                f"Earlier checkpoints {self.steps()} are untouched; free disk space or fix "
                "the directory's permissions and resume."
            ) from e

    def wait(self) -> None:
        """Blocks until pending saves are on disk; raises :class:`CheckpointError` on failure."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise CheckpointError(
                f"saving the checkpoint for step {self._pending} under {self.directory} failed "
                f"in the background: {e!r}. Intact checkpoints: {self.steps()}; free disk space "
                "or fix the directory's permissions and resume."
            ) from e

    def restore(self, abstract_state: Any, data_iterator=None, *, defaults: Any = None,
                fillable: tuple[str, ...] = ()) -> tuple[Any, int] | None:
        """Restores the newest intact checkpoint into ``abstract_state``'s structure/shardings.

        Positions ``data_iterator`` where that checkpoint left it (None: the state alone is
        read). Returns ``(state_items, step)``, or None when there is no checkpoint. A
        checkpoint that lacks only leaves whose path names one of ``fillable`` (state a step
        rebuilds exactly, which an older nlnoise did not save) takes those leaves from
        ``defaults`` (concrete, ``abstract_state``'s structure), with a warning. Damaged
        checkpoints are skipped with a warning; once an intact one is found, the damaged newer
        ones are moved to ``<directory>-damaged/`` (kept for inspection, and out of the way of
        the step numbers the resumed run will save again); a read-only store leaves them where
        they are. Raises :class:`NoIntactCheckpointError` (moving nothing) when none is intact,
        and :class:`ForeignCheckpointError` for a checkpoint of another run (see ``identity``).
        """
        steps = self.steps()
        damaged: list[int] = []
        for step in reversed(steps):
            items = {"state": ocp.args.StandardRestore(abstract_state)}
            if data_iterator is not None:
                items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
            try:
                # Whose it is comes first: another run's state may not even fit the target.
                self._check_identity(step, self._read_identity(step))
                plan = self._plan_fill(step, abstract_state, defaults, fillable)
                if plan is not None:
                    items["state"] = ocp.args.StandardRestore(plan[0])
                restored = self._manager.restore(step, args=ocp.args.Composite(**items))
                state = restored["state"]
                if plan is not None:
                    state = self._filled(step, state, defaults, plan[1], fillable)
                jax.block_until_ready(state)
            except ForeignCheckpointError:
                raise
            except Exception as e:
                damaged.append(step)
                log.warning(
                    "checkpoint at step %d is damaged and was skipped (%s: %s)%s. "
                    "Falling back to an older one.",
                    step, type(e).__name__, (str(e).splitlines() or [""])[0][:300],
                    "; left in place (read-only)" if self.read_only else "",
                )
                continue
            if damaged and not self.read_only:
                moved = [self._quarantine(s) for s in damaged]
                log.warning("moved the damaged checkpoints %s aside: %s.", damaged,
                            ", ".join(moved))
            if step != steps[-1]:
                log.warning("resumed from step %d, not the newest checkpoint (%d).", step,
                            steps[-1])
            return state, step
        aside = self._damaged_aside()
        if steps or aside:
            fix = ("Resume the run (nlnoise-train with the same command) to replace them."
                   if self.read_only else
                   "Nothing was moved or deleted: pass --overwrite to move the run to its "
                   "archive/ and start afresh, or restore intact checkpoints.")
            what = (f"none of the checkpoints {steps} under {self.directory} could be read"
                    if steps else f"no checkpoint is left under {self.directory}, and the "
                    f"damaged ones {aside} are set aside in {self.directory}-damaged")
            raise NoIntactCheckpointError(f"{what}. {fix}")
        return None

    def _plan_fill(self, step: int, abstract_state: Any, defaults: Any,
                   fillable: tuple[str, ...]):
        if defaults is None or not fillable:
            return None
        try:
            saved = ocp.StandardCheckpointHandler().metadata(
                epath.Path(self.directory) / str(step) / "state")
        except Exception:  # no readable metadata: the plain restore reports what is wrong
            log.debug("no tree metadata at step %d", step, exc_info=True)
            return None
        return _fill_plan(getattr(saved, "tree", saved), abstract_state, tuple(fillable))

    @staticmethod
    def _filled(step: int, restored: Any, defaults: Any, missing: list,
                fillable: tuple[str, ...]) -> Any:
        found = _leaf_paths(restored)
        # Name the field, not each of its arrays.
        fields = {"/".join(p[:min(p.index(n) for n in fillable if n in p) + 1]) for p in missing}
        log.warning("the checkpoint at step %d was written without %s (an older nlnoise); "
                    "filled with fresh values.", step, ", ".join(sorted(fields)))
        return jax.tree_util.tree_map_with_path(
            lambda path, fresh: found.get(tuple(_key_name(e) for e in path), fresh), defaults)

    def _read_identity(self, step: int) -> dict[str, str] | None:
        if self.identity is None or not os.path.isdir(os.path.join(self.directory, str(step),
                                                                   "meta")):
            return None  # a checkpoint made before identities were recorded
        out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def _check_identity(self, step: int, found: dict[str, str] | None) -> None:
        if found is None or self.identity is None or found == self.identity:
            return
        what = [name for name, key in (("config", "config_fingerprint"),
                                       ("training labels", "dataset_fingerprint"))
                if found.get(key) != self.identity.get(key)]
        raise ForeignCheckpointError(
            f"the checkpoint at step {step} under {self.directory} belongs to another run (its "
            f"{' and '.join(what)} fingerprint{'s differ' if len(what) > 1 else ' differs'} "
            "from this run's), so it is not resumed. "
            "Restore that run's config.json (and data) to resume it, pass --overwrite to move "
            "it to archive/ and start afresh, or use a new --workdir.")

    def _damaged_aside(self) -> list[str]:
        aside = self.directory.rstrip("/") + "-damaged"
        return sorted(os.listdir(aside)) if os.path.isdir(aside) else []

    def _quarantine(self, step: int) -> str:
        src = os.path.join(self.directory, str(step))
        dst_dir = self.directory.rstrip("/") + "-damaged"
        os.makedirs(dst_dir, exist_ok=True)
        dst = os.path.join(dst_dir, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        if os.path.exists(src):
            os.replace(src, dst)
        self._manager.reload()
        return dst

    def close(self, quiet: bool = False) -> None:
        """Waits for pending saves and releases the manager.

        Raises :class:`CheckpointError` if a pending save failed, unless ``quiet`` (used while
        another error is already being reported).
        """
        try:
            self._manager.close()
        except Exception as e:
            if quiet:  # the error being reported already says what failed
                log.debug("closing the checkpoint manager also failed: %r", e)
                return
            raise CheckpointError(
                f"finishing the checkpoint for step {self._pending} under {self.directory} "
                f"failed: {e!r}. Intact checkpoints: {self.steps()}."
            ) from e


class BestParams:
    """The parameters (network and Q) at the evaluation with the lowest ``metric``.

    One orbax checkpoint under ``directory``; orbax's own best-checkpoint retention
    (``best_fn``, ``max_to_keep=1``) decides which save survives, and deletes the old one only
    after the new one is complete. Used with ``val_noisy_loss`` for label-free early stopping.
    With ``read_only`` it only restores and never changes the directory.
    """

    def __init__(self, directory: str, metric: str = "val_noisy_loss", *,
                 read_only: bool = False):
        self.directory = os.path.abspath(directory)
        self.metric = metric
        self.read_only = read_only
        best = {"best_fn": lambda m: m[metric], "best_mode": "min"}
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(f"no best parameters at {self.directory}: the run has no "
                                  "held-out split (dataset.val_size) or no evaluation yet.")
        options = (_read_only_options(**best) if read_only else ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, enable_async_checkpointing=False, **best))
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("params",))

    def steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def drop_after(self, step: int) -> None:
        """Deletes saves after ``step``: a resumed run replays from there and finds them again."""
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read-only; nothing is deleted.")
        for s in self.steps():
            if s > step:
                self._manager.delete(s)

    def save(self, step: int, params: Any, value: float) -> None:
        """Saves ``params`` (a pytree) with ``{metric: value}``; a step already saved is kept."""
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read-only; open it without "
                                  "read_only=True to save.")
        if int(step) in self.steps():
            return
        try:
            self._manager.save(int(step), args=ocp.args.Composite(
                params=ocp.args.StandardSave(params)), metrics={self.metric: float(value)},
                force=True)
        except Exception as e:
            raise CheckpointError(
                f"saving the best parameters for step {step} under {self.directory} failed: "
                f"{e!r}. The earlier best {self.steps()} is untouched; free disk space and "
                "resume.") from e

    def restore(self, abstract_params: Any = None) -> tuple[Any, int] | None:
        """``(params, step)`` of the best save, or None when nothing was saved. Without
        ``abstract_params`` the arrays land on the default device, unsharded."""
        steps = self.steps()
        if not steps:
            return None
        step = self._manager.best_step()
        step = steps[-1] if step is None else step
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_params)))
        except Exception as e:
            raise CheckpointError(
                f"the best parameters at step {step} under {self.directory} could not be read "
                f"({type(e).__name__}: {e}). The run's regular checkpoints are separate; "
                "rerun with --overwrite to recompute them.") from e
        return out["params"], step

    def close(self, quiet: bool = False) -> None:
        """Releases the manager; with ``quiet`` (another error is being reported) a failure is
        logged, not raised."""
        try:
            self._manager.close()
        except Exception as e:
            if not quiet:
                raise
            log.debug("closing the best-parameters manager also failed: %r", e)
