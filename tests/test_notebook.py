"""examples/quickstart.ipynb runs top to bottom (1 epoch) and shows its results."""
from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("PODIUM_NB_EPOCHS", "1")
    monkeypatch.setenv("PODIUM_NB_WORKDIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "Did you mean 'train.loss'" in text  # the validation error shown, not raised
    assert "val_f1" in text and "precision" in text  # metrics table and per-class table
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the confusion matrix figure
    assert list((tmp_path / "runs").glob("digits*/best.ckpt"))
