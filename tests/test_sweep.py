"""nlnoise-sweep: grid parsing, the named sweeps of configs/sweeps.py, a real ad-hoc sweep."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from nlnoise import config as config_lib
from nlnoise import experiments, sweep

REPO = pathlib.Path(__file__).resolve().parents[1]
SWEEPS = str(REPO / "configs" / "sweeps.py")


def test_parse_grid_reads_literals_and_rejects_malformed_text():
    assert sweep.parse_grid("noise=0.3|0.5; model=none|learned") == {
        "noise": [0.3, 0.5], "model": ["none", "learned"]}
    for bad in ("noise", "noise=", ""):
        with pytest.raises(ValueError, match="--grid"):
            sweep.parse_grid(bad)


def test_every_named_sweep_builds_valid_configs():
    sweeps = sweep.load_sweeps(SWEEPS)
    assert {"main_seeds", "fashion_memorise", "fashion_structured", "heldout_fashion",
            "heldout_confusion", "cifar_confusion", "cifar_outlier"} <= set(sweeps)
    for name, s in sweeps.items():
        for cell in experiments.expand(s["grid"]):
            _, variant = experiments.split_cell(cell)
            variant = variant.replace("{root}", "/tmp/r")
            cfg = experiments.load_config(str(REPO / s["config"]),
                                          ",".join(v for v in (s["base"], variant) if v))
            if cfg.corruption.kind != "adversarial":  # needs the clean cell's summary on disk
                config_lib.validate(cfg)
            assert cfg.num_epochs >= 1, name


def test_headline_sweeps_vary_every_seed_together():
    sweeps = sweep.load_sweeps(SWEEPS)
    s = sweeps["fashion_memorise"]
    cfgs = [experiments.load_config(str(REPO / s["config"]), f"{s['base']},{v}")
            for _, v in map(experiments.split_cell, experiments.expand(s["grid"]))]
    assert sorted({c.seed for c in cfgs}) == [0, 1, 2]
    assert all(c.corruption.seed is None and c.dataset.subset_seed is None for c in cfgs)
    assert all(c.dataset.val_size > 0 for c in cfgs)  # label-free early stopping everywhere


def test_heldout_sweep_shares_no_seed_or_noise_family_with_the_tuning_cells():
    sweeps = sweep.load_sweeps(SWEEPS)

    def configs(name):
        s = sweeps[name]
        return [experiments.load_config(str(REPO / s["config"]),
                                        f"{s['base']},{v}".replace("{root}", "/tmp/r"))
                for _, v in map(experiments.split_cell, experiments.expand(s["grid"]))]

    tuning = configs("fashion_memorise") + configs("fashion_structured")
    held = configs("heldout_fashion")
    assert {c.seed for c in held}.isdisjoint({c.seed for c in tuning})
    assert {c.corruption.kind for c in held}.isdisjoint({c.corruption.kind for c in tuning})


def test_confusion_start_sweeps_differ_from_their_first_stage_only_in_q_init():
    """heldout_confusion and cifar_confusion pair by seed with heldout_fashion's and
    cifar_memorise's cells (bench/beyond_closure.py): same flips, data and schedule."""
    sweeps = sweep.load_sweeps(SWEEPS)

    def configs(name):
        s = sweeps[name]
        out = {}
        for _, v in map(experiments.split_cell, experiments.expand(s["grid"])):
            c = experiments.load_config(str(REPO / s["config"]), f"{s['base']},{v}").to_dict()
            out[(c["seed"], c["corruption"]["kind"], c["corruption"]["level"],
                 c["noise"]["model"])] = c
        return out

    for method, first in (("heldout_confusion", "heldout_fashion"),
                          ("cifar_confusion", "cifar_memorise")):
        ours, ref = configs(method), configs(first)
        assert len(ours) == 6 if method == "heldout_confusion" else len(ours) == 3
        for key, cfg in ours.items():
            assert cfg["q"]["init"] == "confusion" and ref[key]["q"]["init"] == "identity"
            cfg["q"]["init"] = "identity"
            assert cfg == ref[key], key


def test_select_filters_cells_by_text():
    cells = experiments.expand({"noise": [0.5, 0.7], "model": ["none", "learned"]})
    assert sweep.select(cells, ["noise=0.7"]) == ["noise=0.7,model='none'",
                                                  "noise=0.7,model='learned'"]
    assert sweep.select(cells, ["model=learned", "0.5"]) == ["noise=0.5,model='learned'"]


def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert sweep.main(["--grid=nope", f"--sweeps={SWEEPS}"]) == 2
    err = capsys.readouterr().err
    assert "no sweep named 'nope'" in err and "fashion_memorise" in err
    assert sweep.main(["--grid=fashion_memorise", f"--sweeps={SWEEPS}", "--only=zzz",
                       f"--root={tmp_path}"]) == 2
    assert "matches none" in capsys.readouterr().err
    assert sweep.main(["--config=configs/digits.py", "--grid=noise"]) == 2
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grid=nosie=0.3|0.5"], "cell nosie-0.3 (nosie=0.3): nosie: unknown config key"),
        (["--grid=noise=0.3|0.5", "--set", "progres_bar=False"],
         "progres_bar: unknown config key"),
        (["--grid=noise=0.3|"], "'noise=0.3|' has an empty value"),
        (["--grid=noise=0.3|1.5"], "cell noise-1.5 (noise=1.5): corruption.level: must be <= 1"),
        (["--grid=noise=0.3", "--base=runlocal,epochs=0"], "num_epochs: must be >= 1"),
    ],
    ids=["unknown-grid-key", "unknown-set-key", "empty-value", "bad-value", "bad-base"],
)
@pytest.mark.parametrize("dry_run", [True, False])
def test_every_cell_is_validated_before_anything_runs(tmp_path, capsys, args, message,
                                                      dry_run):
    root = tmp_path / "sw"
    argv = ["--config=configs/digits.py", f"--root={root}", *args]
    assert sweep.main([*argv, "--dry_run"] if dry_run else argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not root.exists()  # no cell ran, no table was written


def test_a_configs_own_variant_is_kept_and_flags_take_absl_forms(capsys):
    assert sweep.main(["--config", "configs/digits.py:runlocal", "--grid", "model=none|learned",
                       "--only", "none", "--set", "plots=False", "--dry_run",
                       "--root=/nonexistent"]) == 0
    assert capsys.readouterr().out.splitlines() == ["to do  model-none: model='none'"]
    args = sweep.parse_flags(["--config=configs/digits.py:runlocal", "--grid=noise=0.5",
                              "--base=epochs=3"])
    s = sweep.resolve(args)
    assert (s["config"], s["base"]) == ("configs/digits.py", "runlocal,epochs=3")
    cfg = experiments.load_config(s["config"], s["base"])
    assert cfg.num_epochs == 3 and cfg.q.freeze_epochs == 3.0  # runlocal applied, then epochs
    for bad, said in ((["--nope"], "Unknown command line flag 'nope'"),
                      (["--grid=x=1", "stray"], "unexpected arguments ['stray']")):
        assert sweep.main(bad) == 2
        assert said in capsys.readouterr().err


def test_a_cell_another_process_runs_refuses_the_whole_sweep(tmp_path, capsys):
    from nlnoise import lock

    root = tmp_path / "sw"
    busy = lock.WorkdirLock(str(root / "noise-0.5"))
    busy.acquire()
    try:
        argv = ["--config=configs/digits.py:runlocal", "--grid=noise=0.3|0.5", f"--root={root}"]
        assert sweep.main(argv) == 2
        err = capsys.readouterr().err
        assert f"cell noise-0.5 ({root / 'noise-0.5'}) is in use by pid {os.getpid()}" in err
        assert "--only" in err and sorted(p.name for p in root.iterdir()) == ["noise-0.5"]
    finally:
        busy.release()


def test_real_adhoc_sweep_from_the_command_line(tmp_path):
    root = tmp_path / "sw"
    cmd = [sys.executable, "-m", "nlnoise.sweep", "--config=configs/digits.py",
           "--grid=noise=0.5;model=none|learned", f"--root={root}",
           "--base=runlocal,epochs=2,freeze=1", "--set=mesh.data=1", "--set=plots=False"]
    env = {**os.environ, "XLA_FLAGS": ""}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    table = json.load(open(root / "sw.json"))
    assert [r["model"] for r in table] == ["none", "learned"]
    md = (root / "sw.md").read_text()
    assert "clean test error (%)" in md and f"{100 * table[1]['test_error']:.2f}" in md
    assert (root / "sw.png").stat().st_size > 1000
    assert str(root / "sw_curves.png") in out.stdout
    assert (root / "sw_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Again: nothing is retrained, the table is the same.
    again = subprocess.run([*cmd, "--report"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.load(open(root / "sw.json")) == table
    # A run of one cell with --only (finished: read back) keeps the other cell in the report.
    assert sweep.main([*cmd[3:], "--only=learned"]) == 0
    assert json.load(open(root / "sw.json")) == table


def test_report_text_gives_gain_wins_and_closure_per_seed_pair():
    table = []
    for seed, errs in enumerate([(0.30, 0.20, 0.10), (0.40, 0.30, 0.20), (0.30, 0.32, 0.25)]):
        for model, err in zip(("none", "learned", "true"), errs, strict=True):
            table.append({"noise_level": 0.5, "model": model, "test_error": err, "seed": seed,
                          "variant": f"seed={seed},model='{model}'"})
    text = sweep.report_text(table, "noise_level")
    head, row = [ln for ln in text.splitlines()
                 if "gain (points)" in ln or ln.startswith("| 0.5 | model='learned'")]
    cells = dict(zip([c.strip() for c in head.split("|")], [c.strip() for c in row.split("|")],
                     strict=True))
    # Per seed: gains 10, 10, -2 points; closures 0.5, 0.5, -0.4.
    assert cells["gain (points)"] == f"6.00 ± {100 * np.std([0.1, 0.1, -0.02], ddof=1):.2f}"
    assert cells["wins"] == "2"
    assert cells["closure"] == f"0.2 ± {np.std([0.5, 0.5, -0.4], ddof=1):.4g}"
