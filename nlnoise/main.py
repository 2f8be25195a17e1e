"""``nlnoise-train``: run an experiment from a config file.

    nlnoise-train --config=configs/cifar10.py:noise=0.5,model=learned --workdir=DIR \\
        [--config.key=value ...] [--overwrite]

Also ``python -m nlnoise.main``. Running the same command again resumes from the newest intact
checkpoint. Multi-process runs call ``jax.distributed.initialize`` when ``--coordinator`` (or
the ``NLNOISE_COORDINATOR`` environment variable) is set, or on a TPU pod with
``--distributed``.
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

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Move a different run found in --workdir to its archive/.")
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


def main(argv: list[str], on_phase: Callable[[str, int], None] | None = None) -> int:
    """Runs the configured experiment; ``on_phase`` goes to ``run.train_and_evaluate``."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required.")
    from absl import logging as absl_logging

    # orbax logs every save at INFO through absl; keep the console to nlnoise's own messages.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("nlnoise").setLevel(os.environ.get("NLNOISE_LOG_LEVEL", "INFO"))
    _init_distributed()

    try:
        cfg = _CONFIG.value
    except OSError as e:
        _fail(str(e).splitlines()[0] + " " + " ".join(str(e).splitlines()[1:]).strip())

    from nlnoise import run as run_lib
    from nlnoise.checkpoint import CheckpointError
    from nlnoise.config import ConfigError
    from nlnoise.data import DataError
    from nlnoise.noise import NoiseMatrixError
    from nlnoise.step import NonFiniteError
    from nlnoise.workdir import WorkdirError

    # A full disk or a file-size limit then raises an OSError we report, instead of killing
    # the process with SIGXFSZ halfway through a write.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        summary = run_lib.train_and_evaluate(cfg, _WORKDIR.value, overwrite=_OVERWRITE.value,
                                             on_phase=on_phase)
    except (ConfigError, DataError, NoiseMatrixError, WorkdirError, CheckpointError,
            NonFiniteError) as e:
        print(f"nlnoise-train: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"nlnoise-train: error: writing to {_WORKDIR.value} failed ({e}). Completed "
              "checkpoints are kept; free disk space and run the same command to resume.",
              file=sys.stderr)
        return 2
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
          + f"\nmetrics: {_WORKDIR.value}/metrics.jsonl, plots: {_WORKDIR.value}/plots/")
    return 0


def _fail(message: str) -> None:
    print(f"nlnoise-train: error: {message}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with config errors reported in one line instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        text = str(e).strip()
        if "Traceback" in text:  # an exception inside the config file's get_config
            text = f"{text.splitlines()[0]} {text.splitlines()[-1]}"
        if isinstance(e, flags.UnrecognizedFlagError) and "config." in text:
            text += " (not a key of this config; see the config file or nlnoise.config)"
        _fail(text)
        raise  # unreachable
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # config_flags applying --config.a.b=value to a key the config lacks, or a bad value.
        overrides = " ".join(a for a in argv[1:] if a.startswith("--config."))
        detail = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").split()).strip("'\"")
        _fail(f"{overrides}: {type(e).__name__}: {detail}")
        raise


def run(on_phase: Callable[[str, int], None] | None = None) -> None:
    """Console-script entry point. ``on_phase(name, step)`` is told when the training loop
    enters a phase (see ``nlnoise.run.PhaseCallback``; bench/traced_train.py prints them)."""
    app.run(functools.partial(main, on_phase=on_phase), flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
