"""The notebooks run top to bottom (small settings through an environment variable)."""

from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["toy_models.ipynb"]


def _notebook_job(name):
    def spec(factory):
        tmp = factory.mktemp("notebook")
        out = tmp / f"executed_{name}"
        return out, dict(notebook=ROOT / "notebooks" / name, cwd=tmp, out=out)

    return spec


# Each notebook runs in the background from the start of the session; its test runs last (see
# conftest.py).
BACKGROUND = {f"notebook[{name}]": _notebook_job(name) for name in NOTEBOOKS}


@pytest.fixture
def notebook(request, background, tmp_path_factory):
    """The notebook, executed top to bottom with nbclient: ``nbformat`` of the result."""
    name = f"notebook[{request.param}]"
    out, _ = background.completed(__name__, name, BACKGROUND[name], tmp_path_factory)
    return nbformat.read(out, as_version=4)


@pytest.mark.parametrize("notebook", NOTEBOOKS, indirect=True)
def test_notebook_executes(notebook):
    outputs = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    assert "Neuron->Neuron" in outputs and "soft_matching" in outputs
