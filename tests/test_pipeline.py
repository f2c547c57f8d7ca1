"""End to end: the smoke experiments through the whole DAG with Snakemake, then DVC agrees with it.

Runs in a temporary copy of the project (real digits data, real U-ViT training, real Inception FID).
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import make_project_copy, run, set_params

SMOKE = ["smoke_pixel", "smoke_latent"]


def planned_jobs(project) -> set[str]:
    out = run(["snakemake", "-n", "--cores", "2"], project).stdout
    if "Nothing to be done" in out:
        return set()
    table = out.split("Job stats:")[1].split("total")[0]
    return {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+$", table, re.M)}


@pytest.mark.slow
def test_smoke_dag_end_to_end(tmp_path):
    project = make_project_copy(tmp_path / "project", targets=SMOKE)
    run(["python", "workflow/scripts/export_dvc.py"], project)
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke targets"], project)

    run(["snakemake", "--cores", "2"], project, timeout=900)
    table = (project / "paper_tables" / "results.md").read_text()
    for name in SMOKE:
        metrics = json.loads((project / "metrics" / name / "fid.json").read_text())
        assert metrics["fid"] > 0 and metrics["fid_floor"] > 0 and metrics["num_samples"] == 48
        assert metrics["provenance"]["dirty"] is False and len(metrics["provenance"]["commit"]) == 40
        row = next(line for line in table.splitlines() if f"`{name}`" in line)
        assert f"{metrics['fid']:.2f}" in row and "demo" in row
        assert metrics["provenance"]["inputs"]["checkpoint"]["md5"][:8] in row
        assert (project / "paper_tables" / "figures" / f"{name}_samples.png").stat().st_size > 0
    assert (project / "paper_tables" / "results.tex").read_text().count("smoke") == 2
    loss_csv = (project / "metrics" / "smoke_pixel" / "loss.csv").read_text().splitlines()
    assert loss_csv[0] == "step,loss,lr" and len(loss_csv) == 1 + 20 // 5  # steps 20, log_every 5
    plots = run(["dvc", "plots", "show", "--json"], project).stdout
    assert "metrics/smoke_pixel/loss.csv" in plots

    # Both engines agree that everything is up to date.
    assert planned_jobs(project) == set()
    assert (
        "up to date" in run(["dvc", "status"], project).stdout.lower()
        or run(["dvc", "status"], project).stdout.strip() == ""
    )
    repro = run(["dvc", "repro"], project).stdout
    assert "Running stage" not in repro, repro

    # A sampling setting reruns only sampling, FID, figures and tables.
    set_params(project, lambda p: p["experiments"]["smoke_pixel"]["sampling"].__setitem__("steps", 4))
    assert planned_jobs(project) == {"sample", "fid", "sample_grid", "tables", "all"}
