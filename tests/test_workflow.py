"""The DAG itself: lint, dvc.yaml generated from it, dry runs of paper-scale targets without data."""

from __future__ import annotations

import re

from conftest import ROOT, run


def test_snakemake_lint_is_clean():
    result = run(["snakemake", "--lint", "--cores", "1"], ROOT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dvc_yaml_is_generated_from_the_snakefile():
    result = run(["python", "workflow/scripts/export_dvc.py", "--check"], ROOT, check=False)
    assert result.returncode == 0, result.stderr


def test_dvc_yaml_declares_params_code_and_persistent_checkpoints():
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    train = stages["train-fmnist_pixel"]
    assert "src/uvit/training.py" in train["deps"] and "src/uvit/model.py" in train["deps"]
    assert "experiments.fmnist_pixel.training" in train["params"] and "defaults.training" in train["params"]
    assert {"results/fmnist_pixel/checkpoints": {"persist": True}} in train["outs"]
    assert stages["fid-fmnist_pixel"]["metrics"] == [{"metrics/fmnist_pixel/fid.json": {"cache": False}}]
    assert "--threads" not in train["cmd"] and "2>" not in train["cmd"]


def test_paper_scale_dry_run_needs_no_data():
    result = run(["snakemake", "-n", "--cores", "8", "metrics/cifar10_uvit_s2/fid.json"], ROOT)
    out = result.stdout + result.stderr
    for rule in ("prepare_data", "train", "sample", "reference_stats", "fid_floor", "fid"):
        assert re.search(rf"^{rule}\s+1$", out, re.M), rule
    assert "--count 50000" in out or "train50000" in out


def test_a_given_reference_npz_replaces_the_computed_statistics(tmp_path):
    """`evaluation.reference_npz` (e.g. ADM's reference batch): FID and floor use it; nothing is computed."""
    from conftest import make_project_copy, set_params

    project = make_project_copy(tmp_path / "project", targets=["fmnist_pixel"])
    (project / "refs").mkdir()
    (project / "refs" / "VIRTUAL_fmnist.npz").write_bytes(b"")
    set_params(
        project,
        lambda p: p["experiments"]["fmnist_pixel"].__setitem__(
            "evaluation", {"reference_npz": "refs/VIRTUAL_fmnist.npz"}
        ),
    )
    out = run(["snakemake", "-n", "-p", "--cores", "1", "metrics/fmnist_pixel/fid.json"], project).stdout
    assert not re.search(r"^reference_stats\s+\d+$", out, re.M)
    assert "metrics/fid_floors/fashion_mnist-VIRTUAL_fmnist-test1000.json" in out
    assert "--reference refs/VIRTUAL_fmnist.npz --out metrics/fid_floors" in out
    assert "fid --experiment fmnist_pixel" in out and "--reference refs/VIRTUAL_fmnist.npz --floor" in out
