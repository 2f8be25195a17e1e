"""A run's directory: config identity, metrics.jsonl, summary.json, plots, progress and TensorBoard.

Layout of ``DIR``::

    config.json      the resolved config of the run that owns DIR
    metrics.jsonl    one JSON object per evaluation
    summary.json     written last, when the run has finished
    checkpoints/     orbax checkpoints (state + data iterator position)
    best/            the parameters at the lowest held-out noisy loss (``dataset.val_size``)
    plots/           q.png (learned Q beside Q*), curves.png, pr.png (outlier runs)
    tb/              TensorBoard event files
    archive/         earlier runs moved aside by ``--overwrite`` (never deleted)

Only process 0 writes files other than checkpoints. Every file is written to a temporary name
and renamed, so a killed run never leaves a half-written config, summary or metrics file.
"""

from __future__ import annotations

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

log = logging.getLogger("nlnoise")


class WorkdirError(RuntimeError):
    """The workdir holds another run, or a finished run would be clobbered."""


def _is_main() -> bool:
    return jax.process_index() == 0


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _comparable(cfg_dict: dict[str, Any], ignore: tuple[str, ...]) -> dict[str, Any]:
    d = json.loads(json.dumps(cfg_dict, default=str, sort_keys=True))
    for key in ignore:
        d.pop(key, None)
    return d


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
        self.path = os.path.abspath(path)
        self.config_path = os.path.join(self.path, "config.json")
        self.summary_path = os.path.join(self.path, "summary.json")
        self.checkpoints = os.path.join(self.path, "checkpoints")
        self.best = os.path.join(self.path, "best")
        self.plots = os.path.join(self.path, "plots")
        self.metrics = MetricsLog(os.path.join(self.path, "metrics.jsonl"))

    def check_config(self, cfg: ml_collections.ConfigDict, ignore: tuple[str, ...], *,
                     overwrite: bool = False) -> dict[str, Any] | None:
        """Decides whether this config may run here, before anything is written.

        ``ignore`` lists the top-level keys a resumed run may change. Returns the saved summary
        if this run already finished with the same length (nothing to do), None if the run may
        start, resume or be extended. Raises :class:`WorkdirError` for a different run unless
        ``overwrite``, in which case that run is moved to ``archive/<time>/``.
        """
        if not os.path.exists(self.config_path):
            return None
        with open(self.config_path) as f:
            old = json.load(f)["config"]
        new = json.loads(config_lib.to_json(cfg))
        diff = _diff(_comparable(old, ignore), _comparable(new, ignore))
        if not diff:
            same_length = all(old.get(k) == new.get(k) for k in ("num_epochs", "max_steps"))
            if same_length and os.path.exists(self.summary_path):
                with open(self.summary_path) as f:
                    return json.load(f)
            return None
        if not overwrite:
            shown = "; ".join(diff[:8]) + (f"; ... ({len(diff)} in all)" if len(diff) > 8 else "")
            raise WorkdirError(
                f"workdir {self.path} holds a run with a different config ({shown}). Use a new "
                "--workdir, or pass --overwrite to move that run to its archive/ subdirectory."
            )
        if _is_main():
            dest = os.path.join(self.path, "archive", time.strftime("%Y%m%d-%H%M%S"))
            os.makedirs(dest, exist_ok=True)
            for name in os.listdir(self.path):
                if name != "archive":
                    os.replace(os.path.join(self.path, name), os.path.join(dest, name))
            log.warning("moved the previous run in %s to %s.", self.path, dest)
        return None

    def start(self, cfg: ml_collections.ConfigDict, dataset_fingerprint: str) -> None:
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
             "dataset_fingerprint": dataset_fingerprint}, indent=1, sort_keys=True))

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
                log.warning("closing the TensorBoard writer failed: %s", e)
            self.tb = None
