"""Plots are written atomically as real PNG files."""

import numpy as np
import pytest

from nlnoise import noise, plots


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_all_plots(tmp_path):
    q_star = noise.paper_random(5, 0.5)
    p = plots.q_heatmaps(np.eye(5), q_star, str(tmp_path / "q.png"), class_names=list("abcde"))
    assert _is_png(p)
    records = [{"epoch": e, "test_error": 0.3 - 0.01 * e, "noisy_train_error": 0.6,
                "train_loss": 1.0 / (e + 1), "q_trace": 5 - 0.1 * e, "q_star_trace": 2.5}
               for e in range(5)]
    assert _is_png(plots.training_curves(records, str(tmp_path / "c.png")))
    pr = {"m": {"precision": np.array([1.0, 0.5]), "recall": np.array([0.0, 1.0]),
                "average_precision": 0.7}}
    assert _is_png(plots.pr_curves(pr, str(tmp_path / "sub" / "pr.png")))
    table = [{"model": m, "noise_level": lv, "test_error": 0.1 + lv / (2 if m == "learned" else 1)}
             for m in ("none", "learned") for lv in (0.3, 0.5, 0.7)]
    assert _is_png(plots.error_vs_noise(table, str(tmp_path / "e.png")))
    rows = [{**r, "cell": c, "variant": c} for c in ("a", "b") for r in records]
    rows += [{"cell": "none", "variant": "none", "epoch": e, "test_error": 0.3} for e in range(3)]
    assert _is_png(plots.sweep_curves(rows, str(tmp_path / "s.png"), title="t"))
    assert not list(tmp_path.glob("**/*.tmp.png"))


def test_q_heatmaps_redrawn_from_a_run_summary(tmp_path):
    import json

    q_true = noise.paper_random(4, 0.5, seed=0)
    (tmp_path / "summary.json").write_text(json.dumps(
        {"q": q_true.tolist(), "q_true": q_true.tolist(), "class_names": list("abcd")}))
    out = plots.q_heatmaps_from_run(str(tmp_path), str(tmp_path / "q.png"), "t")
    assert out.endswith("q.png") and (tmp_path / "q.png").stat().st_size > 1000
    with pytest.raises(FileNotFoundError):
        plots.q_heatmaps_from_run(str(tmp_path / "missing"), str(tmp_path / "x.png"))


def test_matrix_panels_and_label_issue_grid(tmp_path):
    q_star = noise.paper_random(3, 0.5)
    p = plots.matrix_panels([("Q*", q_star), ("learned", np.eye(3)), ("estimate", q_star)],
                            str(tmp_path / "m.png"), class_names=["a", "b", "c"])
    assert _is_png(p)
    digits = np.random.default_rng(0).integers(0, 256, (11, 8, 8, 1)).astype(np.uint8)
    grid = plots.label_issue_grid(digits, [f"{i}: 3 -> 5" for i in range(11)],
                                  str(tmp_path / "g.png"), cols=4, title="t")
    rgb = plots.label_issue_grid(np.repeat(digits, 3, axis=-1)[:2], ["a", "b"],
                                 str(tmp_path / "rgb.png"))
    empty = plots.label_issue_grid(np.zeros((0, 8, 8, 1), np.uint8), [], str(tmp_path / "e.png"))
    assert all(_is_png(x) for x in (grid, rgb, empty))
    from PIL import Image

    # 3 rows of 4 for 11 images: taller than the 1-row grid of 2.
    assert Image.open(grid).size[1] > Image.open(rgb).size[1]


def test_error_vs_noise_draws_the_mean_over_seeds_and_each_cell(tmp_path):
    table = [{"model": m, "noise_level": lv, "seed": s,
              "test_error": 0.1 + lv / (2 if m == "learned" else 1) + 0.01 * s,
              "best_test_error": None if (m, s) == ("none", 2) else 0.1 + 0.01 * s}
             for m in ("none", "learned") for lv in (0.7, 0.3) for s in range(3)]
    stats = plots.mean_by_x([r for r in table if r["model"] == "none"], "noise_level",
                            "test_error")
    assert [(x, n) for x, _, _, n in stats] == [(0.3, 3), (0.7, 3)]
    np.testing.assert_allclose([m for _, m, _, _ in stats], [0.41, 0.81])
    np.testing.assert_allclose([sd for _, _, sd, _ in stats], [0.01, 0.01])
    best = plots.mean_by_x([r for r in table if r["model"] == "none"], "noise_level",
                           "best_test_error")
    assert [n for *_, n in best] == [2, 2]  # the cell without a number is left out
    assert _is_png(plots.error_vs_noise(table, str(tmp_path / "e.png"), title="t"))
