"""notebooks/ablations.ipynb executes top to bottom (tiny scale: 2-epoch digits runs)."""

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_ablations_notebook_runs_and_produces_its_tables(tmp_path, monkeypatch):
    # The kernel inherits this environment: one CPU device, tiny runs, outputs in tmp_path.
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("NLNOISE_NOTEBOOK_SCALE", "tiny")
    monkeypatch.setenv("NLNOISE_NOTEBOOK_ROOT", str(tmp_path))
    monkeypatch.setenv("NLNOISE_REPO", str(REPO))
    nb = nbformat.read(REPO / "notebooks" / "ablations.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
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
