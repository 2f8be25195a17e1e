"""Report (not a test): the `fashion_beyond` cells against `fashion_memorise`'s of the same seed.

`fashion_beyond` (configs/sweeps.py) trains what the paper does not, without clean labels: a
plain network on the labels the audit of each `learned` run relabelled or pruned (the second
stage), and learned Q started from the network's confusion (`q.init=confusion`). Its cells
have no `none` or `true` of their own, so the gap they close is measured against
`fashion_memorise`'s cells of the same seed and level (same training subset, held-out split and
flips). For every method, read-out (after the last epoch; early-stopped on held-out noisy labels)
and level it prints, as mean ± std over seeds (n): clean test error, the gain over `none` and
over the first-stage `learned` run (points, paired per seed; wins), and the closure
``(none - method) / (none - true)``.

    .venv/bin/python bench/beyond_closure.py --root=runs/sweeps [--levels 0.5 0.7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

SEEDS = (0, 1, 2)
METHODS = {  # name: the cell of fashion_beyond for a seed and level
    "stage 2, relabelled": "seed-{s}__noise-{n}__stage2-relabelled__model-none",
    "stage 2, pruned": "seed-{s}__noise-{n}__stage2-pruned__model-none",
    "learned, confusion start": "seed-{s}__noise-{n}__model-learned__q_init-confusion",
}
READOUTS = {"after the last epoch": "final", "early-stopped": "best"}


def test_error(cell: Path, readout: str) -> float | None:
    """Clean test error (%) of a finished cell at ``readout`` ("final" or "best"), else None."""
    try:
        summary = json.loads((cell / "summary.json").read_text())
        return 100.0 * float(summary[readout]["test_error"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _stat(values: list[float], digits: int = 2) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1 seed)"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def rows(root: Path, level: float, seeds=SEEDS) -> list[dict]:
    """One row per method and read-out with the per-seed figures (seeds where every cell the
    row needs has finished)."""
    first = root / "fashion_memorise"
    out = []
    for method, pattern in METHODS.items():
        for words, readout in READOUTS.items():
            per_seed = []
            for s in seeds:
                ref = {m: test_error(first / f"seed-{s}__noise-{level}__model-{m}", readout)
                       for m in ("none", "learned", "true")}
                err = test_error(root / "fashion_beyond" / pattern.format(s=s, n=level),
                                 readout)
                if err is None or None in ref.values():
                    continue
                gap = ref["none"] - ref["true"]
                per_seed.append({"seed": s, "error": err, "gain": ref["none"] - err,
                                 "over_learned": ref["learned"] - err,
                                 "closure": (ref["none"] - err) / gap if gap else float("nan")})
            out.append({"level": level, "method": method, "readout": words, "seeds": per_seed})
    return out


def markdown(table: list[dict]) -> str:
    lines = ["| flips | method | read-out | n | clean test error | gain over none (points; wins) "
             "| gain over first-stage learned (points; wins) | closure |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table:
        seeds = r["seeds"]
        col = {k: [x[k] for x in seeds] for k in ("error", "gain", "over_learned", "closure")}
        wins = sum(g > 0 for g in col["gain"])
        wins_l = sum(g > 0 for g in col["over_learned"])
        lines.append(f"| {r['level']:.0%} | {r['method']} | {r['readout']} | {len(seeds)} | "
                     f"{_stat(col['error'])} | {_stat(col['gain'])} ({wins} of {len(seeds)}) | "
                     f"{_stat(col['over_learned'])} ({wins_l} of {len(seeds)}) | "
                     f"{_stat(col['closure'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="runs/sweeps", help="the sweeps' --root")
    ap.add_argument("--levels", nargs="*", type=float, default=[0.5, 0.7])
    args = ap.parse_args(argv)
    root = Path(args.root)
    if not (root / "fashion_memorise").is_dir():
        print(f"error: {root / 'fashion_memorise'} is missing: run nlnoise-sweep "
              f"--grid=fashion_memorise --root={root} first.", file=sys.stderr)
        return 2
    print(markdown([r for n in args.levels for r in rows(root, n)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
