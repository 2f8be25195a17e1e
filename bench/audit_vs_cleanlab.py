"""Benchmark (not a test): nlnoise.audit against cleanlab 2.9 on the same predictions.

Each input is an .npz with

    pred_probs       [N, K]  the clean-label model's softmax (rows sum to 1)
    noisy_labels     [N]     the labels it was trained on
    clean_labels     [N]     the true labels, to score against
    q                [K, K]  optional: a learned Q, q[j, i] = p(noisy=j | true=i), columns sum to 1
    posterior_probs  [N, K]  optional: p(true | x, noisy) as the trainer saved it

and for nlnoise and cleanlab, on the SAME probabilities, this reports

- noise matrix: relative L1 to the realized transition of (clean -> noisy) labels, for the
  learned q, every ``nlnoise.estimate.estimate_q`` method, the q nlnoise's label scores used
  (``audit.select_q``), and cleanlab's ``count.estimate_latent`` noise matrix (also from
  ``estimate_joint`` with columns normalised, and with ``converge_latent_estimates``);
- flagged set: precision, recall, F1 of ``audit.find_label_issues`` (default; q as given; no q;
  per-class count; estimated count; the oracle count, which reads the clean labels) and of
  cleanlab's ``filter.find_label_issues`` (default and ``filter_by="both"``);
- ranking: AP of ranking the truly wrong labels first by ``audit.label_quality`` and by
  cleanlab's ``rank.get_label_quality_scores`` (each of its methods).

It prints markdown tables and writes JSON (every file's figures and their mean ± std across
files, e.g. seeds). cleanlab is the optional ``bench`` extra, never imported by nlnoise;
``--no-cleanlab`` runs the nlnoise side alone. ``--synthetic S`` first writes S synthetic
files (seeds 0..S-1: calibrated Dirichlet predictions, 50% paper_random flips, a learned q
``--q-share`` of the way from the identity to Q*) and runs on them.

    .venv/bin/python bench/audit_vs_cleanlab.py RUN1.npz [RUN2.npz ...] [--out FILE.json]
    .venv/bin/python bench/audit_vs_cleanlab.py NL1.npz NL2.npz --cleanlab-files CL1.npz CL2.npz
    .venv/bin/python bench/audit_vs_cleanlab.py --synthetic 3 [--q-share 0.5] [--no-cleanlab]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from nlnoise import audit, noise

RESULTS = Path(__file__).resolve().parent / "results"
REQUIRED = ("pred_probs", "noisy_labels", "clean_labels")
OPTIONAL = ("q", "posterior_probs")
SECTIONS = {"noise_matrix": ("rel_l1",), "flagged": ("precision", "recall", "f1", "num_flagged"),
            "ranking": ("ap",)}
CLEANLAB_SCORES = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")


def load(path) -> dict:
    """The arrays of one input file, checked; a ValueError naming the file otherwise."""
    try:
        with np.load(path) as z:
            missing = [k for k in REQUIRED if k not in z.files]
            if missing:
                raise ValueError(f"missing array(s) {missing}; need {list(REQUIRED)}, optional "
                                 f"{list(OPTIONAL)}")
            d = {k: z[k] for k in (*REQUIRED, *OPTIONAL) if k in z.files}
        d["noisy_labels"], d["pred_probs"], d["q"] = audit.check_inputs(
            d["noisy_labels"], d["pred_probs"], d.get("q"))
        k = d["pred_probs"].shape[1]
        d["clean_labels"] = noise.check_labels(d["clean_labels"], k, "clean_labels")
        if d["clean_labels"].shape != d["noisy_labels"].shape:
            raise ValueError(f"clean_labels: {d['clean_labels'].size} labels for "
                             f"{d['noisy_labels'].size} noisy labels")
        pp = d.get("posterior_probs")
        if pp is not None and (pp.shape != d["pred_probs"].shape or (pp < -1e-3).any()
                               or not np.allclose(pp.sum(axis=1), 1.0, atol=1e-3)):
            raise ValueError(f"posterior_probs: expected [N, K] = {d['pred_probs'].shape} rows "
                             f"of probabilities (p(true | x, noisy)), got shape {pp.shape}")
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
    return d


def nlnoise_side(d: dict) -> dict:
    """nlnoise's figures for one file: ``{section: {name: {metric: value}}}``."""
    labels, p, q, clean = d["noisy_labels"], d["pred_probs"], d.get("q"), d["clean_labels"]
    k, wrong = p.shape[1], labels != clean
    realized = noise.realized_transition(clean, labels, k)
    nm, flagged, ranking = {}, {}, {}
    _flag = audit.flag_metrics
    if q is not None:
        nm["nlnoise: learned q"] = noise.relative_l1(q, realized)
    for m in audit.ESTIMATE_METHODS:
        nm[f"nlnoise: estimate_q({m})"] = noise.relative_l1(audit.estimate_q(labels, p, m),
                                                            realized)
    q_used, info = audit.select_q(labels, p, q)
    nm[f"nlnoise: q used by the scores ({info['q_source']})"] = noise.relative_l1(q_used,
                                                                                 realized)
    flagged["nlnoise: find_label_issues (default)"] = _flag(
        audit.find_label_issues(labels, p, q), wrong)
    ranking["nlnoise: label_quality (default)"] = audit.ranking_ap(
        audit.label_quality(labels, p, q), wrong)
    if q is not None:
        flagged["nlnoise: q as given (min_flip_ratio=0)"] = _flag(
            audit.find_label_issues(labels, p, q, min_flip_ratio=0), wrong)
        ranking["nlnoise: q as given (min_flip_ratio=0)"] = audit.ranking_ap(
            audit.label_quality(labels, p, q, min_flip_ratio=0), wrong)
        flagged["nlnoise: without q (estimate)"] = _flag(audit.find_label_issues(labels, p), wrong)
        ranking["nlnoise: without q (estimate)"] = audit.ranking_ap(
            audit.label_quality(labels, p), wrong)
    flagged["nlnoise: rule=per_class_count"] = _flag(
        audit.find_label_issues(labels, p, q, rule="per_class_count"), wrong)
    flagged["nlnoise: rule=estimated_count"] = _flag(
        audit.find_label_issues(labels, p, q, rule="estimated_count"), wrong)
    # The best any count can do with nlnoise's ranking: an oracle, it reads the clean labels.
    flagged["oracle: the true number of wrong labels, nlnoise's ranking"] = _flag(
        audit.find_label_issues(labels, p, q, num_issues=int(wrong.sum())), wrong)
    if "posterior_probs" in d:
        given = d["posterior_probs"][np.arange(len(labels)), labels]
        flagged["nlnoise: saved posterior < 0.5"] = _flag(given < 0.5, wrong)
        ranking["nlnoise: saved posterior"] = audit.ranking_ap(given, wrong)
    return {"noise_matrix": {n: {"rel_l1": v} for n, v in nm.items()}, "flagged": flagged,
            "ranking": {n: {"ap": v} for n, v in ranking.items()},
            "meta": {**info, "n": len(labels), "k": int(k),
                     "realized_noise_rate": float(wrong.mean())}}


def cleanlab_side(d: dict) -> dict:
    """cleanlab's figures for one file, on the same probabilities (cleanlab must be installed)."""
    import cleanlab
    from cleanlab import count, rank
    from cleanlab import filter as cl_filter

    labels, p, clean = d["noisy_labels"], d["pred_probs"], d["clean_labels"]
    wrong = labels != clean
    realized = noise.realized_transition(clean, labels, p.shape[1])
    _flag = audit.flag_metrics
    cj = count.compute_confident_joint(labels, p)
    _, latent, _ = count.estimate_latent(cj, labels)
    joint = count.estimate_joint(labels, p)
    _, converged, _, _ = count.estimate_py_and_noise_matrices_from_probabilities(
        labels, p, converge_latent_estimates=True)
    nm = {}
    cols = joint.sum(axis=0, keepdims=True)
    joint_q = np.where(cols > 0, joint / np.where(cols > 0, cols, 1.0), np.eye(len(cols[0])))
    for name, m in (("estimate_latent", latent), ("estimate_joint, columns normalised", joint_q),
                    ("estimate_latent, converge_latent_estimates", converged)):
        # cleanlab's noise_matrix[given, true] is nlnoise's orientation: check, don't assume.
        noise.validate_transition(m, name=f"cleanlab {name}", atol=1e-6)
        nm[f"cleanlab: {name}"] = {"rel_l1": noise.relative_l1(m, realized)}
    flagged = {f"cleanlab: find_label_issues ({by})": _flag(
        cl_filter.find_label_issues(labels, p, filter_by=by, n_jobs=1), wrong)
        for by in ("prune_by_noise_rate", "both")}
    ranking = {f"cleanlab: get_label_quality_scores ({m})": {"ap": audit.ranking_ap(
        rank.get_label_quality_scores(labels, p, method=m), wrong)} for m in CLEANLAB_SCORES}
    return {"noise_matrix": nm, "flagged": flagged, "ranking": ranking,
            "meta": {"cleanlab_version": cleanlab.__version__}}


def evaluate(path, with_cleanlab: bool = True, cleanlab_path=None) -> dict:
    """Both sides' figures for one file; with ``cleanlab_path``, cleanlab's side is computed on
    that file instead (each tool's own workflow, e.g. its own cross-fitted predictions of the
    same examples)."""
    d = load(path)
    out = nlnoise_side(d)
    if with_cleanlab:
        other = d if cleanlab_path is None else load(cleanlab_path)
        if cleanlab_path is not None and not np.array_equal(other["noisy_labels"],
                                                            d["noisy_labels"]):
            raise ValueError(f"{cleanlab_path}: its noisy labels are not those of {path}; "
                             "pair the two workflows' predictions of the same examples.")
        cl = cleanlab_side(other)
        for s in SECTIONS:
            out[s].update(cl[s])
        out["meta"].update(cl["meta"])
    out["meta"]["file"] = str(path)
    return out


def aggregate(results: list[dict]) -> dict:
    """Mean, std (0 for one file) and count of every figure across files."""
    agg: dict = {}
    for s, metrics in SECTIONS.items():
        names = dict.fromkeys(n for r in results for n in r[s])
        agg[s] = {}
        for name in names:
            agg[s][name] = {}
            for m in metrics:
                vals = [float(r[s][name][m]) for r in results if name in r[s]]
                agg[s][name][m] = {"mean": statistics.fmean(vals), "n": len(vals),
                                   "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    return agg


def markdown(agg: dict, num_files: int) -> str:
    """One table per section; ``mean ± std`` over the files."""
    out = [f"Over {num_files} file(s); mean ± std.", ""]
    titles = {"noise_matrix": "Noise matrix: relative L1 to the realized transition (lower is "
              "better)", "flagged": "Flagged set against the truly wrong labels",
              "ranking": "Ranking: AP of the truly wrong labels first"}
    for s, metrics in SECTIONS.items():
        out += [f"### {titles[s]}", "", "| method | " + " | ".join(metrics) + " | files |",
                "|---|" + "---:|" * (len(metrics) + 1)]
        for name, row in agg[s].items():
            cells = [f"{row[m]['mean']:.0f}" if m == "num_flagged" else
                     f"{row[m]['mean']:.3f} ± {row[m]['std']:.3f}" for m in metrics]
            out.append(f"| {name} | " + " | ".join(cells) + f" | {row[metrics[0]]['n']} |")
        out.append("")
    return "\n".join(out)


def synthetic_npz(path, seed: int, *, n: int = 30000, k: int = 10, level: float = 0.5,
                  q_share: float = 0.9, concentration: float = 6.0) -> Path:
    """Writes a synthetic input: calibrated predictions (Dirichlet rows peaked on a random
    class, the clean label drawn from each row), noisy labels through the paper's random Q*,
    a learned q ``q_share`` of the way from the identity to Q*, and its posterior."""
    rng = np.random.default_rng(seed)
    q_star = noise.paper_random(k, level, seed=seed)
    alpha = np.full((n, k), 0.1)
    alpha[np.arange(n), rng.integers(0, k, n)] = concentration
    p = rng.gamma(alpha)
    p /= p.sum(axis=1, keepdims=True)
    clean = np.minimum((rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1), k - 1)
    noisy = noise.corrupt_labels(clean, q_star, seed)
    q = (1.0 - q_share) * np.eye(k) + q_share * q_star
    np.savez(path, pred_probs=p.astype(np.float32), noisy_labels=noisy, clean_labels=clean,
             q=q, posterior_probs=audit.posterior(p, q, noisy).astype(np.float32))
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help=".npz inputs (see the module docstring)")
    ap.add_argument("--out", default=str(RESULTS / "audit_vs_cleanlab.json"))
    ap.add_argument("--no-cleanlab", action="store_true", help="the nlnoise side only")
    ap.add_argument("--cleanlab-files", nargs="*", default=None, metavar="NPZ",
                    help="one per input: cleanlab's side runs on these instead (its own "
                    "workflow's predictions of the same examples)")
    ap.add_argument("--synthetic", type=int, default=0, metavar="S",
                    help="write S synthetic inputs next to --out and run on them")
    ap.add_argument("--q-share", type=float, default=0.9,
                    help="synthetic learned q: this share of the way from I to Q*")
    args = ap.parse_args(argv)
    files = list(args.files)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in range(args.synthetic):
        files.append(synthetic_npz(out.parent / f"synthetic_seed{seed}.npz", seed,
                                   q_share=args.q_share))
    if not files:
        ap.error("give .npz files or --synthetic S")
    pairs = args.cleanlab_files if args.cleanlab_files is not None else [None] * len(files)
    if len(pairs) != len(files):
        ap.error(f"--cleanlab-files: {len(pairs)} files for {len(files)} inputs; give one each")
    try:
        results = [evaluate(f, with_cleanlab=not args.no_cleanlab, cleanlab_path=c)
                   for f, c in zip(files, pairs, strict=True)]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    agg = aggregate(results)
    print(markdown(agg, len(results)))
    out.write_text(json.dumps({"files": results, "aggregate": agg}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
