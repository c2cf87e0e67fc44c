"""The notebooks run top to bottom (small settings through an environment variable), print their
results and show their figures inline."""

import json
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pytest
from experiment_checks import check_figures, check_record, raise_if_failed, tiny_toy_job

from experiments.configs import theory as theory_configs

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["toy_models.ipynb", "theory.ipynb"]


def _notebook_job(name, **extra):
    def spec(factory):
        tmp = factory.mktemp("notebook")
        out = tmp / f"executed_{name}"
        job = dict(notebook=ROOT / "notebooks" / name, cwd=tmp, out=out, **extra)
        return (tmp, out), job

    return spec


def _toy_notebook_job(factory):
    """The toy notebook, its run folder a copy of the suite's tiny toy run (the same preset,
    from the command line, checked in test_toy_experiment): its cells restore the trained models
    and SAEs from that run's checkpoints, and its ``run`` reads the finished sizes, as a rerun
    in a user's folder would."""
    (tmp, executed), job = _notebook_job("toy_models.ipynb", after=("tiny_toy",))(factory)
    target = tmp / "runs" / "notebook_toy_models"

    def prepare(tiny_toy):
        out, proc = tiny_toy
        raise_if_failed(proc, "the tiny toy run")
        shutil.copytree(out, target, ignore=shutil.ignore_patterns("activations", "figures"))

    return (tmp, executed), dict(job, prepare=prepare)


# Each notebook runs in the background from the start of the session (the toy notebook after
# the tiny toy run it resumes); its test runs once it is done (see conftest.py).
BACKGROUND = {
    "tiny_toy": tiny_toy_job,
    "notebook[toy_models.ipynb]": _toy_notebook_job,
    "notebook[theory.ipynb]": _notebook_job("theory.ipynb"),
}


@pytest.fixture
def notebook(request, background, tmp_path_factory):
    """``(kernel working directory, executed notebook)``, executed top to bottom by nbclient."""
    name = f"notebook[{request.param}]"
    (tmp, out), _ = background.completed(__name__, name, BACKGROUND[name], tmp_path_factory)
    return tmp, nbformat.read(out, as_version=4)


def _text(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def _images(nb) -> int:
    """How many PNG images the notebook displays."""
    return sum(
        o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
        for c in nb.cells
        for o in c.get("outputs", [])
    )


@pytest.mark.parametrize("notebook", ["toy_models.ipynb"], indirect=True)
def test_toy_notebook_prints_scores_and_shows_figures(notebook):
    _, nb = notebook
    outputs = _text(nb)
    assert "Neuron->Neuron" in outputs and "soft_matching" in outputs
    assert _images(nb) >= 2  # figure 2 and figure 6


@pytest.mark.parametrize("notebook", ["theory.ipynb"], indirect=True)
def test_theory_notebook_runs_the_tiny_experiment(notebook):
    tmp_path, nb = notebook
    outputs = _text(nb)
    assert "Setting 4" in outputs and "permutation" in outputs
    assert _images(nb) >= 4  # settings 1 to 4
    out = tmp_path / "runs" / "notebook_theory"
    results = json.loads((out / "results.json").read_text())
    cfg = theory_configs.tiny()
    assert results["config"]["n_features"] == cfg.n_features and "jax" in results["versions"]
    for n, r in results["levels"].items():
        for m in ("permutation", "soft", "semi"):
            rec = r["measured"][m]
            check_record(rec, cfg.n_folds)
            assert rec["mean"] == pytest.approx(1 / np.sqrt(int(n)), abs=0.03)
    for r in results["patterns"].values():
        assert r["measured"]["permutation"]["mean"] == pytest.approx(
            r["closed_form"]["permutation"], abs=0.03
        )
    sw = results["sweep"]
    assert np.shape(sw["recovered_permutation"]) == (len(cfg.sweep_ks), len(cfg.sweep_units))
    assert len(results["table"]) == 5
    check_figures(
        out / "figures",
        (
            "theory1_sparsity_levels",
            "theory2_sparsity_patterns",
            "theory3_recovery",
            "theory3_sweep_units",
            "theory4_metrics_table",
        ),
    )
