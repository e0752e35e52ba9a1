"""The notebooks run top to bottom (small budgets through environment variables), so they cannot rot."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the tests extra (nbclient) is not installed")
nbclient = pytest.importorskip("nbclient", reason="the tests extra (nbclient) is not installed")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("R2VPO_NOTEBOOK_STEPS", "2048")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("R2VPO_RESULTS", str(path.parents[1] / "benchmarks" / "results"))  # the committed runs
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs)
    expected = {"quickstart": "saved and loaded", "benchmark": "finished runs", "tuning": "the best entry trains"}
    assert expected[path.stem] in text


def test_there_are_notebooks():
    assert {path.stem for path in NOTEBOOKS} == {"quickstart", "benchmark", "tuning"}
