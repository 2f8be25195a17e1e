"""Report (not a test): beyond-the-paper cells against the first-stage cells of the same seed.

`fashion_beyond` (configs/sweeps.py) trains what the paper does not, without clean labels: a
plain network on the labels the audit of each `learned` run relabelled or pruned (the second
stage), and learned Q started from the network's confusion (`q.init=confusion`).
`heldout_confusion` and `cifar_confusion` run that confusion start, unchanged, on flips and
seeds that played no part in choosing it (heldout_fashion's, cifar_memorise's 50%). These cells
have no `none` or `true` of their own, so the gap they close is measured against the first-stage
sweep's cells of the same seed and flips (same training subset, held-out split and flips). For
every case, method and read-out (after the last epoch; early-stopped on held-out noisy labels)
it prints, as mean ± std over seeds (n): clean test error, the gain over `none` and over the
first-stage `learned` run (points, paired per seed; wins), and the closure
``(none - method) / (none - true)``.

    .venv/bin/python bench/beyond_closure.py --root=runs/sweeps [--cases fashion_50 fashion_70 \
        heldout_pair_40 heldout_block_50 cifar_50]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

SEEDS = (0, 1, 2)
HELDOUT_SEEDS = (10, 11, 12)
METHODS = {  # name: the cell of fashion_beyond for a seed and level
    "stage 2, relabelled": "seed-{s}__noise-{n}__stage2-relabelled__model-none",
    "stage 2, pruned": "seed-{s}__noise-{n}__stage2-pruned__model-none",
    "learned, confusion start": "seed-{s}__noise-{n}__model-learned__q_init-confusion",
}
CONFUSION = "learned, confusion start"


@dataclasses.dataclass(frozen=True)
class Case:
    """Flips whose beyond-the-paper cells are paired with a first-stage sweep's cells.

    ``reference``: the first-stage sweep's directory and its cell for a seed and a model
    (``{s}``, ``{m}``); ``sweep``: the directory of the cells of ``methods`` (name: cell for a
    seed). A label ending in "(held-out)" marks flips and seeds that played no part in choosing
    the recipe or the method."""
    label: str
    reference: str
    reference_cell: str
    sweep: str
    methods: dict[str, str]
    seeds: tuple[int, ...] = SEEDS


def _fashion(level: float) -> Case:
    return Case(f"{level:.0%}", "fashion_memorise", f"seed-{{s}}__noise-{level}__model-{{m}}",
                "fashion_beyond", {k: v.replace("{n}", str(level)) for k, v in METHODS.items()})


def _heldout(kind: str, level: float) -> Case:
    cell = f"seed-{{s}}__kind-{kind}__noise-{level}__model-"
    return Case(f"{kind} {level:.0%} (held-out)", "heldout_fashion", cell + "{m}",
                "heldout_confusion", {CONFUSION: cell + "learned__q_init-confusion"},
                HELDOUT_SEEDS)


CASES = {
    "fashion_50": _fashion(0.5),
    "fashion_70": _fashion(0.7),
    "heldout_pair_40": _heldout("pair", 0.4),
    "heldout_block_50": _heldout("block", 0.5),
    "cifar_50": Case("CIFAR-10 50% (held-out)", "cifar10_memorise",
                     "seed-{s}__noise-0.5__model-{m}", "cifar10_confusion",
                     {CONFUSION: "seed-{s}__noise-0.5__model-learned__q_init-confusion"}),
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


def rows(root: Path, case: Case) -> list[dict]:
    """One row per method and read-out with the per-seed figures (seeds where every cell the
    row needs has finished)."""
    first = root / case.reference
    out = []
    for method, pattern in case.methods.items():
        for words, readout in READOUTS.items():
            per_seed = []
            for s in case.seeds:
                ref = {m: test_error(first / case.reference_cell.format(s=s, m=m), readout)
                       for m in ("none", "learned", "true")}
                err = test_error(root / case.sweep / pattern.format(s=s), readout)
                if err is None or None in ref.values():
                    continue
                gap = ref["none"] - ref["true"]
                per_seed.append({"seed": s, "error": err, "gain": ref["none"] - err,
                                 "over_learned": ref["learned"] - err,
                                 "closure": (ref["none"] - err) / gap if gap else float("nan")})
            out.append({"case": case.label, "method": method, "readout": words,
                        "seeds": per_seed})
    return out


def markdown(table: list[dict]) -> str:
    lines = ["| case | method | read-out | n | clean test error | gain over none (points; wins) "
             "| gain over first-stage learned (points; wins) | closure |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table:
        seeds = r["seeds"]
        col = {k: [x[k] for x in seeds] for k in ("error", "gain", "over_learned", "closure")}
        wins = sum(g > 0 for g in col["gain"])
        wins_l = sum(g > 0 for g in col["over_learned"])
        lines.append(f"| {r['case']} | {r['method']} | {r['readout']} | {len(seeds)} | "
                     f"{_stat(col['error'])} | {_stat(col['gain'])} ({wins} of {len(seeds)}) | "
                     f"{_stat(col['over_learned'])} ({wins_l} of {len(seeds)}) | "
                     f"{_stat(col['closure'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="runs/sweeps", help="the sweeps' --root")
    ap.add_argument("--cases", nargs="*", choices=list(CASES), default=["fashion_50", "fashion_70"])
    args = ap.parse_args(argv)
    root = Path(args.root)
    for name in args.cases:
        need = CASES[name].reference
        if not (root / need).is_dir():
            print(f"error: {root / need} is missing (case {name}): run its first-stage sweep "
                  f"(nlnoise-sweep, docs/results.md) with --root={root} first.", file=sys.stderr)
            return 2
    print(markdown([r for name in args.cases for r in rows(root, CASES[name])]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
