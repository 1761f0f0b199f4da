"""examples/quickstart.ipynb runs top to bottom (1 epoch) from the data folder to a submission."""
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
    assert "TqdmWarning" not in text and "LeafSpec" not in text  # quiet, also in a notebook
    assert "1437 images in 10 classes" in text  # EDA of the data folder (the digits fallback)
    assert "Did you mean 'train.loss'" in text  # the validation error shown, not raised
    assert "val_f1" in text and "precision" in text  # metrics table and the holdout's per-class table
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # batch preview, curves, confusion
    run = tmp_path / "runs" / "digits"  # WORKDIR is tmp_path
    assert (run / "best.ckpt").is_file() and (run / "report.html").is_file()
    assert (tmp_path / "eda" / "eda.html").is_file()
    submission = run / "predictions" / "test_images" / "submission.csv"
    assert submission.is_file() and str(submission) in text
    assert len(submission.read_text().splitlines()) == 361  # header + the 360 unlabelled test images


def test_stored_notebook_has_outputs_of_a_real_run():
    """The committed notebook shows what a run gives (the issue: it was stored without outputs)."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code)
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for c in code for o in c.get("outputs", []))
    assert "submission.csv" in text and "val_f1" in text and "/tmp" not in text
    assert code[0].source.splitlines()[3].startswith("DATA = None")  # the user's folder, first thing to set
