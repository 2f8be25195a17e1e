"""``nlnoise-sweep``: run a grid of experiments from the shell, resumably, and tabulate it.

    nlnoise-sweep --grid=fashion_noise                      # a named sweep of configs/sweeps.py
    nlnoise-sweep --grid=fashion_noise --only=noise=0.5     # just the cells matching a pattern
    nlnoise-sweep --config=configs/digits.py --grid="noise=0.3|0.5;model=none|learned" \\
        --root=runs/my_sweep [--base=epochs=4] [--set progress_bar=False]
    nlnoise-sweep --list                                    # the named sweeps
    nlnoise-sweep --grid=fashion_noise --report             # table + plot of finished cells

Every cell trains in its own workdir; finished cells are read back and interrupted ones resume,
so the same command continues a sweep after a stop. Every cell's config is built and validated
before anything runs (also with ``--dry_run``), and a cell that another process is running is
refused up front (run the other cells with ``--only``). Flags are absl flags, as
``nlnoise-train``'s (``--name=value`` or ``--name value``; ``--only`` and ``--set`` repeat);
every error is one line and exit code 2. The report covers every finished cell of the
sweep, also after a run of a few cells with ``--only``. The table goes to ``<dir>/<grid>.json`` and
``<dir>/<grid>.md``, the plot of clean test error to ``<dir>/<grid>.png`` and the curves of
every cell (error and ``tr(Q)`` against epoch) to ``<dir>/<grid>_curves.png``.
"""

from __future__ import annotations

import ast
import json
import math
import os
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any

from absl import flags

from nlnoise import cli, experiments, lock
from nlnoise import config as config_lib

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
        if any(not v.strip() for v in values.split("|")):
            raise ValueError(f"--grid: {part!r} has an empty value; separate values with single "
                             "'|', e.g. noise=0.3|0.5.")
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


def _split_config(config: str, *bases: str) -> tuple[str, str]:
    """``("configs/x.py:a=1", "b=2")`` -> ``("configs/x.py", "a=1,b=2")``: a config's own
    variant comes first, then the bases."""
    path, _, variant = config.partition(":")
    return path, ",".join(b for b in (variant, *bases) if b)


def resolve(args: Any) -> dict[str, Any]:
    """The sweep the command line names (``args``: the parsed flags, as attributes): config
    file, directory, base variant, cells."""
    if args.config:
        grid = parse_grid(args.grid)
        name = os.path.basename(os.path.normpath(args.root)) or "sweep"
        path, base = _split_config(args.config, args.base)
        return {"name": name, "config": path, "dir": args.root, "base": base,
                "cells": experiments.expand(grid), "x": RECORD_KEYS.get(next(iter(grid)),
                                                                       "noise_level")}
    sweeps = load_sweeps(args.sweeps)
    if args.grid not in sweeps:
        raise ValueError(f"--grid: no sweep named {args.grid!r} in {args.sweeps}; known: "
                         f"{', '.join(sorted(sweeps))} (or give --config with key=v1|v2;...).")
    s = sweeps[args.grid]
    directory = os.path.join(args.root, s["dir"])
    cells = experiments.expand(s["grid"])
    path, base = _split_config(s["config"], s.get("base", ""), args.base)
    return {"name": args.grid, "config": path, "dir": directory, "base": base,
            "cells": cells, "x": s.get("x", "noise_level")}


def check_cells(sweep: Mapping[str, Any], cells: Sequence[experiments.Cell],
                overrides: Mapping[str, Any]) -> list[str]:
    """Builds and validates every cell's config before anything runs; returns the cells'
    workdirs. Raises ``ConfigError`` naming the first bad cell (unknown key, bad value, a
    config file that does not load) and ``WorkdirBusyError`` for a cell another process is
    running. The device-dependent checks (mesh, batch divisibility) wait for the cell's run."""
    if not os.path.isfile(sweep["config"]):
        raise config_lib.ConfigError(f"config: no file at {sweep['config']!r}; run from the "
                                     "repository root or give the config file's path.")
    workdirs = []
    for cell in cells:
        name, variant = experiments.split_cell(cell)
        variant = variant.replace("{root}", sweep["dir"])
        full = ",".join(v for v in (sweep["base"], variant) if v)
        try:
            cfg = experiments.load_config(sweep["config"], full)
            for key, value in overrides.items():
                config_lib.set_path(cfg, key, value)
            config_lib.validate(cfg, num_devices=0)
        except config_lib.ConfigError as e:
            raise config_lib.ConfigError(f"cell {name} ({full}): {e}") from None
        except Exception as e:  # the config file itself failed (syntax, name, ...)
            raise config_lib.ConfigError(f"cell {name}: {sweep['config']} with {full!r} does "
                                         f"not load: {type(e).__name__}: {e}") from None
        workdir = os.path.join(sweep["dir"], name)
        holder = lock.busy_holder(workdir)
        if holder is not None:
            raise lock.WorkdirBusyError(
                f"cell {name} ({workdir}) is in use by {lock.describe(holder)}; wait for it, "
                "or leave it out (--only selects the cells to run). Nothing was run.")
        workdirs.append(workdir)
    return workdirs


def select(cells: Sequence[experiments.Cell], patterns: Sequence[str]
           ) -> list[experiments.Cell]:
    """Cells whose variant string or name contains every pattern (quotes ignored)."""
    def text(cell):
        return " ".join(experiments.split_cell(cell)).replace("'", "").replace('"', "")

    plain = [p.replace("'", "").replace('"', "") for p in patterns]
    return [c for c in cells if all(p in text(c) for p in plain)]


PERCENT = ("test_error", "best_test_error", "noisy_train_error", "realized_flip_rate", "none",
           "learned", "true", "gap", "gain")
NAMES = {"test_error": "clean test error (%)", "noisy_train_error": "noisy train error (%)",
         "best_test_error": "clean test error at best_epoch (%)",
         "realized_flip_rate": "realized flips (%)", "wall_time_s": "wall (min)",
         "none": "none (%)", "learned": "learned (%)", "true": "true (%)", "gap": "gap (%)",
         "gain": "gain (points)"}


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


def whole_sweep(sweep: Mapping[str, Any], run_cells: Sequence[experiments.Cell],
                table: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``table`` (the records of ``run_cells``) plus every other finished cell of ``sweep``, in
    the sweep's order: the report describes the whole sweep, so a run of a few cells with
    ``--only`` adds to it instead of replacing it with those cells alone."""
    rest = [c for c in sweep["cells"] if c not in run_cells]
    if not rest:
        return list(table)
    others = experiments.run_grid(sweep["config"], rest, root=sweep["dir"],
                                  base_variant=sweep["base"],
                                  placeholders={"{root}": sweep["dir"]}, finished_only=True,
                                  keep_going=True, verbose=False)
    by_cell = {r["cell"]: r for r in [*others, *table]}
    order = [experiments.split_cell(c)[0] for c in sweep["cells"]]
    return [by_cell[name] for name in order if name in by_cell]


def report_text(table: Sequence[dict[str, Any]], x: str) -> str:
    """The markdown report of a sweep: every cell; the mean and standard deviation over seeds
    where a group of cells differs only in its seed; and learned Q's paired gain over none and
    the share of the none-to-true gap it closes, after the last epoch and at the label-free
    early-stopped epoch."""
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
        text += (f"\nClean test error {when}, learned Q's gain over none (none - learned) and "
                 "the share of the none-to-true gap it closes (per seed, then mean ± std over "
                 "seeds; n seeds; wins: seeds where learned beats none):\n\n"
                 + markdown(closure, [x, "variant", "n", "none", "learned", "true", "gap",
                                      "gain", "wins", "closure"]))
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


def _define_flags() -> flags.FlagValues:
    """A fresh set of absl flags (not absl's global one, which nlnoise-train's flags use)."""
    fv = flags.FlagValues()
    flags.DEFINE_string("grid", None, "a sweep name of --sweeps, or with --config: "
                        "'key=v1|v2;key2=...'", flag_values=fv)
    flags.DEFINE_string("config", None, "config file[:variant] for an ad-hoc --grid",
                        flag_values=fv)
    flags.DEFINE_string("sweeps", DEFAULT_SWEEPS, "file of named sweeps", flag_values=fv)
    flags.DEFINE_string("root", "runs/sweeps", "directory of the sweeps' cells", flag_values=fv)
    flags.DEFINE_string("base", "", "variant applied to every cell, e.g. epochs=3",
                        flag_values=fv)
    flags.DEFINE_multi_string("only", [], "run only cells containing this text, e.g. "
                              "noise=0.5 (repeatable: a cell must contain every one); the "
                              "report still covers every finished cell", flag_values=fv)
    flags.DEFINE_multi_string("set", [], "KEY=VALUE: config override for every cell, e.g. "
                              "progress_bar=False (repeatable)", flag_values=fv)
    flags.DEFINE_bool("list", False, "list the named sweeps and exit", flag_values=fv)
    flags.DEFINE_bool("dry_run", False, "validate every cell, print them and exit",
                      flag_values=fv)
    flags.DEFINE_bool("report", False, "tabulate finished cells only; train nothing",
                      flag_values=fv)
    return fv


def parse_flags(argv: Sequence[str]) -> types.SimpleNamespace:
    """The command line (without the program name) as attributes; ``ValueError`` in one line
    for an unknown flag, a bad value or a stray argument."""
    fv = _define_flags()
    try:
        rest = fv(["nlnoise-sweep", *argv])
    except flags.Error as e:
        raise ValueError(" ".join(str(e).split())) from None
    if len(rest) > 1:
        raise ValueError(f"unexpected arguments {rest[1:]}: options are --name=value.")
    return types.SimpleNamespace(**{name: fv[name].value for name in fv})


def _overrides(items: Sequence[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {"progress_bar": False}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE.")
        overrides[key.strip()] = _literal(value.strip())
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    """``nlnoise-sweep`` with ``argv`` (without the program name; default ``sys.argv[1:]``).
    Returns the exit code: 0, 1 when a cell failed while running, 2 for a refused command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv):
        print(__doc__.strip() + "\n\nflags:\n" + _define_flags().get_help())
        return 0
    from nlnoise.data import DataError
    from nlnoise.workdir import WorkdirError, describe_os_error

    try:
        args = parse_flags(argv)
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
        overrides = _overrides(args.set)
        # A report trains nothing, so it needs no valid or free cell.
        workdirs = [] if args.report and not args.dry_run else check_cells(sweep, cells,
                                                                           overrides)
        if args.dry_run:
            for c, workdir in zip(cells, workdirs, strict=True):
                name, variant = experiments.split_cell(c)
                done = os.path.exists(os.path.join(workdir, "summary.json"))
                print(f"{'done ' if done else 'to do'}  {name}: {variant}")
            return 0
        table = experiments.run_grid(sweep["config"], cells, root=sweep["dir"],
                                     base_variant=sweep["base"], overrides=overrides,
                                     placeholders={"{root}": sweep["dir"]},
                                     finished_only=args.report, keep_going=True)
        table = whole_sweep(sweep, cells, table)
    except (ValueError, DataError, WorkdirError, lock.LockError) as e:
        return cli.error("nlnoise-sweep", str(e))
    except OSError as e:
        return cli.error("nlnoise-sweep", f"{describe_os_error(e)} ({type(e).__name__}).")
    except KeyboardInterrupt:
        print("nlnoise-sweep: stopped. Finished cells and the checkpoints of the interrupted "
              "one are kept; run the same command to continue.", file=sys.stderr)
        return 130
    for path in report(sweep["name"], sweep["dir"], table, sweep["x"]):
        print(path)
    failed = [r for r in table if "error" in r]
    for r in failed:
        print(f"nlnoise-sweep: cell {r['variant']} failed: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt  # the same clean stop as Ctrl-C (the cell's lock is released)


def run() -> None:
    """Console-script entry point."""
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.exit(main())


if __name__ == "__main__":
    run()
