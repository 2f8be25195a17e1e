"""Benchmark (not a test): nlnoise's audit against cleanlab on the sweeps' real runs.

For every noise family and seed of docs/audit.md's table it

1. audits the ``learned`` cell of the sweep in-sample at its early-stopped parameters
   (``nlnoise-audit --params=best``; ``--params=final``: its last; no clean label is used),
   so that both tools score the SAME predicted probabilities (nlnoise with its learned Q,
   cleanlab with its own estimates);
2. with ``--crossfit``, runs each tool's recommended out-of-sample workflow on the same
   examples: ``nlnoise-audit --folds=2`` with the learned noise model, and the same 2-fold
   cross-fit of the plain network (``noise.model=none``), whose out-of-fold probabilities are
   what cleanlab's documentation feeds ``find_label_issues``;
3. runs ``bench/audit_vs_cleanlab.py`` on each family's files (mean ± std over seeds) and
   writes ``<root>/head_to_head/<family>[_crossfit].{json,md}``.

Every step resumes: finished audits are rewritten identically (``--reuse``: read back) and
finished folds are read back.

    .venv/bin/python bench/audit_head_to_head.py --root=runs/sweeps [--crossfit] [--params=final] \\
        [--families fashion_50 fashion_70 ...] [--seeds 0 1 2] [--reuse]

``heldout_pair_40`` and ``heldout_block_50`` audit the held-out sweep's learned runs (seeds
10-12), which played no part in choosing the recipe or the audit's defaults.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SEEDS = (0, 1, 2)
FASHION_BASE = "size=10000,val=1000,epochs=40,freeze=10,eval_every_epochs=2.0"
CIFAR_BASE = ("size=10000,val=1000,epochs=60,freeze=10,lr=0.003,lr_boundaries_epochs=(50,),"
              "layer_weight_decay.fc10=0.004,eval_every_epochs=2.0")
# family: (config file, sweep dir, the learned cell's name for a seed, the variant of the
# cross-fitted runs for a seed, without the model).
FAMILIES = {
    "fashion_50": ("configs/fashion_mnist.py", "fashion_memorise",
                   "seed-{s}__noise-0.5__model-learned", FASHION_BASE + ",seed={s},noise=0.5"),
    "fashion_70": ("configs/fashion_mnist.py", "fashion_memorise",
                   "seed-{s}__noise-0.7__model-learned", FASHION_BASE + ",seed={s},noise=0.7"),
    "fashion_sparse_50": ("configs/fashion_mnist.py", "fashion_structured",
                          "seed-{s}__kind-sparse_random__noise-0.5__m-3__model-learned",
                          FASHION_BASE + ",seed={s},kind='sparse_random',noise=0.5,m=3"),
    "fashion_adversarial_40": (
        "configs/fashion_mnist.py", "fashion_structured",
        "seed-{s}__kind-adversarial__noise-0.4__model-learned",
        FASHION_BASE + ",seed={s},kind='adversarial',noise=0.4,corruption.confusion_path="
        "'{root}/fashion_structured/seed-{s}__noise-0.0__model-none/summary.json'"),
    "cifar_50": ("configs/cifar10.py", "cifar10_memorise", "seed-{s}__noise-0.5__model-learned",
                 CIFAR_BASE + ",seed={s},noise=0.5"),
    "cifar_70": ("configs/cifar10.py", "cifar10_memorise", "seed-{s}__noise-0.7__model-learned",
                 CIFAR_BASE + ",seed={s},noise=0.7"),
    # Learned Q started from the network's confusion (the fashion_beyond sweep): runs that did
    # not exist when the audit's rules were chosen.
    "fashion_confusion_50": ("configs/fashion_mnist.py", "fashion_beyond",
                             "seed-{s}__noise-0.5__model-learned__q_init-confusion",
                             FASHION_BASE + ",seed={s},noise=0.5,q.init='confusion'"),
    "fashion_confusion_70": ("configs/fashion_mnist.py", "fashion_beyond",
                             "seed-{s}__noise-0.7__model-learned__q_init-confusion",
                             FASHION_BASE + ",seed={s},noise=0.7,q.init='confusion'"),
    # The held-out families (docs/results.md, section 2): no part in choosing the recipe or the
    # audit's defaults (its 0.5 posterior threshold, the select_q rule).
    "heldout_pair_40": ("configs/fashion_mnist.py", "heldout_fashion",
                        "seed-{s}__kind-pair__noise-0.4__model-learned",
                        FASHION_BASE + ",seed={s},kind='pair',noise=0.4"),
    "heldout_block_50": ("configs/fashion_mnist.py", "heldout_fashion",
                         "seed-{s}__kind-block__noise-0.5__model-learned",
                         FASHION_BASE + ",seed={s},kind='block',noise=0.5,"
                         "corruption.groups=((0,2,3,4,6),(5,7,9))"),
}
# Seeds of a family when --seeds is not given (the held-out sweep uses its own).
FAMILY_SEEDS = {"heldout_pair_40": (10, 11, 12), "heldout_block_50": (10, 11, 12)}


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def audit_dir(root: Path, family: str, seed: int, params: str) -> Path:
    """Where the in-sample audit of ``family``'s learned run for ``seed`` goes. Named by sweep
    and cell: cells of different sweeps share names (``seed-0__noise-0.5__model-learned`` is in
    both ``fashion_memorise`` and ``cifar10_memorise``)."""
    _, sweep, cell, _ = FAMILIES[family]
    name = cell.format(s=seed) + ("" if params == "best" else "__final")
    return root / "head_to_head" / "audits" / sweep / name


def finished_audit(out: Path, run: Path, params: str) -> bool:
    """Whether ``out`` holds a complete default-rule in-sample audit of ``run`` at ``params``
    (``audit.json`` is written last, so its presence means the rest is there)."""
    try:
        meta = json.loads((out / "audit.json").read_text())
    except (OSError, ValueError):
        return False
    want = {"mode": "in-sample", "run": str(run.resolve()), "params": params}
    return meta.get("identity") == want and (out / "predictions.npz").exists()


def _audit_in_sample(venv: Path, root: Path, family: str, seed: int, params: str,
                     reuse: bool = False) -> Path:
    _, sweep, cell, _ = FAMILIES[family]
    run = root / sweep / cell.format(s=seed)
    if not (run / "summary.json").exists():
        raise SystemExit(f"{run} has not finished: run its sweep (nlnoise-sweep) first.")
    out = audit_dir(root, family, seed, params)
    if reuse and finished_audit(out, run, params):
        print(f"+ reusing the audit in {out}", file=sys.stderr, flush=True)
        return out / "predictions.npz"
    _run([str(venv / "nlnoise-audit"), f"--workdir={run}", f"--out={out}", f"--params={params}",
          "--noprogress"])
    return out / "predictions.npz"


def _crossfit(venv: Path, root: Path, family: str, seed: int, model: str) -> Path:
    config, _, _, variant = FAMILIES[family]
    variant = variant.format(s=seed, root=root)
    work = root / "head_to_head" / "crossfit" / f"{family}__seed-{seed}__model-{model}"
    _run([str(venv / "nlnoise-audit"), f"--config={config}:{variant},model='{model}'",
          "--folds=2", f"--workdir={work}", "--noprogress",
          "--config.progress_bar=False"])
    return work / "audit" / "predictions.npz"


def _compare(python: Path, files: list[Path], out: Path, cleanlab_files=None) -> None:
    cmd = [str(python), str(HERE / "audit_vs_cleanlab.py"), *map(str, files),
           "--out", str(out.with_suffix(".json"))]
    if cleanlab_files:
        cmd += ["--cleanlab-files", *map(str, cleanlab_files)]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    text = subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True).stdout
    out.with_suffix(".md").write_text(text)
    print(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="runs/sweeps", help="the sweeps' --root")
    ap.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--seeds", nargs="*", type=int, default=None,
                    help="default: 0 1 2, or the family's own (FAMILY_SEEDS)")
    ap.add_argument("--crossfit", action="store_true",
                    help="also each tool's cross-fitted workflow (trains 4 runs per seed)")
    ap.add_argument("--params", choices=("best", "final"), default="best",
                    help="the learned runs' early-stopped (default) or last parameters, for "
                         "the in-sample audits (<family>_final.md)")
    ap.add_argument("--reuse", action="store_true",
                    help="read back a finished in-sample audit of the same run and parameters "
                         "instead of auditing again (the audit is deterministic)")
    ap.add_argument("--venv", default=str(REPO / ".venv"))
    args = ap.parse_args(argv)
    root, venv = Path(args.root).resolve(), Path(args.venv) / "bin"
    (root / "head_to_head").mkdir(parents=True, exist_ok=True)
    for family in args.families:
        seeds = args.seeds if args.seeds is not None else FAMILY_SEEDS.get(family, SEEDS)
        same = [_audit_in_sample(venv, root, family, s, args.params, args.reuse)
                for s in seeds]
        name = family if args.params == "best" else f"{family}_final"
        _compare(venv / "python", same, root / "head_to_head" / name)
        if args.crossfit:
            ours = [_crossfit(venv, root, family, s, "learned") for s in seeds]
            plain = [_crossfit(venv, root, family, s, "none") for s in seeds]
            _compare(venv / "python", ours, root / "head_to_head" / f"{family}_crossfit",
                     cleanlab_files=plain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
