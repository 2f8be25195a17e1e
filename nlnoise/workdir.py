"""A run's directory: config identity, metrics.jsonl, summary.json, plots, progress and TensorBoard.

Layout of ``DIR``::

    .lock            held by the process that owns DIR (nlnoise.lock; removed on exit)
    config.json      the resolved config of the run that owns DIR, and its fingerprint
    metrics.jsonl    one JSON object per evaluation
    summary.json     written last, when the run has finished
    segments.json    one entry per start of the run: from which step, how far, its seconds
    checkpoints/     orbax checkpoints (state + data iterator position)
    best/            the parameters at the lowest held-out noisy loss (``dataset.val_size``)
    plots/           q.png (learned Q beside Q*), curves.png, pr.png (outlier runs)
    tb/              TensorBoard event files
    archive/         earlier runs moved aside by ``--overwrite`` (never deleted)

Only process 0 writes files other than checkpoints. Every file is written to a temporary name
and renamed, so a killed run never leaves a half-written config, summary or metrics file, and
a failed write removes its temporary file.

The module is a little over the library's usual size because every rule about what may be
found in a run's directory (what is refused, with which way out, and what is archived) is
kept next to the files it is about.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from nlnoise import config as config_lib
from nlnoise.lock import LOCK_NAME

log = logging.getLogger("nlnoise")


class WorkdirError(RuntimeError):
    """The workdir holds another run, or a finished run would be clobbered."""


# What a run writes in its directory; anything else there means the directory is not a run's.
RUN_ENTRIES = ("config.json", "metrics.jsonl", "summary.json", "segments.json", "checkpoints",
               "checkpoints-damaged", "best", "plots", "tb")
# Kept where they are when a run is archived (the lock is the live owner's; archive/ is the
# destination), and never a sign of a foreign directory (logs/: launch/local.py's).
NOT_ARCHIVED = (LOCK_NAME, "archive")
NEUTRAL = (*NOT_ARCHIVED, "logs")
WAY_OUT = ("pass --overwrite to move what is there to its archive/ subdirectory and start "
           "afresh, or use a new --workdir.")


# errno -> what to do about it, for one-line messages.
_OS_FIXES = {
    errno.ENOSPC: "the disk is full: free space",
    errno.EDQUOT: "the disk quota is exhausted: free space",
    errno.EFBIG: "a file-size limit was hit (ulimit -f): raise it or free space",
    errno.EACCES: "permission denied: fix the permissions",
    errno.EPERM: "not permitted: fix the permissions",
    errno.EROFS: "the filesystem is read-only",
    errno.ENOTDIR: "a path component is a file, not a directory",
    errno.ENOENT: "no such file or directory",
    errno.EISDIR: "a directory where a file was expected",
}
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def describe_os_error(e: OSError) -> str:
    """``'<path>: <what happened>'`` for an OSError, in one line (no traceback)."""
    what = _OS_FIXES.get(e.errno) or (e.strerror or str(e)).strip()
    where = e.filename if e.filename is not None else ""
    if e.filename2 is not None:
        where = f"{where} -> {e.filename2}"
    return f"{where}: {what}" if where else what


def _is_main() -> bool:
    return jax.process_index() == 0


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        # A full disk or a kill-by-exception must not leave the temporary file behind.
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.filename is None:
            e.filename = path  # a failed write() names no file; the message should
        raise


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


class MetricsLog:
    """``metrics.jsonl``: appended once per evaluation; trimmed back to a checkpoint on resume."""

    def __init__(self, path: str):
        self.path = path

    def read(self) -> list[dict[str, Any]]:
        if not os.path.exists(self.path):
            return []
        records = []
        with open(self.path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        break  # a torn last line from a killed write: drop it and the rest
        return records

    def truncate_after(self, step: int) -> list[dict[str, Any]]:
        """Keeps the records up to ``step`` (what the restored checkpoint has seen)."""
        records = [r for r in self.read() if r["step"] <= step]
        if _is_main() and (records or os.path.exists(self.path)):
            _atomic_write(self.path, "".join(json.dumps(r, default=_json_default) + "\n"
                                             for r in records))
        return records

    def append(self, record: dict[str, Any]) -> None:
        if not _is_main():
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record, default=_json_default) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            e.filename = e.filename or self.path  # name the file in the run's error
            raise


def _comparable(cfg_dict: dict[str, Any], ignore: tuple[str, ...]) -> dict[str, Any]:
    d = json.loads(json.dumps(cfg_dict, default=str, sort_keys=True))
    for key in ignore:
        d.pop(key, None)
    return d


def config_fingerprint(cfg: ml_collections.ConfigDict | dict[str, Any],
                       ignore: tuple[str, ...]) -> str:
    """sha256 of the config's canonical JSON without the top-level keys in ``ignore`` (those a
    resumed run may change): equal for every start of one run, different for another run."""
    d = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else cfg
    text = json.dumps(_comparable(d, ignore), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _steps_in(directory: str) -> list[int]:
    try:
        return sorted(int(n) for n in os.listdir(directory) if n.isdigit())
    except OSError:
        return []


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return out


class RunDir:
    """The files of one run under ``path``."""

    def __init__(self, path: str):
        if not isinstance(path, str) or not path.strip():
            raise WorkdirError(f"--workdir: empty ({path!r}); give the directory of the run, "
                               "e.g. --workdir=runs/digits (it is created if missing).")
        self.path = os.path.abspath(path)
        self.config_path = os.path.join(self.path, "config.json")
        self.summary_path = os.path.join(self.path, "summary.json")
        self.segments_path = os.path.join(self.path, "segments.json")
        self.checkpoints = os.path.join(self.path, "checkpoints")
        self.best = os.path.join(self.path, "best")
        self.plots = os.path.join(self.path, "plots")
        self.metrics = MetricsLog(os.path.join(self.path, "metrics.jsonl"))
        self._segments: list[dict[str, Any]] = []

    def check_config(self, cfg: ml_collections.ConfigDict, ignore: tuple[str, ...], *,
                     overwrite: bool = False) -> dict[str, Any] | None:
        """Decides whether this config may run here, before anything is written.

        ``ignore`` lists the top-level keys a resumed run may change. Returns the saved summary
        if this run already finished with the same length (nothing to do), None if the run may
        start, resume or be extended. Raises :class:`WorkdirError` (naming the way out) for a
        directory this run cannot continue: another config, a damaged ``config.json`` or
        ``summary.json``, run files without a ``config.json``, or files that are not a run's.
        With ``overwrite`` such a directory's contents are moved to ``archive/<time>/`` instead.
        """
        problem, finished = self._problem(cfg, ignore)
        if problem is None:
            return finished
        if not overwrite:
            way = WAY_OUT[0].upper() + WAY_OUT[1:] if problem.endswith(".") else WAY_OUT
            raise WorkdirError(f"{problem} {way}")
        self.archive()
        return None

    def _problem(self, cfg, ignore) -> tuple[str | None, dict[str, Any] | None]:
        """(what stops this config from using the directory, or None; a finished summary)."""
        if not os.path.isdir(self.path):
            return None, None
        if not os.path.exists(self.config_path):
            return self._problem_without_config(), None
        try:
            with open(self.config_path) as f:
                old = json.load(f)["config"]
            if not isinstance(old, dict):
                raise TypeError(f"'config' is a {type(old).__name__}")
        except (ValueError, KeyError, TypeError) as e:
            return (f"workdir {self.path}: its config.json is damaged ({type(e).__name__}: "
                    f"{e}), so the run there cannot be identified. Restore that file, or"), None
        new = json.loads(config_lib.to_json(cfg))
        diff = _diff(_comparable(old, ignore), _comparable(new, ignore))
        if diff:
            shown = "; ".join(diff[:8]) + (f"; ... ({len(diff)} in all)" if len(diff) > 8 else "")
            return f"workdir {self.path} holds a run with a different config ({shown}).", None
        same_length = all(old.get(k) == new.get(k) for k in ("num_epochs", "max_steps"))
        if not (same_length and os.path.exists(self.summary_path)):
            return None, None
        try:
            with open(self.summary_path) as f:
                summary = json.load(f)
            if not isinstance(summary, dict):
                raise TypeError(f"it holds a {type(summary).__name__}")
        except (ValueError, TypeError) as e:
            return (f"workdir {self.path}: the finished run's summary.json is damaged "
                    f"({type(e).__name__}: {e})."), None
        return None, summary

    def _problem_without_config(self) -> str | None:
        entries = set(os.listdir(self.path)) - set(NEUTRAL)
        foreign = sorted(entries - set(RUN_ENTRIES))
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            return (f"workdir {self.path} is not empty ({shown}) and holds no nlnoise run "
                    "(no config.json): a run would mix its files with these.")
        found = [name for name, there in (
            ("checkpoints", _steps_in(self.checkpoints)),
            ("damaged checkpoints", os.listdir(self.checkpoints + "-damaged")
             if os.path.isdir(self.checkpoints + "-damaged") else []),
            ("metrics.jsonl", self.metrics.read()),
            ("summary.json", os.path.exists(self.summary_path))) if there]
        if not found:
            return None  # directories made by a start that was stopped before writing
        return (f"workdir {self.path} holds a run's {', '.join(found)} but no config.json, so "
                "which config made them is unknown. Restore its config.json, or")

    def archive(self) -> str | None:
        """Moves everything but ``archive/`` and the lock to ``archive/<time>/`` (process 0;
        nothing is deleted). Returns the destination, or None when there was nothing."""
        if not _is_main() or not os.path.isdir(self.path):
            return None
        names = [n for n in os.listdir(self.path) if n not in NOT_ARCHIVED]
        if not names:
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest = os.path.join(self.path, "archive", stamp)
        n = 1
        while os.path.exists(dest):  # two archives within a second
            n += 1
            dest = os.path.join(self.path, "archive", f"{stamp}-{n}")
        os.makedirs(dest)
        for name in names:
            os.replace(os.path.join(self.path, name), os.path.join(dest, name))
        log.warning("moved the previous contents of %s to %s.", self.path, dest)
        return dest

    def identity(self, cfg: ml_collections.ConfigDict, ignore: tuple[str, ...],
                 dataset_fingerprint: str) -> dict[str, str]:
        """What a checkpoint of this run carries to say whose it is (see
        :func:`config_fingerprint`): the config's and the training labels' fingerprints."""
        return {"config_fingerprint": config_fingerprint(cfg, ignore),
                "dataset_fingerprint": dataset_fingerprint}

    def start(self, cfg: ml_collections.ConfigDict, dataset_fingerprint: str,
              config_fingerprint: str = "") -> None:
        """Creates the directory and records the config (first start only)."""
        if not _is_main():
            return
        os.makedirs(self.plots, exist_ok=True)
        saved = None
        if os.path.exists(self.config_path):
            with open(self.config_path) as f:
                saved = json.load(f).get("dataset_fingerprint")
        if saved and saved != dataset_fingerprint:
            raise WorkdirError(
                f"the training labels differ from those this run started with (fingerprint "
                f"{saved[:12]} -> {dataset_fingerprint[:12]}): the data files changed. Resume "
                "with the original data or start a new --workdir."
            )
        # (Re)written: a resumed run may have changed its length or device layout.
        _atomic_write(self.config_path, json.dumps(
            {"config": json.loads(config_lib.to_json(cfg)),
             "config_fingerprint": config_fingerprint,
             "dataset_fingerprint": dataset_fingerprint}, indent=1, sort_keys=True))

    def begin_segment(self, started: float, from_step: int) -> None:
        """Starts this process's entry in ``segments.json`` (the run's wall time is the sum
        of its segments, so a resumed run reports the whole run's)."""
        try:
            with open(self.segments_path) as f:
                self._segments = list(json.load(f))
        except (OSError, ValueError, TypeError):
            self._segments = []
        self._segments.append({"started": started, "from_step": int(from_step),
                               "to_step": int(from_step), "wall_s": 0.0})

    def update_segment(self, step: int, wall_s: float) -> float:
        """Records how far this segment got and its seconds so far; returns the run's total
        wall time (every segment, this one included)."""
        seg = self._segments[-1]
        seg["to_step"], seg["wall_s"] = int(step), float(wall_s)
        if _is_main():
            _atomic_write(self.segments_path, json.dumps(self._segments, indent=1))
        return sum(float(s.get("wall_s", 0.0)) for s in self._segments)

    @property
    def num_segments(self) -> int:
        return len(self._segments)

    def reporter(self, cfg: ml_collections.ConfigDict, *, total: int, initial: int) -> Reporter:
        return Reporter(self.path, cfg, total=total, initial=initial)

    def finish(self, summary: dict[str, Any], records: list[dict[str, Any]], *, q, q_true,
               class_names, plots: bool) -> None:
        """Writes plots, then summary.json (last: its presence marks a finished run)."""
        if not _is_main():
            return
        if plots:
            from nlnoise import plots as plots_lib

            name = summary["config"]["noise"]["model"]
            if name != "none":
                plots_lib.q_heatmaps(q, q_true, os.path.join(self.plots, "q.png"),
                                     class_names=list(class_names) + (
                                         ["outlier"] if q.shape[0] > len(class_names) else []),
                                     title=f"noise model: {name}")
            if records:
                plots_lib.training_curves(records, os.path.join(self.plots, "curves.png"))
        _atomic_write(self.summary_path, json.dumps(summary, indent=1, default=_json_default))


class Reporter:
    """Progress bar with ETA and live loss/error, log lines, TensorBoard scalars, PR plots."""

    def __init__(self, path: str, cfg: ml_collections.ConfigDict, *, total: int, initial: int):
        self.path = path
        self.main = _is_main()
        self.bar = None
        self.tb = None
        self.plots = cfg.plots
        if self.main and cfg.progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                            file=sys.stderr, mininterval=1.0)
        if self.main and cfg.tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(os.path.join(path, "tb"))
        self._last = initial

    def log_step(self, step: int, metrics: dict[str, Any], window: dict[str, Any]) -> None:
        if not self.main:
            return
        n = max(int(window["count"]), 1)
        loss, err = float(window["loss"]) / n, float(window["noisy_error"]) / n
        if self.bar is not None:
            self.bar.update(step - self._last)
            self.bar.set_postfix(loss=f"{loss:.4f}", noisy_err=f"{err:.3f}",
                                 trQ=f"{float(metrics['q_trace']):.2f}", refresh=False)
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"train/{k}", float(v), step)
        self._last = step

    def log_eval(self, record: dict[str, Any], pr: dict | None) -> None:
        if not self.main:
            return
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}
        message = "eval " + " ".join(f"{k}={v}" for k, v in shown.items())
        if self.bar is not None:
            self.bar.write(message)
        else:
            log.info(message)
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and math.isfinite(v) and k != "step":
                    self.tb.add_scalar(f"eval/{k}", v, record["step"])
            self.tb.flush()
        if pr is not None and self.plots:
            from nlnoise import plots as plots_lib

            plots_lib.pr_curves({"outlier detection": pr}, os.path.join(self.path, "plots",
                                                                       "pr.png"))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            try:
                self.tb.close()
            except OSError as e:  # a full disk: the run's own error says what matters
                log.debug("closing the TensorBoard writer failed: %s", e)
            self.tb = None
