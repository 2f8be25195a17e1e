"""The notebooks execute top to bottom at tiny scale: notebooks/ablations.ipynb (2-epoch digits
runs) and notebooks/label_issues.ipynb (a 4-epoch digits run audited in-sample and cross-fitted)."""

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = pathlib.Path(__file__).resolve().parents[1]


def _execute(name, tmp_path, monkeypatch):
    """Runs notebooks/<name> in a kernel; returns every code cell's outputs."""
    # The kernel inherits this environment: one CPU device, tiny runs, outputs in tmp_path.
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("NLNOISE_NOTEBOOK_SCALE", "tiny")
    monkeypatch.setenv("NLNOISE_NOTEBOOK_ROOT", str(tmp_path))
    monkeypatch.setenv("NLNOISE_REPO", str(REPO))
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def test_ablations_notebook_runs_and_produces_its_tables(tmp_path, monkeypatch):
    outputs = _execute("ablations.ipynb", tmp_path, monkeypatch)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for o in outputs)
    assert "closure" in text and "relative L1 error of the learned Q" in text
    assert "with a perfect network Q would settle at tr(Q)" in text
    # Each grid cell trained in its own workdir under the notebook's root.
    finished = {}
    for p in tmp_path.glob("*/*/summary.json"):
        finished.setdefault(p.parent.parent.name, set()).add(p.parent.name)
    assert "noise-0.5__model-learned" in finished["levels"]
    assert {k: len(v) for k, v in finished.items()} == {"levels": 6, "decay": 4, "freeze": 2,
                                                          "regularizer": 4}
    # The grids' curves are drawn inline: one figure per ablation and the Q heatmaps.
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 4


def test_label_issues_notebook_audits_a_run_and_shows_the_grid(tmp_path, monkeypatch):
    outputs = _execute("label_issues.ipynb", tmp_path, monkeypatch)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for o in outputs)
    assert "labels flagged; the scores use" in text and "cross-fitted (2 folds)" in text
    assert "images left out of the second stage" in text
    # The grid of suspected wrong labels is shown inline, from the audit's issues.png.
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 1
    audit = tmp_path / "digits-audit"
    assert (audit / "issues.png").exists() and (audit / "label_issues.csv").exists()
    assert (tmp_path / "digits-cf" / "audit" / "audit.json").exists()
    assert {p.name for p in (tmp_path / "digits-cf").iterdir()} == {"fold-0", "fold-1", "audit"}
