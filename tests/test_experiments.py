"""nlnoise.experiments: grids -> variant strings, resumable real sweeps on digits, gap closure."""

import json
import os
import pathlib

import numpy as np
import pytest

from nlnoise import config as config_lib
from nlnoise import experiments, run

REPO = pathlib.Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "configs" / "digits.py")
BASE = "runlocal,epochs=2,freeze=1"
QUIET = {"progress_bar": False, "plots": False, "tensorboard": False, "mesh.data": 1}


def test_expand_is_the_product_in_key_order_and_keeps_lists():
    cells = experiments.expand({"noise": [0.3, 0.5], "model": ["none", "learned"]})
    assert cells == ["noise=0.3,model='none'", "noise=0.3,model='learned'",
                     "noise=0.5,model='none'", "noise=0.5,model='learned'"]
    # Each cell string is a valid variant of the config's parser.
    assert config_lib.parse_variant(cells[1]) == {"noise": 0.3, "model": "learned"}
    assert experiments.expand(["a=1", ("name", "a=2")]) == ["a=1", ("name", "a=2")]


def test_cell_names_are_readable_distinct_and_safe():
    cells = experiments.expand({"noise": [0.3, 0.5], "model": ["none", "learned"]})
    names = {experiments.cell_name(c) for c in cells}
    assert len(names) == 4
    assert experiments.cell_name("noise=0.5,model='learned'") == "noise-0.5__model-learned"
    assert "/" not in experiments.cell_name("corruption.confusion_path='/a/b.json'")
    assert experiments.split_cell(("x=1 y", "v=1")) == ("x-1_y", "v=1")


def test_load_config_accepts_path_colon_variant():
    cfg = experiments.load_config(DIGITS + ":noise=0.3,model=none")
    assert (cfg.corruption.level, cfg.noise.model) == (0.3, "none")
    with pytest.raises(config_lib.ConfigError, match="no file"):
        experiments.load_config("configs/nope.py")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sweep"))
    grid = {"noise": [0.5], "model": ["none", "learned"]}
    table = experiments.run_grid(DIGITS, grid, root=root, base_variant=BASE, overrides=QUIET,
                                 verbose=False)
    return root, grid, table


def test_real_grid_trains_each_cell_in_its_own_workdir(sweep):
    root, _, table = sweep
    assert [r["model"] for r in table] == ["none", "learned"]
    for r in table:
        assert os.path.exists(os.path.join(root, r["cell"], "summary.json"))
        assert 0.0 <= r["test_error"] < 0.9
        assert r["noise_level"] == 0.5 and r["noise_kind"] == "paper_random"
        assert r["epochs"] == pytest.approx(2.0)
    assert "q_rel_l1" in table[1] and "q_rel_l1" not in table[0]
    df = experiments.to_dataframe(table)
    assert list(df["model"]) == ["none", "learned"]


def test_curves_are_each_cells_evaluations_in_order(sweep):
    _, _, table = sweep
    rows = experiments.curves([*table, {"cell": "bad", "variant": "x", "error": "E"}])
    assert [r["cell"] for r in rows] == [table[0]["cell"]] * 2 + [table[1]["cell"]] * 2
    learned = [r for r in rows if r["cell"] == table[1]["cell"]]
    assert [r["epoch"] for r in learned] == pytest.approx([1.0, 2.0])
    assert learned[-1]["test_error"] == pytest.approx(table[1]["test_error"])
    assert learned[-1]["q_star_trace"] == pytest.approx(table[1]["q_star_trace"])


def test_rerun_skips_finished_cells_and_runs_only_new_ones(sweep):
    root, grid, first = sweep
    calls = []

    def counting(cfg, workdir):
        calls.append(workdir)
        return run.train_and_evaluate(cfg, workdir)

    again = experiments.run_grid(DIGITS, {**grid, "model": ["none", "learned", "true"]},
                                 root=root, base_variant=BASE, overrides=QUIET,
                                 train_fn=counting, verbose=False)
    assert [r["test_error"] for r in again[:2]] == [r["test_error"] for r in first]
    # train_and_evaluate returns a finished run's summary without training: the files of the
    # finished cells are untouched.
    for r in first:
        summary = json.load(open(os.path.join(r["workdir"], "summary.json")))
        assert summary["final"]["test_error"] == r["test_error"]
    assert again[2]["model"] == "true" and os.path.exists(
        os.path.join(root, again[2]["cell"], "summary.json"))
    only_done = experiments.run_grid(DIGITS, {**grid, "model": ["none", "learned", "true",
                                                                 "outlier"]},
                                     root=root, base_variant=BASE, overrides=QUIET,
                                     finished_only=True, verbose=False)
    assert [r["model"] for r in only_done] == ["none", "learned", "true"]


def test_stopped_cell_is_continued_from_its_checkpoint_not_retrained(tmp_path):
    root = str(tmp_path)
    grid = ["noise=0.5,model='learned'"]
    # Stop the cell after 30 steps (max_steps), as an interrupted sweep would leave it.
    part = experiments.run_grid(DIGITS, grid, root=root, base_variant=BASE,
                                overrides={**QUIET, "max_steps": 30}, verbose=False)
    cell = os.path.join(root, experiments.cell_name(grid[0]))
    assert part[0]["step"] == 30 and os.listdir(os.path.join(cell, "checkpoints"))
    table = experiments.run_grid(DIGITS, grid, root=root, base_variant=BASE, overrides=QUIET,
                                 verbose=False)
    records = [json.loads(line) for line in open(os.path.join(cell, "metrics.jsonl"))]
    assert table[0]["test_error"] == records[-1]["test_error"]
    assert table[0]["step"] == records[-1]["step"] > 30
    # The evaluations up to step 30 (epoch 1 and the stop) were kept, not recomputed.
    assert [r["step"] for r in records if r["step"] <= 30] == [22, 30]  # 22 steps per epoch


def test_bad_cell_fails_loudly_or_is_recorded_with_keep_going(tmp_path):
    grid = ["noise=1.5", "noise=0.5,model='none'"]
    with pytest.raises(config_lib.ConfigError, match="corruption.level"):
        experiments.run_grid(DIGITS, grid, root=str(tmp_path), base_variant=BASE,
                             overrides=QUIET, verbose=False)
    assert not os.listdir(tmp_path)  # nothing written for the rejected cell
    table = experiments.run_grid(DIGITS, grid, root=str(tmp_path), base_variant=BASE,
                                 overrides=QUIET, keep_going=True, verbose=False)
    assert "corruption.level" in table[0]["error"] and table[1]["test_error"] < 0.9


def test_record_carries_the_evaluation_the_held_out_noisy_loss_selects(tmp_path):
    def fake_train(cfg, workdir):
        return {"final": {"epoch": 4.0, "test_error": 0.3},
                "best": {"epoch": 2.0, "test_error": 0.2, "val_noisy_loss": 1.1, "step": 9}}

    (rec,) = experiments.run_grid(DIGITS, ["model='learned'"], root=str(tmp_path),
                                  train_fn=fake_train, verbose=False)
    assert (rec["test_error"], rec["best_test_error"], rec["best_epoch"]) == (0.3, 0.2, 2.0)
    assert rec["best_val_noisy_loss"] == 1.1 and "best_step" not in rec


def test_placeholders_reach_the_variant_but_not_the_cell_name(tmp_path):
    seen = []

    def fake_train(cfg, workdir):
        seen.append((cfg.corruption.matrix_path, workdir))
        return {"final": {"test_error": 0.5}}

    experiments.run_grid(DIGITS, [("custom",
                                   "kind='custom',corruption.matrix_path='{root}/q.npy'")],
                         root=str(tmp_path), train_fn=fake_train, verbose=False,
                         placeholders={"{root}": str(tmp_path)})
    assert seen == [(f"{tmp_path}/q.npy", os.path.join(str(tmp_path), "custom"))]


def test_stats_leave_out_missing_values_and_need_two_for_a_spread():
    st = experiments.stats([0.2, None, 0.4, float("nan")])
    assert st["n"] == 2
    assert st["mean"] == pytest.approx(0.3)
    assert st["std"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    one = experiments.stats([0.5])
    assert one["n"] == 1 and one["mean"] == 0.5 and np.isnan(one["std"])
    assert experiments.stats([None])["n"] == 0


def test_gap_closure_matches_the_papers_imagenet_arithmetic():
    table = [{"noise_level": 0.5, "model": "none", "test_error": 0.537},
             {"noise_level": 0.5, "model": "learned", "test_error": 0.452},
             {"noise_level": 0.5, "model": "true", "test_error": 0.414},
             {"noise_level": 0.7, "model": "none", "test_error": 0.6},  # incomplete: skipped
             {"cell": "x", "error": "ConfigError"}]
    (row,) = experiments.gap_closure(table)
    assert row["closure"] == pytest.approx((0.537 - 0.452) / (0.537 - 0.414))
    assert row["gap"] == pytest.approx(0.123)


def test_gap_closure_gives_each_learned_recipe_its_own_row():
    table = [{"noise_level": 0.5, "model": "none", "test_error": 0.30, "variant": "n"},
             {"noise_level": 0.5, "model": "learned", "test_error": 0.20, "variant": "a"},
             {"noise_level": 0.5, "model": "learned", "test_error": 0.25, "variant": "b"},
             {"noise_level": 0.5, "model": "true", "test_error": 0.10, "variant": "t"}]
    rows = experiments.gap_closure(table)
    assert [(r["variant"], r["closure"]) for r in rows] == [("a", pytest.approx(0.5)),
                                                           ("b", pytest.approx(0.25))]


def test_gap_closure_is_undefined_when_true_is_no_better_than_none():
    table = [{"noise_level": 0.5, "model": "none", "test_error": 0.50},
             {"noise_level": 0.5, "model": "learned", "test_error": 0.48},
             {"noise_level": 0.5, "model": "true", "test_error": 0.53}]
    (row,) = experiments.gap_closure(table)
    assert row["gap"] == pytest.approx(-0.03) and np.isnan(row["closure"])


def test_gap_closure_over_seeds_pairs_each_seeds_cells_then_averages():
    table = []
    for seed, errs in enumerate([(0.30, 0.20, 0.10), (0.40, 0.30, 0.20), (0.3, 0.3, 0.4)]):
        for model, err in zip(("none", "learned", "true"), errs, strict=True):
            table.append({"noise_level": 0.5, "model": model, "test_error": err, "seed": seed,
                          "variant": f"seed={seed},model='{model}'"})
    (row,) = experiments.gap_closure(table)
    # Seeds 0 and 1 close half the gap; seed 2's true is worse than none: no closure.
    assert row["closure"] == pytest.approx(0.5) and row["closure_std"] == pytest.approx(0.0)
    assert (row["n"], row["closure_n"]) == (3, 2)
    assert row["variant"] == "model='learned'"
    assert row["none"] == pytest.approx(np.mean([0.30, 0.40, 0.3]))
    # The paired gain is defined for every seed, seed 2's (a tie) included.
    assert row["gain"] == pytest.approx(np.mean([0.10, 0.10, 0.0]))
    assert row["gain_std"] == pytest.approx(np.std([0.10, 0.10, 0.0], ddof=1))
    assert row["wins"] == 2


def test_aggregate_gives_mean_std_and_n_per_group_of_seeds():
    table = [{"variant": f"seed={s},noise=0.5,model='none'", "seed": s, "model": "none",
              "noise_level": 0.5, "test_error": e, "cell": f"c{s}"}
             for s, e in enumerate([0.1, 0.2, 0.3])]
    table.append({"cell": "bad", "variant": "seed=3,noise=0.5,model='none'", "error": "x"})
    (row,) = experiments.aggregate(table)
    assert row["variant"] == "noise=0.5,model='none'" and row["n"] == 3
    assert row["test_error"] == pytest.approx(0.2)
    assert row["test_error_std"] == pytest.approx(0.1)
    assert row["model"] == "none" and "seed" not in row and "cell" not in row


def test_without_keys_keeps_bracketed_values():
    assert experiments.without_keys("seed=1,groups=((0,1),(2,3)),model='x'", ["seed"]) == (
        "groups=((0,1),(2,3)),model='x'")


def test_cells_group_by_their_label_when_variants_hold_seed_specific_paths(tmp_path):
    # The adversarial cells read their own seed's clean model: the variants differ beyond the
    # seed, the labels (the given cell names) do not.
    cells = [(f"seed={s},model={m}",
              f"seed={s},model='{m}',corruption.confusion_path='/r/seed-{s}/summary.json'")
             for s in range(3) for m in ("none", "learned", "true")]
    errors = {"none": 0.30, "learned": 0.20, "true": 0.10}

    def fake_train(cfg, workdir):
        return {"final": {"test_error": errors[cfg.noise.model] + 0.01 * cfg.seed}}

    table = experiments.run_grid("configs/digits.py", cells, root=str(tmp_path),
                                 train_fn=fake_train, verbose=False)
    assert [r["label"] for r in table[:2]] == ["seed=0,model=none", "seed=0,model=learned"]
    groups = experiments.aggregate(table)
    assert sorted((g["variant"], g["n"]) for g in groups) == [
        ("model=learned", 3), ("model=none", 3), ("model=true", 3)]
    (row,) = experiments.gap_closure(table)
    assert row["n"] == 3 and row["closure"] == pytest.approx(0.5)
    assert row["gain"] == pytest.approx(0.10) and row["wins"] == 3
