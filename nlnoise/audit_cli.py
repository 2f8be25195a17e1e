"""``nlnoise-audit``: a run's noise matrix and its likely-wrong labels, as files.

In-sample, from a finished (or interrupted) ``nlnoise-train`` run, read-only::

    nlnoise-audit --workdir=RUN --out=DIR [--params=best|final] [--rule=RULE] [--overwrite]

Out-of-fold (cross-fitting: K models, each trained on K-1 folds of the config's training split
with its noise model, each predicting the fold it left out; each fold is a resumable run in
``DIR/fold-<i>``, outputs go to ``DIR/audit`` unless ``--out``)::

    nlnoise-audit --config=CFG[:variant] --folds=K --workdir=DIR [--config.key=value ...]

Also ``python -m nlnoise.audit_cli``. The files are described in :mod:`nlnoise.audit_report`
and docs/audit.md. ``--params``: the parameters predicted with; default ``best`` when the run
kept them (``dataset.val_size``), else ``final``. ``--rule``: which labels are flagged
(:func:`nlnoise.audit.find_label_issues`; default ``threshold``). An output directory holding
another audit is refused unless ``--overwrite``; one inside the run's directory always is; one
that another audit is writing is refused until it has finished (the lock file ``.<name>.lock``
beside it, as ``nlnoise-train`` locks its workdir). Bad input gets a one-line error and exit
status 2.
"""

from __future__ import annotations

import logging
import os
import signal

from absl import app, flags
from ml_collections import config_flags

from nlnoise import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file[:variant] for --folds (cross-fitting).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "The run to audit; with --config and --folds, the directory of the folds.")
_OUT = flags.DEFINE_string("out", None, "Output directory (outside the run's directory); "
                           "default with --folds: <workdir>/audit.")
_PARAMS = flags.DEFINE_string("params", None, "'best' or 'final' (default: best if the run "
                              "kept best parameters, else final).")
_FOLDS = flags.DEFINE_integer("folds", None, "Cross-fit with this many folds (>= 2); needs "
                              "--config.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Replace an audit of another run or setting found in --out.")
_RULE = flags.DEFINE_enum(
    "rule", "threshold", ["threshold", "estimated_count", "per_class_count"],
    "Which labels are flagged: 'threshold' (the posterior of the given label below 0.5), "
    "'estimated_count' (the N * flip rate of the noise-matrix estimate lowest posteriors) or "
    "'per_class_count' (nlnoise.audit.find_label_issues).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Progress bars for prediction and folds.")

PROG = "nlnoise-audit"


def _fail(message: str) -> None:
    cli.fail(PROG, message)


def _check_flags(cfg) -> None:
    """Flag combinations, before anything is read or trained."""
    from nlnoise.audit_run import AuditError

    if not _WORKDIR.value:
        raise AuditError("--workdir is required: the run to audit (or, with --config and "
                         "--folds, the directory of the fold runs).")
    if _PARAMS.value not in (None, "best", "final"):
        raise AuditError(f"--params: must be 'best' or 'final', got {_PARAMS.value!r}.")
    if _FOLDS.value is not None and cfg is None:
        raise AuditError("--folds needs --config=FILE[:variant], the config the folds train; to "
                         "audit a finished run, give --workdir=RUN --out=DIR alone.")
    if cfg is not None and _FOLDS.value is None:
        raise AuditError("--config needs --folds=K (K >= 2) for a cross-fitted audit; to audit a "
                         "finished run, give --workdir=RUN --out=DIR alone.")
    if cfg is None and not _OUT.value:
        raise AuditError("--out is required: the directory the audit writes, outside the run's "
                         f"--workdir (e.g. --out={_WORKDIR.value.rstrip('/')}-audit).")


def _out_dir() -> str:
    """``--out``, or with ``--folds`` its default ``<workdir>/audit``."""
    return _OUT.value or os.path.join(os.path.abspath(_WORKDIR.value or ""), "audit")


def out_lock(out: str):
    """The lock on an audit's output directory: the file ``.<name>.lock`` beside it, since the
    directory itself is replaced as a whole when the audit is written."""
    from nlnoise import lock

    parent, name = os.path.split(os.path.realpath(os.path.expanduser(out)))
    return lock.WorkdirLock(parent, name=f".{name}.lock")


def _audit(cfg) -> dict:
    """Runs the audit the flags ask for, holding the output directory's lock once the
    directory has been found writable; returns ``audit.json``'s contents."""
    from nlnoise import lock
    from nlnoise.audit_run import AuditError

    out = _out_dir()
    guard = out_lock(out)
    try:
        return _checked_audit(cfg, guard)
    except lock.WorkdirBusyError:
        holder = lock.read_holder(guard.workdir, os.path.basename(guard.path))
        raise AuditError(f"--out={out}: another audit is writing it ({lock.describe(holder)}); "
                         "wait for it to finish, or choose another --out.") from None
    finally:
        guard.release()


def _checked_audit(cfg, guard) -> dict:
    from nlnoise import audit_report, audit_run

    _check_flags(cfg)
    workdir = os.path.abspath(_WORKDIR.value)
    overwrite, progress, rule = _OVERWRITE.value, _PROGRESS.value, _RULE.value
    if cfg is None:
        params = _PARAMS.value or audit_run.default_params(workdir)
        identity = audit_report.identity_with_rule(
            audit_run.in_sample_identity(workdir, params), rule)
        # The output directory is checked first: nothing is computed for an audit that could
        # not be written.
        audit_report.check_out_dir(_OUT.value, identity, protected=(workdir,),
                                   overwrite=overwrite)
        guard.acquire()
        inp = audit_run.in_sample(workdir, params, progress=progress)
        return audit_report.write_audit(_OUT.value, inp, protected=(workdir,),
                                        overwrite=overwrite, rule=rule)
    folds = audit_run.check_folds(cfg, _FOLDS.value)
    out = _out_dir()
    protected = tuple(audit_run.fold_dirs(workdir, folds))
    identity = audit_report.identity_with_rule(
        audit_run.cross_fit_identity(cfg, folds, workdir, _PARAMS.value), rule)
    audit_report.check_out_dir(out, identity, protected=protected, overwrite=overwrite)
    guard.acquire()
    inp = audit_run.cross_fit(cfg, folds, workdir, _PARAMS.value, progress=progress)
    return audit_report.write_audit(out, inp, protected=protected, overwrite=overwrite,
                                    rule=rule)


def _report(meta: dict, out: str) -> str:
    from nlnoise import audit
    q_words = audit.describe_q_source(meta["q_source"], given="the run's Q")
    lines = [f"{PROG}: {meta['num_flagged']} of {meta['num_examples']} training labels flagged "
             f"({meta['flagged_share']:.1%}); the scores use {q_words}."]
    m = meta.get("clean_metrics")
    if m is not None:
        f, ap = m["flagged"], m["ranking_ap"]
        lines.append(f"against the clean labels ({m['realized_noise_rate']:.1%} wrong): "
                     f"precision {f['precision']:.3f}, recall {f['recall']:.3f}, F1 "
                     f"{f['f1']:.3f}" + ("" if ap is None else f", ranking AP {ap:.3f}"))
    lines.append(f"outputs in {out}: {', '.join(meta['files'])}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Runs the audit; errors in the input are one line on stderr and exit status 2."""
    if len(argv) > 1:
        _fail(f"unexpected arguments: {argv[1:]}")
    from absl import logging as absl_logging

    # orbax logs at INFO through absl; keep the console to nlnoise's own messages.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("nlnoise").setLevel(os.environ.get("NLNOISE_LOG_LEVEL", "INFO"))
    try:
        cfg = _CONFIG.value
    except OSError as e:
        _fail(str(e))

    from nlnoise.audit import AuditInputError
    from nlnoise.audit_run import AuditError
    from nlnoise.checkpoint import CheckpointError
    from nlnoise.config import ConfigError
    from nlnoise.data import DataError
    from nlnoise.noise import NoiseMatrixError
    from nlnoise.step import NonFiniteError
    from nlnoise.workdir import WorkdirError

    # A full disk or a file-size limit raises an OSError we report, instead of SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        meta = _audit(cfg)
    except (AuditError, AuditInputError, ConfigError, DataError, NoiseMatrixError, WorkdirError,
            CheckpointError, NonFiniteError) as e:
        return cli.error(PROG, str(e))
    except OSError as e:
        return cli.error(PROG, f"{e}. Nothing was written to the output directory; fix the "
                         "cause (disk space, permissions) and run the same command again.")
    print(_report(meta, os.path.realpath(_out_dir())))
    return 0


def run() -> None:
    """Console-script entry point (``nlnoise-audit``)."""
    app.run(main, flags_parser=cli.flags_parser(PROG, config_required=False))


if __name__ == "__main__":
    run()
