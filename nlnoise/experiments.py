"""Sweeps for notebooks and the command line: a resumable grid of config variants -> a table.

    from nlnoise import experiments
    table = experiments.run_grid("configs/fashion_mnist.py",
                                 {"noise": [0.3, 0.5, 0.7], "model": ["none", "learned"]},
                                 root="runs/sweep", base_variant="epochs=8")
    experiments.to_dataframe(table)           # pandas, if installed

Each cell is one run of ``nlnoise.train.train_and_evaluate`` in its own workdir
``root/<cell>``; a finished cell is read back instead of being trained again, and an
interrupted one resumes from its checkpoint, so a long sweep can be stopped and restarted (even
in another session). ``nlnoise-sweep`` runs the same grids from the shell.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ml_collections

from nlnoise import config as config_lib

Grid = Mapping[str, Sequence[Any]] | Sequence[str]


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


def expand(grid: Grid) -> list[str]:
    """Variant strings of a grid: ``{"noise": [0.3, 0.5], "model": ["none"]}`` ->
    ``["noise=0.3,model='none'", "noise=0.5,model='none'"]``; a list of strings is kept."""
    if isinstance(grid, Mapping):
        keys = list(grid)
        cells = []
        for values in itertools.product(*(grid[k] for k in keys)):
            cells.append(",".join(f"{k}={v!r}" for k, v in zip(keys, values, strict=True)))
        return cells
    return [str(g) for g in grid]


def cell_name(variant: str) -> str:
    """A directory name for a variant string (stable and readable)."""
    name = variant.replace("'", "").replace('"', "").replace(",", "__").replace("=", "-")
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name) or "default"


def _record(variant: str, cfg, summary: dict[str, Any], workdir: str) -> dict[str, Any]:
    final = dict(summary.get("final", {}))
    return {
        "cell": cell_name(variant),
        "variant": variant,
        "model": cfg.noise.model,
        "noise_kind": cfg.noise.kind,
        "noise_level": cfg.noise.level,
        "train_size": cfg.dataset.train_size,
        "alpha": summary.get("alpha"),
        "epochs": summary.get("epochs"),
        "wall_time_s": summary.get("wall_time_s"),
        "realized_flip_rate": summary.get("realized_flip_rate"),
        "workdir": workdir,
        **{k: v for k, v in final.items() if not isinstance(v, dict | list)},
    }


def run_grid(
    config_path: str,
    grid: Grid,
    *,
    root: str,
    base_variant: str = "",
    overrides: Mapping[str, Any] | None = None,
    train_fn: Callable[..., dict[str, Any]] | None = None,
    verbose: bool = True,
) -> list[dict[str, Any]]:
    """Runs every cell of ``grid`` on the config file ``config_path``; returns one record each.

    Args:
      config_path: a config file, e.g. ``"configs/fashion_mnist.py"``.
      grid: ``{short_or_dotted_key: [values]}`` (a product) or a list of variant strings.
      root: directory holding one workdir per cell.
      base_variant: applied before each cell's variant (e.g. ``"epochs=8"``).
      overrides: ``{dotted.key: value}`` applied last to every cell (e.g. progress bars off).
      train_fn: defaults to :func:`nlnoise.train.train_and_evaluate`.

    Returns:
      Records with the cell's variant, model, noise kind/level, train size, wall time and its
      final metrics (``test_error``, ``q_rel_l1``, ``q_trace``, ``outlier_ap``, ...).
    """
    if train_fn is None:
        from nlnoise import train

        train_fn = train.train_and_evaluate
    records = []
    os.makedirs(root, exist_ok=True)
    cells = expand(grid)
    for i, variant in enumerate(cells):
        full = ",".join(v for v in (base_variant, variant) if v)
        cfg = load_config(config_path, full)
        for key, value in (overrides or {}).items():
            config_lib.set_path(cfg, key, value)
        workdir = os.path.join(root, cell_name(variant))
        done = os.path.exists(os.path.join(workdir, "summary.json"))
        if verbose:
            state = "done, reading" if done else "running"
            print(f"[{i + 1}/{len(cells)}] {variant}: {state} ({workdir})", file=sys.stderr)
        t0 = time.time()
        summary = train_fn(cfg, workdir)
        rec = _record(variant, cfg, summary, workdir)
        if verbose and not done:
            print(f"    test_error={rec.get('test_error')} q_rel_l1={rec.get('q_rel_l1')} "
                  f"({time.time() - t0:.0f}s)", file=sys.stderr)
        records.append(rec)
    with open(os.path.join(root, "table.json"), "w") as f:
        json.dump(records, f, indent=1, default=str)
    return records


def to_dataframe(records: Iterable[dict[str, Any]]):
    """The records as a pandas DataFrame (pandas is optional: ``pip install nlnoise[notebook]``)."""
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("to_dataframe needs pandas: pip install 'nlnoise[notebook]'.") from e
    return pd.DataFrame(list(records))


def gap_closure(table: Sequence[dict[str, Any]], *, by: str = "noise_level",
                metric: str = "test_error") -> list[dict[str, Any]]:
    """Per value of ``by``: how much of the none-to-true gap the learned model closes.

    ``closure = (err_none - err_learned) / (err_none - err_true)``; the paper's ImageNet result
    is (53.7 - 45.2) / (53.7 - 41.4) = 0.69.
    """
    out = []
    for value in sorted({r[by] for r in table}):
        rows = {r["model"]: r[metric] for r in table if r[by] == value}
        if not {"none", "learned", "true"} <= set(rows):
            continue
        gap = rows["none"] - rows["true"]
        out.append({by: value, "none": rows["none"], "learned": rows["learned"],
                    "true": rows["true"], "gap": gap,
                    "closure": (rows["none"] - rows["learned"]) / gap if gap else float("nan")})
    return out
