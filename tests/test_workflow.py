"""The DAG itself: lint, dvc.yaml generated from it, dry runs of paper-scale targets without data."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT, make_project_copy, run, set_params

from uvit.config import resolve_experiment
from uvit.plan import estimate


def test_snakemake_lint_is_clean():
    result = run(["snakemake", "--lint", "--cores", "1"], ROOT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_settings_records_are_what_params_yaml_resolves_to():
    """Every stage's settings/<stage>.json, in both DVC files, is the record uvit.stages computes now."""
    from uvit.config import load_params
    from uvit.stages import Lineage, dvc_stages, settings_text

    lineage, stages = Lineage(load_params(ROOT / "params.yaml")), dvc_stages(ROOT)
    assert len(stages) > 400 and "train-cifar10_uvit_s2" in stages  # the paper rows too
    for name, (rule, wildcards) in stages.items():
        path = ROOT / "settings" / f"{name}.json"
        assert path.read_text() == settings_text(lineage.settings(rule, **wildcards)), name
    assert sorted(p.stem for p in (ROOT / "settings").glob("*.json")) == sorted(stages)


def test_dvc_yaml_is_generated_from_the_snakefile():
    result = run(["python", "workflow/scripts/export_dvc.py", "--check"], ROOT, check=False)
    assert result.returncode == 0, result.stderr


def test_dvc_yaml_declares_settings_code_and_persistent_checkpoints():
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    train = stages["train-fmnist_pixel"]
    assert "src/uvit/training.py" in train["deps"] and "src/uvit/model.py" in train["deps"]
    assert "settings/train-fmnist_pixel.json" in train["deps"] and "params" not in train
    assert stages["settings"]["outs"] == [{"settings": {"cache": False}}]
    assert {"results/fmnist_pixel/checkpoints": {"persist": True}} in train["outs"]
    assert stages["fid-fmnist_pixel"]["metrics"] == [
        {"metrics/fmnist_pixel/fid.scores.json": {"cache": False}}
    ]
    assert {"metrics/fmnist_pixel/fid.json": {"cache": False}} in stages["fid-fmnist_pixel"]["outs"]
    assert "--threads" not in train["cmd"] and "2>" not in train["cmd"]


PAPER_ROWS = [
    "cifar10_uvit_s2",
    "celeba64_uvit_s4",
    "imagenet64_uvit_m4",
    "imagenet64_uvit_l4",
    "imagenet256_uvit_l2",
    "imagenet256_uvit_h2",
    "imagenet512_uvit_l4",
    "imagenet512_uvit_h4",
    "mscoco_uvit_s2",
    "mscoco_uvit_s2_deep",
]


def dry_run(project, *targets: str) -> str:
    result = run(["snakemake", "-n", "-p", "--cores", "8", *targets], project)
    return result.stdout + result.stderr


def job_block(out: str, rule: str) -> str:
    """The dry run's description of the first job of a rule (up to its shell command)."""
    match = re.search(rf"^(?:local)?rule {rule}:\n(.*?)^Shell command: (.*?)$", out, re.M | re.S)
    assert match, f"no {rule} job in the plan"
    return match.group(1) + match.group(2)


@pytest.mark.parametrize("name", PAPER_ROWS)
def test_paper_row_dry_run_plans_the_recipe_without_data(name, params):
    """The plan of a paper row, with no data present: the right rules, the GPU resources params.yaml gives, a
    torchrun launch on multi-GPU nodes, and a GPU-hour estimate."""
    exp = resolve_experiment(params, name)
    out = dry_run(ROOT, f"metrics/{name}/fid.json")
    expected = {"prepare_data", "train", "sample", "fid_floor", "fid"}
    if exp["space"] == "latent":
        expected |= {"import_autoencoder", "encode_latents"}
    expected |= {"import_reference"} if exp["evaluation"]["reference_npz"] else {"reference_stats"}
    if exp["condition"] == "text":
        expected |= {"encode_text"}  # the training captions, and the validation captions it samples for
    planned = {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+$", out.split("Job stats:")[1], re.M)}
    assert planned - {"job", "total"} == expected
    train = job_block(out, "train")
    res = exp["resources"]
    for resource in (
        f"gpu={res['gpus']}",
        f"gpu_model={res['gpu_model']}",
        f"mem_mb={res['mem_gb'] * 1024}",
        f"runtime={int(res['hours'] * 60)}",
        f"cpus_per_task={res['cpus']}",
        f"est_a100_hours={round(estimate(params, name)['train_a100_hours'])}",
    ):
        assert resource in train, resource
    launch = (
        f"torchrun --standalone --nproc_per_node {res['gpus']} -m uvit.cli" if res["gpus"] > 1 else "uvit"
    )
    assert f"{launch} --threads 8 train --experiment {name}" in train
    cfg = exp["sampling"]
    assert (
        f"{name}: {cfg['sampler']}, {cfg['steps']} steps, guidance {cfg['guidance_scale']}, "
        f"{cfg['num_samples']} samples" in out
    )


def test_gpu_hour_estimates_match_the_authors_costs(params):
    """Calibrated on U-ViT-H/2's 1,664 A100-hours; CIFAR-10 S/2 then lands near the authors' 96 2080Ti-hours
    at a 2080Ti's 4-5x lower throughput (an independent check of the FLOP count)."""
    assert estimate(params, "imagenet256_uvit_h2")["train_a100_hours"] == pytest.approx(1664)
    assert 96 / 6 < estimate(params, "cifar10_uvit_s2")["train_a100_hours"] < 96 / 3


@pytest.fixture(scope="module")
def pretrained_project(tmp_path_factory):
    """A project copy whose paper rows each name the authors' weights (files that do not exist here)."""
    project = make_project_copy(tmp_path_factory.mktemp("pretrained") / "project")
    set_params(
        project,
        lambda p: [  # a new dict each: rows share their evaluation section through a YAML anchor
            p["experiments"][n].__setitem__(
                "evaluation",
                {**p["experiments"][n].get("evaluation", {}), "pretrained_weights": f"w/{n}.pth"},
            )
            for n in PAPER_ROWS
        ],
    )
    return project


@pytest.mark.parametrize("name", PAPER_ROWS)
def test_evaluation_only_dry_run_lists_the_papers_protocol(pretrained_project, params, name):
    out = dry_run(pretrained_project, f"metrics/{name}/pretrained_fid.json")
    planned = {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+$", out.split("Job stats:")[1], re.M)}
    assert "train" not in planned and "encode_latents" not in planned
    exp = resolve_experiment(params, name)
    if (
        exp["evaluation"]["reference_npz"] and exp["condition"] != "text"
    ):  # the ImageNet rows: ADM's references
        assert "prepare_data" not in planned and "fid_floor" not in planned, planned
    assert {"import_weights", "sample_pretrained", "fid_pretrained"} <= planned
    cfg = resolve_experiment(params, name)["sampling"]
    assert (
        f"{name}, the authors' weights: {cfg['sampler']}, {cfg['steps']} steps, guidance {cfg['guidance_scale']}, "
        f"{cfg['num_samples']} samples" in out
    )
    assert f"--source w/{name}.pth" in out
