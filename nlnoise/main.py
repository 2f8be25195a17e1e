"""``nlnoise-train``: run an experiment from a config file.

    nlnoise-train --config=configs/cifar10.py:noise=0.5,model=learned --workdir=DIR \\
        [--config.key=value ...] [--overwrite] [--break_lock]

Also ``python -m nlnoise.main``. Running the same command again resumes from the newest intact
checkpoint; Ctrl-C or SIGTERM stops the run cleanly (the lock on DIR is released, a checkpoint
being written is finished). Every error is one line on stderr and exit code 2.

Multi-process runs call ``jax.distributed.initialize`` when ``--coordinator`` (or the
``NLNOISE_COORDINATOR`` environment variable) is set, or on a TPU pod with ``--distributed``.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from collections.abc import Callable

from absl import app, flags
from ml_collections import config_flags

from nlnoise import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Move what --workdir holds to its archive/ and start afresh when it "
    "cannot be resumed (another config, no intact checkpoint, damaged run files).")
_BREAK_LOCK = flags.DEFINE_bool(
    "break_lock", False, "Take over --workdir's lock even from a process that still seems to "
    "hold it (one on a host that was lost); never needed after a crash on this host.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() with no arguments (TPU pods).")
_COORDINATOR = flags.DEFINE_string("coordinator", os.environ.get("NLNOISE_COORDINATOR"),
                                   "host:port of process 0 for a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes",
                                      int(os.environ.get("NLNOISE_NUM_PROCESSES", "1")),
                                      "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", int(os.environ.get("NLNOISE_PROCESS_ID", "0")),
                                   "This process's index in a multi-process run.")


def _init_distributed() -> None:
    import jax

    if _COORDINATOR.value:
        # CPU processes need gloo for cross-process collectives; it is unused on accelerators.
        # (Asking jax for its backend here would initialise it too early.)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                   num_processes=_NUM_PROCESSES.value,
                                   process_id=_PROCESS_ID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()


class _Stopped(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that cleanups run as for Ctrl-C."""


def _on_sigterm(signum, frame):
    raise _Stopped()


def _quiet_libraries(level: str) -> None:
    """Keeps the console to nlnoise's own messages unless ``level`` is DEBUG.

    orbax logs every save at INFO and, when a write fails (a full disk), each failed operation
    at ERROR with its traceback, and its background threads and tensorstore's callbacks print
    more tracebacks; tensorboardX's writer thread and exit hook do the same. The run's own
    error already says what failed and what to do, so these go to the ``nlnoise`` logger at
    DEBUG, one line each (NLNOISE_LOG_LEVEL=DEBUG shows them).
    """
    import threading

    from absl import logging as absl_logging

    debug = level.upper() == "DEBUG"
    logging.getLogger("nlnoise").setLevel(level)
    absl_logging.set_verbosity(absl_logging.INFO if debug else absl_logging.FATAL)
    if debug:
        return
    log = logging.getLogger("nlnoise")
    main_excepthook = sys.excepthook

    def excepthook(kind, value, tb):
        if threading.current_thread() is threading.main_thread():
            main_excepthook(kind, value, tb)  # a bug of ours: keep the traceback
        else:
            log.debug("background error: %s: %s", kind.__name__, value)

    sys.excepthook = excepthook
    threading.excepthook = lambda a: log.debug("error in thread %s: %s: %s", a.thread,
                                               a.exc_type.__name__, a.exc_value)
    sys.unraisablehook = lambda u: log.debug("ignored error in %r: %s", u.object,
                                             u.exc_value)


def main(argv: list[str], on_phase: Callable[[str, int], None] | None = None) -> int:
    """Runs the configured experiment; ``on_phase`` goes to ``run.train_and_evaluate``."""
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}: options are --name=value.")
    workdir = _WORKDIR.value
    if not workdir or not workdir.strip():
        _fail("--workdir is required and must not be empty: give the run's directory, e.g. "
              "--workdir=runs/digits (it is created if missing).")
    _quiet_libraries(os.environ.get("NLNOISE_LOG_LEVEL", "INFO"))
    signal.signal(signal.SIGTERM, _on_sigterm)
    # A full disk or a file-size limit then raises an OSError we report, instead of killing
    # the process with SIGXFSZ halfway through a write.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        _init_distributed()
        summary = _train(_CONFIG.value, workdir, on_phase)
    except KeyboardInterrupt as e:
        how = "SIGTERM" if isinstance(e, _Stopped) else "Ctrl-C (SIGINT)"
        print(f"nlnoise-train: stopped by {how}. Completed checkpoints in {workdir} are kept; "
              "run the same command to resume.", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, _Stopped) else signal.SIGINT)
    if isinstance(summary, int):
        return summary
    _report(summary, workdir)
    return 0


def _train(cfg, workdir: str, on_phase) -> dict | int:
    """train_and_evaluate, with every expected failure as one line on stderr (returns 2)."""
    if cfg is None:
        _fail("--config is required, e.g. --config=configs/digits.py:runlocal.")
    from nlnoise import run as run_lib
    from nlnoise.checkpoint import CheckpointError
    from nlnoise.config import ConfigError
    from nlnoise.data import DataError
    from nlnoise.lock import LockError
    from nlnoise.noise import NoiseMatrixError
    from nlnoise.step import NonFiniteError
    from nlnoise.workdir import DISK_FULL, WorkdirError, describe_os_error

    try:
        return run_lib.train_and_evaluate(cfg, workdir, overwrite=_OVERWRITE.value,
                                          break_lock=_BREAK_LOCK.value, on_phase=on_phase)
    except (ConfigError, DataError, NoiseMatrixError, WorkdirError, CheckpointError,
            NonFiniteError, LockError) as e:
        message = str(e)
    except OSError as e:
        if e.errno in DISK_FULL:
            message = (f"writing to {workdir} failed ({describe_os_error(e)}). Completed "
                       "checkpoints are kept; free disk space and run the same command to "
                       "resume.")
        else:
            message = f"{describe_os_error(e)} ({type(e).__name__})."
    return cli.error("nlnoise-train", message)


def _report(summary: dict, workdir: str) -> None:
    final = summary.get("final", {})
    shown = ", ".join(f"{k}={final[k]:.4f}" for k in ("test_error", "q_rel_l1", "q_trace",
                                                      "q_star_trace", "outlier_ap")
                      if k in final)
    print(f"nlnoise-train: finished {summary['steps']} steps in {summary['wall_time_s']:.0f}s: "
          f"{shown}.\nclean test error (noise layer removed): {final.get('test_error', 0):.2%}"
          + (f"; Q error sum|Q-Q*|/sum|Q*|: {final['q_rel_l1']:.3f}" if "q_rel_l1" in final
             else "")
          + (f"\nlowest held-out noisy loss at epoch {best['epoch']:g}: clean test error "
             f"{best['test_error']:.2%}; its parameters: {summary.get('best_params_dir')}"
             if (best := summary.get("best")) else "")
          + f"\nmetrics: {workdir}/metrics.jsonl, plots: {workdir}/plots/")


def _fail(message: str) -> None:
    cli.fail("nlnoise-train", message)


def run(on_phase: Callable[[str, int], None] | None = None) -> None:
    """Console-script entry point. ``on_phase(name, step)`` is told when the training loop
    enters a phase (see ``nlnoise.run.PhaseCallback``; bench/traced_train.py prints them)."""
    app.run(functools.partial(main, on_phase=on_phase),
            flags_parser=cli.flags_parser("nlnoise-train"))


if __name__ == "__main__":
    run()
