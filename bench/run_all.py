"""Runs every benchmark of issue 6 and writes ``bench/results/latest.json`` and ``latest.md``.

Items (one module each, each runnable alone):

1, 3. ``step_vs_torch``: train step vs PyTorch 2.13 CPU, profile, MFU
2.    ``noise_overhead``: learned-Q step time over no-Q step time (layers18pct K=10, AlexNet K=1000)
4.    ``input_pipeline.headroom_rows``: pipeline images/s over the train step's
5.    ``end_to_end``: a real short training run's wall time over steps x median step time;
      ``eval_overlap``: what the evaluation adds to an epoch of the main job (issue 18.3)
6.    ``scaling_k``: noise layer and Q update time/memory for K up to 21841; Q sharded 1/N
7.    ``scaling_devices``: images/s and per-device batch memory on 1, 2, 4, 8 simulated devices
18.1.  ``q_update``: the Q update in passes over Q at K = 21841 (<= 3) and its share of
      an AlexNet step at K = 1000 (<= 5%)

Every comparison is timed in alternation in one run (``benchlib.alternate``), median of
``--repeats`` (>= 5) after a warm-up. About 15-20 minutes on this 2-core machine.

    .venv/bin/python bench/run_all.py [--only step_vs_torch noise_overhead ...] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

COMMAND = ".venv/bin/python bench/run_all.py"
RESULT = "RUN_ALL_RESULT "
GROUPS = ("step_vs_torch", "noise_overhead", "input_pipeline", "end_to_end", "eval_overlap",
          "scaling_k", "scaling_devices", "q_update")


def run_group(name: str, quick: bool, repeats: int) -> dict[str, Any]:
    """Runs one benchmark group in a fresh Python process; its result dict.

    A fresh process per group, because jax fixes its CPU device count at its first operation:
    ``end_to_end`` must start as ``nlnoise-train`` does (``mesh.cpu_devices`` auto), the
    others on jax's default single device.
    """
    cmd = [sys.executable, __file__, "--child", name, "--repeats", str(repeats)]
    proc = subprocess.run(cmd + (["--quick"] if quick else []), stdout=subprocess.PIPE,
                          text=True, cwd=bl.REPO, timeout=3 * 3600)
    lines = proc.stdout.splitlines()
    print("\n".join(x for x in lines if not x.startswith(RESULT)), flush=True)
    results = [x[len(RESULT):] for x in lines if x.startswith(RESULT)]
    if proc.returncode or not results:
        raise RuntimeError(f"{name} exited with {proc.returncode}; see its log above")
    return json.loads(results[-1])


def run_in_process(name: str, quick: bool, repeats: int) -> dict[str, Any]:
    """Imports and runs one benchmark module here."""
    if name == "input_pipeline":
        import input_pipeline

        return input_pipeline.headroom_rows(repeats=repeats)
    module = __import__(name)
    return module.run(quick=quick, repeats=repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=GROUPS, default=list(GROUPS))
    parser.add_argument("--quick", action="store_true", help="fewer steps per repetition")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", choices=GROUPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        out = run_in_process(args.child, args.quick, args.repeats)
        print(RESULT + json.dumps(out, default=str), flush=True)
        return
    if args.repeats < 5:
        parser.error("--repeats: every comparison is a median of at least 5 repetitions")

    start = bl.machine_info()
    loads = [bl.load_average()]
    results: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for name in args.only:
        t0 = time.perf_counter()
        print(f"\n=== {name} ===", flush=True)
        try:
            out = run_group(name, args.quick, args.repeats)
        except Exception as exc:  # keep the other figures; the failure is in the table
            traceback.print_exc()
            out = {"rows": [bl.row(f"{name}: failed ({type(exc).__name__}: {exc})"[:200], None,
                                   ".2f", "", None, "see the log")], "details": {}}
        out["seconds"] = time.perf_counter() - t0
        loads.append(bl.load_average())
        results[name] = out
        rows.extend(out["rows"])
        print(bl.markdown_table(out["rows"]), flush=True)
    rows.sort(key=lambda r: r.get("item", 99))
    end = bl.machine_info()
    report = {"command": COMMAND + (" --quick" if args.quick else ""), "machine": start,
              "finished": end["date"], "load_average_during": loads, "rows": rows,
              "results": results}
    path = bl.write_json("latest", report)
    table = bl.markdown_table(rows)
    md = (f"Run {start['date']} to {end['date']} on {start['host']}: {start['cpu']}, "
          f"{start['cpus']} CPUs, jax {start['jax']} ({start['backend']}).\n"
          f"1-minute load average at the start and after each group: "
          f"{', '.join(str(x[0]) for x in loads if x)}.\n"
          f"Command: `{report['command']}`\n\n{table}\n")
    (bl.RESULTS / "latest.md").write_text(md)
    print("\n" + md)
    print(f"wrote {path} and {bl.RESULTS / 'latest.md'}")


if __name__ == "__main__":
    main()
