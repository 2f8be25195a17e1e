"""Checkpoints: the train state and the data iterator's position, saved together with orbax.

A checkpoint is only complete once orbax has finalised it (written under a temporary name, then
renamed), so a save interrupted by SIGKILL never looks like a checkpoint. A checkpoint that is
complete but damaged later (truncated or overwritten files) fails to restore; :meth:`restore`
then says so and falls back to the next newest one. Nothing here ever deletes a checkpoint
except orbax's ``max_to_keep`` rotation of older, intact ones after a successful save.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger("nlnoise")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or no intact one could be read."""


def abstract_like(tree, shardings):
    """``ShapeDtypeStruct``s carrying ``shardings``: the restore target for a new device layout."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


class CheckpointStore:
    """Periodic, asynchronous saves of ``{state, data}`` under ``directory``, last ``keep`` kept."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self._pending: int | None = None
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save
            ),
            item_names=("state", "data"),
        )

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(self, step: int, state_items: Any, data_iterator) -> None:
        """Starts saving ``state_items`` (a pytree) and the iterator's position at ``step``.

        The iterator state is captured now; the arrays are written in the background. Raises
        :class:`CheckpointError` (the previous checkpoints stay as they were) if it fails.
        """
        self._pending = int(step)
        try:
            self._manager.save(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state_items),
                    data=grain.checkpoint.CheckpointSave(data_iterator),
                ),
                force=True,
            )
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

    def restore(self, abstract_state: Any, data_iterator) -> tuple[Any, int] | None:
        """Restores the newest intact checkpoint into ``abstract_state``'s structure/shardings.

        Positions ``data_iterator`` where that checkpoint left it. Returns ``(state_items,
        step)``, or None when there is no checkpoint. Damaged checkpoints are skipped with a
        warning and moved to ``<directory>-damaged/`` (kept for inspection, and out of the way
        of the step numbers the resumed run will save again).
        """
        steps = self.steps()
        for step in reversed(steps):
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=grain.checkpoint.CheckpointRestore(data_iterator),
                    ),
                )
                state = restored["state"]
                jax.block_until_ready(state)
            except Exception as e:
                moved = self._quarantine(step)
                log.warning(
                    "checkpoint at step %d is damaged and was skipped (%s: %s); moved to %s. "
                    "Falling back to an older one.",
                    step, type(e).__name__, (str(e).splitlines() or [""])[0][:300], moved,
                )
                continue
            if step != steps[-1]:
                log.warning("resumed from step %d, not the newest checkpoint (%d).", step,
                            steps[-1])
            return state, step
        if steps:
            raise CheckpointError(
                f"none of the checkpoints {steps} under {self.directory} could be read. Move "
                "the directory aside to start afresh (nothing was deleted)."
            )
        return None

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
            if quiet:
                log.warning("closing the checkpoint manager also failed: %r", e)
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
    """

    def __init__(self, directory: str, metric: str = "val_noisy_loss"):
        self.directory = os.path.abspath(directory)
        self.metric = metric
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, best_fn=lambda m: m[metric], best_mode="min",
                enable_async_checkpointing=False,
            ),
            item_names=("params",),
        )

    def steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def drop_after(self, step: int) -> None:
        """Deletes saves after ``step``: a resumed run replays from there and finds them again."""
        for s in self.steps():
            if s > step:
                self._manager.delete(s)

    def save(self, step: int, params: Any, value: float) -> None:
        """Saves ``params`` (a pytree) with ``{metric: value}``; a step already saved is kept."""
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
            log.warning("closing the best-parameters manager also failed: %r", e)
