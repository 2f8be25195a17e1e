"""bench/audit_vs_cleanlab.py, the cleanlab head-to-head harness, on synthetic npz files.

The nlnoise side and the file handling run without cleanlab; the last test runs the cleanlab
side when the optional ``bench`` extra is installed.
"""

import json
import pathlib
import sys

import numpy as np
import pytest

from nlnoise import audit, noise

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import audit_vs_cleanlab as bench


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("npz")
    return [bench.synthetic_npz(d / f"s{seed}.npz", seed, n=3000, k=5, q_share=0.9)
            for seed in (0, 1)]


def test_nlnoise_side_on_one_file(files):
    r = bench.evaluate(files[0], with_cleanlab=False)
    with np.load(files[0]) as z:
        q, clean, noisy = z["q"], z["clean_labels"], z["noisy_labels"]
    realized = noise.realized_transition(clean, noisy, 5)
    assert r["noise_matrix"]["nlnoise: learned q"]["rel_l1"] == pytest.approx(
        noise.relative_l1(q, realized))
    assert {f"nlnoise: estimate_q({m})" for m in audit.ESTIMATE_METHODS} <= set(r["noise_matrix"])
    default = r["flagged"]["nlnoise: find_label_issues (default)"]
    assert default["f1"] > 0.85 and default["num_wrong"] == int(np.sum(noisy != clean))
    # The saved posterior was computed from the same q: the same flags and ranking.
    assert r["flagged"]["nlnoise: saved posterior < 0.5"]["f1"] == pytest.approx(default["f1"])
    assert r["ranking"]["nlnoise: saved posterior"]["ap"] == pytest.approx(
        r["ranking"]["nlnoise: label_quality (default)"]["ap"], abs=1e-6)
    assert not any(n.startswith("cleanlab") for s in bench.SECTIONS for n in r[s])
    assert r["meta"]["q_source"] == "given" and r["meta"]["n"] == 3000


def test_aggregate_is_mean_and_std_over_files(files):
    results = [bench.evaluate(f, with_cleanlab=False) for f in files]
    agg = bench.aggregate(results)
    vals = [r["flagged"]["nlnoise: find_label_issues (default)"]["f1"] for r in results]
    cell = agg["flagged"]["nlnoise: find_label_issues (default)"]["f1"]
    assert cell == {"mean": pytest.approx(np.mean(vals)),
                    "std": pytest.approx(np.std(vals, ddof=1)), "n": 2}
    md = bench.markdown(agg, 2)
    assert "| nlnoise: learned q | " in md and " ± " in md and "Over 2 file(s)" in md


def test_cli_writes_json_and_prints_tables(files, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert bench.main([*map(str, files), "--no-cleanlab", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["files"]) == 2 and set(data["aggregate"]) == set(bench.SECTIONS)
    assert "### Ranking" in capsys.readouterr().out


def test_bad_input_names_the_file(files, tmp_path, capsys):
    with np.load(files[0]) as z:
        arrays = dict(z)
    missing = tmp_path / "missing.npz"
    np.savez(missing, **{k: v for k, v in arrays.items() if k != "clean_labels"})
    assert bench.main([str(missing), "--no-cleanlab", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "clean_labels" in err
    assert not (tmp_path / "x.json").exists()
    logits = tmp_path / "logits.npz"
    np.savez(logits, **{**arrays, "pred_probs": np.log(arrays["pred_probs"] + 1e-9)})
    with pytest.raises(ValueError, match=r"logits\.npz: pred_probs: .*softmax"):
        bench.load(logits)
    row_t = tmp_path / "row_t.npz"
    np.savez(row_t, **{**arrays, "q": arrays["q"].T})
    with pytest.raises(ValueError, match=r"row_t\.npz: q: .*transpose"):
        bench.load(row_t)
    short = tmp_path / "short.npz"
    np.savez(short, **{**arrays, "posterior_probs": arrays["posterior_probs"][:10]})
    with pytest.raises(ValueError, match=r"short\.npz: posterior_probs:"):
        bench.load(short)


def test_cleanlab_side(files):
    pytest.importorskip("cleanlab")
    r = bench.evaluate(files[0])
    assert r["meta"]["cleanlab_version"].startswith("2.9")
    nm = r["noise_matrix"]
    # Same method, written independently: the two confident-joint noise matrices agree.
    assert nm["cleanlab: estimate_latent"]["rel_l1"] == pytest.approx(
        nm["nlnoise: estimate_q(confident_joint)"]["rel_l1"], abs=0.02)
    for by in ("prune_by_noise_rate", "both"):
        assert r["flagged"][f"cleanlab: find_label_issues ({by})"]["f1"] > 0.8
    assert len([n for n in r["ranking"] if n.startswith("cleanlab")]) == 3
