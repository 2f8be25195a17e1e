"""bench/beyond_closure.py: beyond-the-paper cells paired with the first stage's by seed."""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import beyond_closure as bc


def _cell(path: pathlib.Path, final: float, best: float) -> None:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(
        {"final": {"test_error": final}, "best": {"test_error": best}}))


def test_pairs_by_seed_and_skips_unfinished_cells(tmp_path, capsys):
    for s, (none, learned, true, relabelled) in enumerate([(0.30, 0.25, 0.20, 0.22),
                                                           (0.40, 0.30, 0.20, 0.35)]):
        first = tmp_path / "fashion_memorise"
        _cell(first / f"seed-{s}__noise-0.5__model-none", none, none)
        _cell(first / f"seed-{s}__noise-0.5__model-learned", learned, learned)
        _cell(first / f"seed-{s}__noise-0.5__model-true", true, true)
        _cell(tmp_path / "fashion_beyond" / f"seed-{s}__noise-0.5__stage2-relabelled__model-none",
              relabelled, relabelled)
    (tmp_path / "fashion_beyond" / "seed-2__noise-0.5__stage2-relabelled__model-none").mkdir()
    table = bc.rows(tmp_path, bc.CASES["fashion_50"])
    relabelled = [r for r in table if r["method"] == "stage 2, relabelled"]
    assert [len(r["seeds"]) for r in relabelled] == [2, 2]  # seed 2 has no summary
    first_seed, second_seed = relabelled[0]["seeds"]
    assert abs(first_seed["closure"] - 0.8) < 1e-9 and abs(second_seed["closure"] - 0.25) < 1e-9
    assert abs(first_seed["over_learned"] - 3.0) < 1e-9  # points, learned 25% against 22%
    assert not next(r for r in table if r["method"] == "stage 2, pruned")["seeds"]
    assert bc.main(["--root", str(tmp_path), "--cases", "fashion_50"]) == 0
    text = capsys.readouterr().out
    assert "| 50% | stage 2, relabelled | after the last epoch | 2 | 28.50 ± 9.19 |" in text
    assert "0.53 ± 0.39 |" in text  # closures 0.8 and 0.25


def test_held_out_cases_pair_with_their_own_first_stage(tmp_path, capsys):
    """The confusion start on CIFAR-10 reads cifar_memorise's cells of the same seed."""
    first = tmp_path / "cifar10_memorise"
    for m, err in (("none", 0.60), ("learned", 0.58), ("true", 0.50)):
        _cell(first / f"seed-1__noise-0.5__model-{m}", err, err)
    _cell(tmp_path / "cifar10_confusion" / "seed-1__noise-0.5__model-learned__q_init-confusion",
          0.55, 0.56)
    (row_final, row_best), = [bc.rows(tmp_path, bc.CASES["cifar_50"])]
    assert [s["seed"] for s in row_final["seeds"]] == [1]
    assert abs(row_final["seeds"][0]["closure"] - 0.5) < 1e-9
    assert abs(row_best["seeds"][0]["over_learned"] - 2.0) < 1e-9
    assert bc.CASES["heldout_block_50"].seeds == bc.HELDOUT_SEEDS
    assert bc.main(["--root", str(tmp_path), "--cases", "cifar_50"]) == 0
    assert "| CIFAR-10 50% (held-out) | learned, confusion start | early-stopped | 1 |" in (
        capsys.readouterr().out)


def test_missing_first_stage_is_a_clear_error(tmp_path, capsys):
    assert bc.main(["--root", str(tmp_path)]) == 2
    assert "fashion_memorise is missing" in capsys.readouterr().err
    assert bc.main(["--root", str(tmp_path), "--cases", "heldout_pair_40"]) == 2
    assert "heldout_fashion is missing (case heldout_pair_40)" in capsys.readouterr().err
