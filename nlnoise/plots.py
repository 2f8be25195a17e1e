"""Figures: Q heatmaps beside Q* (the paper's Fig. 3c), training curves, outlier PR curves.

Each function writes one PNG and returns its path. Matplotlib runs headless (Agg).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from nlnoise import experiments


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)  # a half-drawn figure never replaces a good one
    return path


def q_heatmaps(q: np.ndarray, q_true: np.ndarray | None, path: str,
               class_names: Sequence[str] | None = None, title: str = "") -> str:
    """Learned Q beside Q* (when known), columns = true class, rows = noisy label."""
    mats = [("Q* (true noise)", q_true), ("learned Q", q)] if q_true is not None else [("Q", q)]
    return matrix_panels(mats, path, class_names=class_names, title=title)


def matrix_panels(panels: Sequence[tuple[str, np.ndarray]], path: str,
                  class_names: Sequence[str] | None = None, title: str = "") -> str:
    """Noise matrices side by side, one ``(panel title, q)`` each; ``q[j, i] = p(noisy=j |
    true=i)`` (``[K_noisy, K_true]``): columns = true class, rows = noisy label, on one 0..1
    colour scale. Class names label the axes for up to 12 classes."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for n, (ax, (name, m)) in enumerate(zip(axes[0], panels, strict=True)):
        m = np.asarray(m)
        im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(name)
        ax.set_xlabel("true class i")
        if n == 0:  # the panels share rows; a second label would overlap the first panel
            ax.set_ylabel("noisy label j")
        if class_names is not None and len(class_names) == m.shape[1] <= 12:
            ax.set_xticks(range(m.shape[1]), class_names, rotation=90, fontsize=7)
            ax.set_yticks(range(m.shape[0]), list(class_names)[: m.shape[0]], fontsize=7)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="q[j, i] = p(noisy=j | true=i)")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def label_issue_grid(images: np.ndarray, captions: Sequence[str], path: str, *, cols: int = 8,
                     title: str = "") -> str:
    """A grid of images (uint8 ``[n, H, W, C]``, C = 1 or 3), each titled with its caption
    (e.g. given -> suggested label and the score), ``cols`` per row; an empty ``images`` gives
    a figure that says so."""
    n = len(images)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.95 * rows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= n:
            continue
        img = np.asarray(images[k])
        gray = img.ndim == 2 or img.shape[-1] == 1
        ax.imshow(img.reshape(img.shape[:2]) if gray else img, cmap="gray" if gray else None,
                  vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(captions[k], fontsize=6.5)
    if not n:
        axes[0, 0].text(0, 0.5, "no label is flagged", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def training_curves(records: Sequence[dict], path: str, title: str = "") -> str:
    """Test error, noisy train error and loss against epoch; tr(Q) against tr(Q*) if present."""
    epochs = [r["epoch"] for r in records]
    has_q = any("q_trace" in r for r in records)
    fig, axes = plt.subplots(1, 3 if has_q else 2, figsize=(13 if has_q else 9, 3.6))
    ax = axes[0]
    ax.plot(epochs, [100 * r["test_error"] for r in records], "o-", label="clean test error")
    ax.plot(epochs, [100 * r["noisy_train_error"] for r in records], "s--",
            label="noisy train error")
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)")
    ax.legend()
    axes[1].plot(epochs, [r["train_loss"] for r in records], "o-")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("train loss (noisy labels)")
    if has_q:
        ax = axes[2]
        ax.plot(epochs, [r.get("q_trace", np.nan) for r in records], "o-", label="tr(Q)")
        if any("q_star_trace" in r for r in records):
            ax.plot(epochs, [r.get("q_star_trace", np.nan) for r in records], "k--",
                    label="tr(Q*)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("trace")
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def pr_curves(curves: dict[str, dict], path: str, title: str = "") -> str:
    """Outlier-detection precision-recall curves: ``{label: {"precision", "recall", "ap"}}``."""
    fig, ax = plt.subplots(figsize=(4.6, 4))
    for label, c in curves.items():
        ax.plot(c["recall"], c["precision"], label=f"{label} (AP {c['average_precision']:.3f})")
    ax.set_xlabel("recall (outliers)")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def mean_by_x(rows: Sequence[dict], x: str, key: str) -> list[tuple[float, float, float, int]]:
    """``(x, mean, std, n)`` of ``key`` over the rows at each value of ``x``, in ``x`` order;
    rows without a number in ``key`` are left out; ``std`` is the sample std (0 for one row)."""
    at: dict[float, list[float]] = {}
    for r in rows:
        v = r.get(key)
        if isinstance(v, int | float) and np.isfinite(v):
            at.setdefault(r[x], []).append(float(v))
    out = []
    for xv, vs in sorted(at.items()):
        st = experiments.stats(vs)
        out.append((xv, st["mean"], st["std"] if st["n"] > 1 else 0.0, st["n"]))
    return out


def error_vs_noise(table: Sequence[dict], path: str, x: str = "noise_level",
                   title: str = "") -> str:
    """Clean test error against ``x`` (e.g. noise level), per noise model: every cell as a dot
    (one per seed), the mean over seeds as a line with its std as error bars, solid after the
    last epoch and dashed at the label-free early-stopped epoch (``best_test_error``)."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, model in enumerate(sorted({r["model"] for r in table})):
        rows = [r for r in table if r["model"] == model]
        color = f"C{i}"
        for key, style, when in (("test_error", "-", "last epoch"),
                                 ("best_test_error", "--", "early-stopped")):
            stats = mean_by_x(rows, x, key)
            if not stats:
                continue
            xs, means, stds, _ = (np.array(c) for c in zip(*stats, strict=True))
            ax.errorbar(xs, 100 * means, yerr=100 * stds, fmt="o" + style, color=color,
                        capsize=3, label=f"{model}, {when}")
            pts = [(r[x], 100 * r[key]) for r in rows if isinstance(r.get(key), int | float)]
            ax.scatter(*zip(*pts, strict=True), s=10, color=color, alpha=0.4)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel("clean test error (%)")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(f"{title} (mean ± std over seeds; dots: cells)")
    return _save(fig, path)


def sweep_curves(rows: Sequence[dict], path: str, title: str = "") -> str:
    """Clean test error and ``tr(Q)`` against epoch, one line per cell of a sweep.

    ``rows`` are evaluations with ``cell`` (or ``variant``), ``epoch``, ``test_error`` and,
    for models with a Q, ``q_trace`` (``nlnoise.experiments.curves``); ``tr(Q*)`` is drawn
    dashed, once per distinct value. Cells without Q get only the error curve.
    """
    cells = list(dict.fromkeys(r.get("variant", r.get("cell")) for r in rows))
    fig, (err_ax, tr_ax) = plt.subplots(1, 2, figsize=(12, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, cell in enumerate(cells):
        mine = [r for r in rows if r.get("variant", r.get("cell")) == cell]
        epochs = [r["epoch"] for r in mine]
        style = {"color": colors[n % len(colors)], "ls": "-" if n < len(colors) else "--"}
        err_ax.plot(epochs, [100 * r["test_error"] for r in mine], ".", label=cell, **style)
        if any(r.get("q_trace") is not None for r in mine):
            tr_ax.plot(epochs, [r.get("q_trace", np.nan) for r in mine], ".", **style)
    for value in sorted({r["q_star_trace"] for r in rows if r.get("q_star_trace") is not None}):
        tr_ax.axhline(value, color="k", ls="--", lw=1)
    err_ax.set(xlabel="epoch", ylabel="clean test error (%)")
    tr_ax.set(xlabel="epoch", ylabel="tr(Q)  (dashed: tr(Q*))")
    handles, labels = err_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7,
               bbox_to_anchor=(0.5, -0.02 - 0.035 * ((len(cells) + 1) // 2)))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def q_heatmaps_from_run(run_dir: str, path: str, title: str = "") -> str:
    """Redraws a finished run's learned Q beside Q* from its ``summary.json``."""
    import json

    with open(os.path.join(run_dir, "summary.json")) as f:
        s = json.load(f)
    names = s.get("class_names")
    q_true = None if s.get("q_true") is None else np.asarray(s["q_true"])
    return q_heatmaps(np.asarray(s["q"]), q_true, path, class_names=names, title=title)


if __name__ == "__main__":  # python -m nlnoise.plots RUN_DIR OUT.png [TITLE]
    import sys

    print(q_heatmaps_from_run(sys.argv[1], sys.argv[2], " ".join(sys.argv[3:])))
