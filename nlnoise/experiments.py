"""Sweeps for notebooks and the command line: a resumable grid of config variants -> a table.

    from nlnoise import experiments
    table = experiments.run_grid("configs/fashion_mnist.py",
                                 {"noise": [0.3, 0.5, 0.7], "model": ["none", "learned"]},
                                 root="runs/sweep", base_variant="epochs=8")
    experiments.to_dataframe(table)           # pandas, if installed

Each cell is one run of ``nlnoise.run.train_and_evaluate`` in its own workdir
``root/<cell>``; a finished cell is read back instead of being trained again, and an
interrupted one resumes from its checkpoint, so a long sweep can be stopped and restarted at any
time. ``nlnoise-sweep`` runs the same grids from the shell.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ml_collections

from nlnoise import config as config_lib

# A product {key: [values]}, or a list of variant strings / (cell name, variant) pairs.
Grid = Mapping[str, Sequence[Any]] | Sequence[str | tuple[str, str]]
Cell = str | tuple[str, str]


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """Loads ``get_config(arg)`` from a config file path (as ``--config=path:arg`` does)."""
    if ":" in path and arg is None:
        path, arg = path.split(":", 1)
    if not os.path.exists(path):
        raise config_lib.ConfigError(f"config: no file at {path!r}.")
    spec = importlib.util.spec_from_file_location(
        f"nlnoise_cfg_{abs(hash(os.path.abspath(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)


def expand(grid: Grid) -> list[Cell]:
    """Cells of a grid: ``{"noise": [0.3, 0.5], "model": ["none"]}`` ->
    ``["noise=0.3,model='none'", "noise=0.5,model='none'"]``; a list is kept as it is."""
    if isinstance(grid, Mapping):
        keys = list(grid)
        cells = []
        for values in itertools.product(*(grid[k] for k in keys)):
            cells.append(",".join(f"{k}={v!r}" for k, v in zip(keys, values, strict=True)))
        return cells
    return [tuple(g) if isinstance(g, tuple | list) else str(g) for g in grid]


def split_cell(cell: Cell) -> tuple[str, str]:
    """``(directory name, variant string)`` of a cell."""
    if isinstance(cell, tuple):
        name, variant = cell
        return cell_name(name), variant
    return cell_name(cell), cell


def cell_name(variant: str) -> str:
    """A directory name for a variant string (stable and readable)."""
    name = variant.replace("'", "").replace('"', "").replace(",", "__").replace("=", "-")
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name) or "default"


def cell_label(cell: Cell) -> str:
    """The variant-like label a report groups and shows a cell by: the given name of a
    ``(name, variant)`` cell (its variant may hold seed-specific paths), else its variant."""
    return cell[0] if isinstance(cell, tuple) else cell


def _record(name: str, variant: str, cfg, summary: dict[str, Any], workdir: str, label: str
            ) -> dict[str, Any]:
    final = dict(summary.get("final", {}))
    return {
        "cell": name,
        "label": label,
        "variant": variant,
        "seed": cfg.seed,
        "model": cfg.noise.model,
        "noise_kind": cfg.corruption.kind,
        "noise_level": cfg.corruption.level,
        "train_size": cfg.dataset.train_size,
        "outlier_ratio": (cfg.dataset.num_outliers / cfg.dataset.train_size
                          if cfg.dataset.get("num_outliers") else None),
        "alpha": summary.get("alpha"),
        "epochs": summary.get("epochs"),
        "wall_time_s": summary.get("wall_time_s"),
        "realized_flip_rate": summary.get("realized_flip_rate"),
        "workdir": workdir,
        **{k: v for k, v in final.items() if not isinstance(v, dict | list)},
        # The evaluation a held-out noisy split selects (dataset.val_size), if there is one.
        **{f"best_{k}": v for k, v in (summary.get("best") or {}).items()
           if k in ("epoch", "test_error", "q_rel_l1", "q_trace", "val_noisy_loss",
                    "outlier_ap")},
    }


def run_grid(
    config_path: str,
    grid: Grid,
    *,
    root: str,
    base_variant: str = "",
    overrides: Mapping[str, Any] | None = None,
    placeholders: Mapping[str, str] | None = None,
    train_fn: Callable[..., dict[str, Any]] | None = None,
    finished_only: bool = False,
    keep_going: bool = False,
    verbose: bool = True,
) -> list[dict[str, Any]]:
    """Runs every cell of ``grid`` on the config file ``config_path``; returns one record each.

    Args:
      config_path: a config file, e.g. ``"configs/fashion_mnist.py"``.
      grid: ``{short_or_dotted_key: [values]}`` (a product) or a list of variant strings or
        ``(cell name, variant)`` pairs.
      root: directory holding one workdir per cell.
      base_variant: applied before each cell's variant (e.g. ``"epochs=8"``).
      placeholders: text replaced in variants before they are parsed (not in cell names),
        e.g. ``{"{root}": root}`` lets a cell read an earlier cell's output.
      overrides: ``{dotted.key: value}`` applied last to every cell (e.g. progress bars off).
      train_fn: defaults to :func:`nlnoise.run.train_and_evaluate`.
      finished_only: train nothing; tabulate the cells that have finished.
      keep_going: a cell that fails (bad config, non-finite loss, ...) gets a record with its
        ``error`` and the sweep goes on; otherwise the error propagates.

    Returns:
      Records with the cell's variant, model, noise kind/level, train size, wall time and its
      final metrics (``test_error``, ``q_rel_l1``, ``q_trace``, ``outlier_ap``, ...); with a
      held-out noisy split (``dataset.val_size``) also ``best_epoch``, ``best_test_error``,
      ``best_q_rel_l1``, ... of the evaluation with the lowest ``val_noisy_loss``.
    """
    if train_fn is None:
        from nlnoise import run as run_lib

        train_fn = run_lib.train_and_evaluate
    records = []
    os.makedirs(root, exist_ok=True)
    cells = expand(grid)
    for i, cell in enumerate(cells):
        name, variant = split_cell(cell)
        label = cell_label(cell)
        for old, new in (placeholders or {}).items():
            variant = variant.replace(old, new)
        workdir = os.path.join(root, name)
        done = os.path.exists(os.path.join(workdir, "summary.json"))
        if finished_only and not done:
            continue
        if verbose:
            state = "done, reading" if done else "running"
            print(f"[{i + 1}/{len(cells)}] {variant}: {state} ({workdir})", file=sys.stderr)
        t0 = time.time()
        try:
            if finished_only:
                # A report trains nothing and reads what each run records of itself, so it
                # describes the runs as they were made.
                summary = _read_summary(workdir)
                cfg = ml_collections.ConfigDict(summary["config"])
            else:
                full = ",".join(v for v in (base_variant, variant) if v)
                cfg = load_config(config_path, full)
                for key, value in (overrides or {}).items():
                    config_lib.set_path(cfg, key, value)
                summary = train_fn(cfg, workdir)
        except Exception as e:
            if not keep_going:
                raise
            print(f"    failed: {type(e).__name__}: {e}", file=sys.stderr)
            records.append({"cell": name, "label": label, "variant": variant,
                            "workdir": workdir, "error": f"{type(e).__name__}: {e}"})
            continue
        rec = _record(name, variant, cfg, summary, workdir, label)
        if verbose and not done:
            print(f"    test_error={rec.get('test_error')} q_rel_l1={rec.get('q_rel_l1')} "
                  f"({time.time() - t0:.0f}s)", file=sys.stderr)
        records.append(rec)
    return records


def _read_summary(workdir: str) -> dict[str, Any]:
    import json

    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


def curves(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every evaluation of every cell: the rows of each cell's ``metrics.jsonl`` with its
    ``cell`` and ``variant``, for plotting a sweep against epochs (e.g. ``q_trace`` against
    ``q_star_trace``). Cells that failed or have no metrics yet contribute nothing."""
    from nlnoise import workdir as workdir_lib

    out = []
    for rec in records:
        if "error" in rec or not rec.get("workdir"):
            continue
        path = os.path.join(rec["workdir"], "metrics.jsonl")
        for row in workdir_lib.MetricsLog(path).read():
            out.append({"cell": rec["cell"], "variant": rec["variant"], **row})
    return out


def to_dataframe(records: Iterable[dict[str, Any]]):
    """The records as a pandas DataFrame (pandas is optional: ``pip install nlnoise[notebook]``)."""
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("to_dataframe needs pandas: pip install 'nlnoise[notebook]'.") from e
    return pd.DataFrame(list(records))


def group_of(record: dict[str, Any], over: str) -> str:
    """A record's group: its label (or variant) without the ``over`` item."""
    return without_keys(record.get("label") or record.get("variant", ""), [over])


def without_keys(variant: str, keys: Sequence[str]) -> str:
    """``variant`` with its ``key=value`` items for ``keys`` removed: the cell's group."""
    drop = set(keys)
    parts = [p for p in config_lib.split_variant(variant)
             if p.strip() and p.partition("=")[0].strip() not in drop]
    return ",".join(p.strip() for p in parts)


def stats(values: Sequence[float | None]) -> dict[str, float]:
    """``mean``, sample ``std`` (NaN for fewer than 2) and ``n`` of the numbers in ``values``,
    None and NaN left out (NaN mean for none)."""
    import numpy as np

    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], np.float64)
    if not v.size:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
            "n": int(v.size)}


AGGREGATED = ("test_error", "best_test_error", "q_rel_l1", "best_q_rel_l1", "q_trace",
              "outlier_ap", "best_outlier_ap", "realized_flip_rate", "wall_time_s")


def aggregate(table: Sequence[dict[str, Any]], *, over: str = "seed",
              metrics: Sequence[str] = AGGREGATED) -> list[dict[str, Any]]:
    """One row per group of cells that differ only in ``over`` (default the seed).

    Each row keeps the group's shared fields (``variant`` without the ``over`` item, model,
    noise kind and level, ...) and, per metric, ``<metric>`` (the mean), ``<metric>_std``
    (sample standard deviation, NaN for one cell) and ``n`` (the number of cells with a value).
    Failed cells are left out.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in table:
        if "error" in r:
            continue
        groups.setdefault(group_of(r, over), []).append(r)
    out = []
    for group, rows in groups.items():
        shared = {k: v for k, v in rows[0].items()
                  if k not in (*metrics, over, "cell", "workdir", "variant", "label")
                  and all(r.get(k) == v for r in rows)}
        row: dict[str, Any] = {"variant": group, **shared, "n": len(rows)}
        for m in metrics:
            if any(r.get(m) is not None for r in rows):
                st = stats([r.get(m) for r in rows])
                row[m], row[f"{m}_std"] = st["mean"], st["std"]
        out.append(row)
    return out


def gap_closure(table: Sequence[dict[str, Any]], *, by: str = "noise_level",
                metric: str = "test_error", over: str = "seed") -> list[dict[str, Any]]:
    """How much of the none-to-true gap each learned cell closes, per value of ``by``.

    ``closure = (err_none - err_learned) / (err_none - err_true)``, computed within each value of
    ``over`` (a seed's none, learned and true share their flips) and then averaged over it: the
    rows hold the means and, as ``<field>_std``, the sample standard deviations, and ``n``. The
    paper's ImageNet result is (53.7 - 45.2) / (53.7 - 41.4) = 0.69. Where several learned cells
    share a value of ``by`` (recipe variants), each gets its own row, named by its ``variant``
    without the ``over`` item. Where ``true`` is no better than ``none`` (gap <= 0: nothing to
    close, as when no model has fitted the flips yet) that seed's closure is NaN, and the mean is
    over the other seeds.

    Also ``gain``: ``err_none - err_learned`` per seed (defined where the gap is not: a paired
    difference whose mean and spread do not depend on a small denominator) and ``wins``: the
    number of seeds in which learned beats none.
    """
    table = [r for r in table if "error" not in r and r.get(metric) is not None]
    per_seed: dict[tuple[Any, str], list[dict[str, float]]] = {}
    for value in sorted({r[by] for r in table}, key=str):
        for seed in sorted({r.get(over) for r in table if r[by] == value}, key=str):
            here = [r for r in table if r[by] == value and r.get(over) == seed]
            base = {r["model"]: r[metric] for r in here if r["model"] in ("none", "true")}
            if len(base) < 2:
                continue
            gap = base["none"] - base["true"]
            for r in here:
                if r["model"] != "learned":
                    continue
                key = (value, group_of(r, over))
                gain = base["none"] - r[metric]
                per_seed.setdefault(key, []).append({
                    "none": base["none"], "learned": r[metric], "true": base["true"],
                    "gap": gap, "gain": gain,
                    "closure": gain / gap if gap > 0 else float("nan")})
    out = []
    for (value, variant), rows in per_seed.items():
        row: dict[str, Any] = {by: value, "variant": variant}
        for field in ("none", "learned", "true", "gap", "gain", "closure"):
            st = stats([r[field] for r in rows])
            row[field], row[f"{field}_std"] = st["mean"], st["std"]
        row["n"], row["closure_n"] = len(rows), st["n"]
        row["wins"] = sum(r["gain"] > 0 for r in rows)
        out.append(row)
    return out
