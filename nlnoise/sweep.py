"""``nlnoise-sweep``: run a grid of experiments from the shell, resumably, and tabulate it.

    nlnoise-sweep --grid=fashion_noise                      # a named sweep of configs/sweeps.py
    nlnoise-sweep --grid=fashion_noise --only=noise=0.5     # just the cells matching a pattern
    nlnoise-sweep --config=configs/digits.py --grid="noise=0.3|0.5;model=none|learned" \\
        --root=runs/my_sweep [--base=epochs=4] [--set progress_bar=False]
    nlnoise-sweep --list                                    # the named sweeps
    nlnoise-sweep --grid=fashion_noise --report             # table + plot of finished cells

Every cell trains in its own workdir; finished cells are read back and interrupted ones resume,
so the same command continues a sweep after a stop. The table goes to ``<dir>/<grid>.json`` and
``<dir>/<grid>.md``, the plot of clean test error to ``<dir>/<grid>.png`` and the curves of
every cell (error and ``tr(Q)`` against epoch) to ``<dir>/<grid>_curves.png``.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from nlnoise import experiments

DEFAULT_SWEEPS = "configs/sweeps.py"
# Grid keys -> the record field plotted on the x axis.
RECORD_KEYS = {"noise": "noise_level", "level": "noise_level", "corruption.level": "noise_level",
               "size": "train_size", "dataset.train_size": "train_size", "ratio": "outlier_ratio"}


def parse_grid(text: str) -> dict[str, list[Any]]:
    """``"noise=0.3|0.5;model=none|learned"`` -> ``{"noise": [0.3, 0.5], "model": [...]}``."""
    grid: dict[str, list[Any]] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        key, sep, values = part.partition("=")
        if not sep or not values.strip():
            raise ValueError(f"--grid: {part!r} is not key=value1|value2|...; e.g. "
                             "--grid='noise=0.3|0.5;model=none|learned'.")
        grid[key.strip()] = [_literal(v.strip()) for v in values.split("|")]
    if not grid:
        raise ValueError("--grid: empty; give a sweep name (see --list) or key=v1|v2;...")
    return grid


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_sweeps(path: str) -> dict[str, dict[str, Any]]:
    """The named sweeps of a sweeps file (``get_sweeps()``; see ``configs/sweeps.py``)."""
    if not os.path.exists(path):
        raise ValueError(f"--sweeps: no file at {path!r}; run from the repository root or pass "
                         "--sweeps=path/to/sweeps.py.")
    import importlib.util

    spec = importlib.util.spec_from_file_location("nlnoise_sweeps", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_sweeps()


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """The sweep the command line names: config, directory, base variant, cells."""
    if args.config:
        grid = parse_grid(args.grid)
        name = os.path.basename(os.path.normpath(args.root)) or "sweep"
        return {"name": name, "config": args.config, "dir": args.root, "base": args.base,
                "cells": experiments.expand(grid), "x": RECORD_KEYS.get(next(iter(grid)),
                                                                       "noise_level")}
    sweeps = load_sweeps(args.sweeps)
    if args.grid not in sweeps:
        raise ValueError(f"--grid: no sweep named {args.grid!r} in {args.sweeps}; known: "
                         f"{', '.join(sorted(sweeps))} (or give --config with key=v1|v2;...).")
    s = sweeps[args.grid]
    directory = os.path.join(args.root, s["dir"])
    cells = experiments.expand(s["grid"])
    base = ",".join(b for b in (s.get("base", ""), args.base) if b)
    return {"name": args.grid, "config": s["config"], "dir": directory, "base": base,
            "cells": cells, "x": s.get("x", "noise_level")}


def select(cells: Sequence[experiments.Cell], patterns: Sequence[str]
           ) -> list[experiments.Cell]:
    """Cells whose variant string or name contains every pattern (quotes ignored)."""
    def text(cell):
        return " ".join(experiments.split_cell(cell)).replace("'", "").replace('"', "")

    plain = [p.replace("'", "").replace('"', "") for p in patterns]
    return [c for c in cells if all(p in text(c) for p in plain)]


PERCENT = ("test_error", "best_test_error", "noisy_train_error", "realized_flip_rate", "none",
           "learned", "true", "gap")
NAMES = {"test_error": "clean test error (%)", "noisy_train_error": "noisy train error (%)",
         "best_test_error": "clean test error at best_epoch (%)",
         "realized_flip_rate": "realized flips (%)", "wall_time_s": "wall (min)",
         "none": "none (%)", "learned": "learned (%)", "true": "true (%)", "gap": "gap (%)"}


def _fmt(key: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if key in PERCENT:
        return f"{100 * v:.2f}"
    if key == "wall_time_s":
        return f"{v / 60:.1f}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown(table: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A markdown table of the records; errors in percent, missing values blank. Where a row
    has ``<column>_std`` (an aggregate over seeds), the cell reads ``mean ± std``."""
    def cell(r: dict[str, Any], c: str) -> str:
        text = _fmt(c, r.get(c))
        std = r.get(f"{c}_std")
        if text and std is not None and not math.isnan(std):
            text += f" ± {_fmt(c, std)}"
        return text

    head = [NAMES.get(c, c) for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in table]
    return "\n".join(lines) + "\n"


COLUMNS = ("variant", "seed", "noise_kind", "noise_level", "train_size", "outlier_ratio",
           "model", "alpha", "test_error", "q_rel_l1", "q_trace", "q_star_trace", "outlier_ap",
           "best_epoch", "best_test_error", "best_q_rel_l1", "best_outlier_ap",
           "realized_flip_rate", "epochs", "wall_time_s", "error")
AGGREGATE_COLUMNS = ("variant", "noise_kind", "noise_level", "model", "n", "test_error",
                     "best_test_error", "q_rel_l1", "best_q_rel_l1", "outlier_ap",
                     "best_outlier_ap", "realized_flip_rate")


def report_text(table: Sequence[dict[str, Any]], x: str) -> str:
    """The markdown report of a sweep: every cell; the mean and standard deviation over seeds
    where a group of cells differs only in its seed; and the share of the none-to-true gap that
    learned Q closes, after the last epoch and at the label-free early-stopped epoch."""
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in table)]
    text = markdown(table, cols)
    groups = experiments.aggregate(table)
    if any(g["n"] > 1 for g in groups):
        acols = [c for c in AGGREGATE_COLUMNS if any(g.get(c) is not None for g in groups)]
        text += ("\nMean ± standard deviation over seeds (n cells per row):\n\n"
                 + markdown(groups, acols))
    for metric, when in (("test_error", "after the last epoch"),
                         ("best_test_error", "at the epoch the held-out noisy loss selects")):
        if not all(r.get(metric) is not None for r in table if "error" not in r):
            continue
        closure = experiments.gap_closure(table, by=x, metric=metric)
        if not closure:
            continue
        text += (f"\nClean test error {when} and the share of the none-to-true gap that "
                 "learned Q closes (per seed, then mean ± std over seeds; n seeds):\n\n"
                 + markdown(closure, [x, "variant", "n", "none", "learned", "true", "gap",
                                      "closure"]))
    return text


def report(name: str, directory: str, table: Sequence[dict[str, Any]], x: str) -> list[str]:
    """Writes ``<dir>/<name>.{json,md,png}`` and ``<dir>/<name>_curves.png`` (error and
    ``tr(Q)`` against epoch, per cell); returns the paths."""
    from nlnoise import plots

    paths = [os.path.join(directory, f"{name}.{e}") for e in ("json", "md", "png")]
    with open(paths[0], "w") as f:
        json.dump(list(table), f, indent=1, default=str)
    with open(paths[1], "w") as f:
        f.write(report_text(table, x))
    if all(isinstance(r.get(x), int | float) for r in table) and table:
        plots.error_vs_noise(table, paths[2], x=x, title=name)
    else:
        paths.pop()
    rows = experiments.curves(table)
    if rows:
        paths.append(plots.sweep_curves(rows, os.path.join(directory, f"{name}_curves.png"),
                                        title=name))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nlnoise-sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", help="a sweep name of --sweeps, or with --config: "
                   "'key=v1|v2;key2=...'")
    p.add_argument("--config", help="config file for an ad-hoc --grid")
    p.add_argument("--sweeps", default=DEFAULT_SWEEPS, help="file of named sweeps")
    p.add_argument("--root", default="runs/sweeps", help="directory of the sweeps' cells")
    p.add_argument("--base", default="", help="variant applied to every cell, e.g. epochs=3")
    p.add_argument("--only", action="append", default=[],
                   help="run only cells containing this text, e.g. noise=0.5 (repeatable: a cell "
                   "must contain every one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every cell, e.g. progress_bar=False")
    p.add_argument("--list", action="store_true", help="list the named sweeps and exit")
    p.add_argument("--dry_run", action="store_true", help="print the cells and exit")
    p.add_argument("--report", action="store_true",
                   help="tabulate finished cells only; train nothing")
    args = p.parse_args(argv)
    try:
        if args.list:
            for name, s in load_sweeps(args.sweeps).items():
                n = len(experiments.expand(s["grid"]))
                print(f"{name}: {n} cells of {s['config']} in <root>/{s['dir']}. {s['doc']}")
            return 0
        if not args.grid:
            raise ValueError("--grid is required (a sweep name, see --list).")
        sweep = resolve(args)
        cells = select(sweep["cells"], args.only)
        if not cells:
            raise ValueError(f"--only {args.only}: matches none of the {len(sweep['cells'])} "
                             "cells; see --dry_run.")
        overrides = {"progress_bar": False}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: expected KEY=VALUE.")
            overrides[key.strip()] = _literal(value.strip())
        if args.dry_run:
            for c in cells:
                name, variant = experiments.split_cell(c)
                done = os.path.exists(os.path.join(sweep["dir"], name, "summary.json"))
                print(f"{'done ' if done else 'to do'}  {name}: {variant}")
            return 0
        table = experiments.run_grid(sweep["config"], cells, root=sweep["dir"],
                                     base_variant=sweep["base"], overrides=overrides,
                                     placeholders={"{root}": sweep["dir"]},
                                     finished_only=args.report, keep_going=True)
    except (ValueError, OSError) as e:
        print(f"nlnoise-sweep: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # config, data and workdir errors of a cell: one line, exit 2
        from nlnoise.config import ConfigError
        from nlnoise.data import DataError
        from nlnoise.workdir import WorkdirError

        if isinstance(e, ConfigError | DataError | WorkdirError):
            print(f"nlnoise-sweep: error: {e}", file=sys.stderr)
            return 2
        raise
    for path in report(sweep["name"], sweep["dir"], table, sweep["x"]):
        print(path)
    failed = [r for r in table if "error" in r]
    for r in failed:
        print(f"nlnoise-sweep: cell {r['variant']} failed: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
