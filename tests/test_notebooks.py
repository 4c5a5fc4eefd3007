"""The notebooks in notebooks/ run top to bottom against a small workspace (nbclient)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_notebooks_are_committed_without_outputs():
    import nbformat

    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") and not c.get("execution_count")
                   for c in nb.cells if c.cell_type == "code"), path.name


@pytest.mark.parametrize("name", ["01_sql_over_a_workspace", "02_python_api"])
def test_notebook_runs(name, two_sae_workspace, tmp_path, monkeypatch):
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    # The kernel inherits this environment: the workspace to open, and this interpreter's
    # folder first on PATH so that "python3" is the venv's (with saebench installed).
    monkeypatch.setenv("SAEBENCH_WORKSPACE", str(two_sae_workspace))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
