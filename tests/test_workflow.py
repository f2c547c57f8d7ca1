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


def planned_jobs(project, *targets: str) -> tuple[str, list[dict]]:
    """One dry run of several targets (one Snakemake start instead of one per target): its text, and its jobs
    (rule, input and output paths, text up to the shell command). A rule with a `message:` (the sample rules:
    the sampler protocol) is printed as `Job N: <message>`, its paths only in the reason line."""
    out = dry_run(project, *targets)
    jobs = []
    for block in re.split(r"\n(?=\[\w{3} \w{3} +\d+ [\d:]+ \d{4}\]\n)", out)[1:]:
        head, _, shell = block.partition("Shell command: ")
        rule = re.search(r"^(?:local)?rule (\w+):$", head, re.M)
        if rule:
            fields = dict(re.findall(r"^\s+(input|output): (.*)$", head, re.M))
        else:  # Job N: message; Reason: Missing output files: ...; Input files updated by another job: ...
            updated = re.search(r"updated by another job: ([^;\n]*)", head)
            missing = re.search(r"Missing output files: ([^;\n]*)", head)
            fields = {"output": missing.group(1), "input": updated.group(1) if updated else ""}
        job = {key: set(re.split(r",? ", fields.get(key, ""))) - {""} for key in ("input", "output")}
        name = rule.group(1) if rule else "sample_pretrained" if "the authors' weights" in head else "sample"
        jobs.append(job | {"rule": name, "text": head + shell.split("\n")[0]})
    return out, jobs


def jobs_for(jobs: list[dict], target: str) -> list[dict]:
    """The jobs one target needs (it and everything upstream), out of the plan of several targets."""
    needed = [next(job for job in jobs if target in job["output"])]
    for job in needed:
        needed += [up for up in jobs if up["output"] & job["input"] and up not in needed]
    return needed


@pytest.fixture(scope="module")
def paper_plan() -> tuple[str, list[dict]]:
    """One dry run for every paper row (one Snakemake start instead of ten); each test takes its row's jobs."""
    return planned_jobs(ROOT, *(f"metrics/{name}/fid.json" for name in PAPER_ROWS))


@pytest.mark.parametrize("name", PAPER_ROWS)
def test_paper_row_dry_run_plans_the_recipe_without_data(name, params, paper_plan):
    """The plan of a paper row, with no data present: the right rules, the GPU resources params.yaml gives, a
    torchrun launch on multi-GPU nodes, and a GPU-hour estimate."""
    exp = resolve_experiment(params, name)
    out, jobs = paper_plan
    jobs = jobs_for(jobs, f"metrics/{name}/fid.json")
    expected = {"prepare_data", "train", "sample", "fid_floor", "fid"}
    if exp["space"] == "latent":
        expected |= {"import_autoencoder", "encode_latents"}
    expected |= {"import_reference"} if exp["evaluation"]["reference_npz"] else {"reference_stats"}
    if exp["condition"] == "text":
        expected |= {"encode_text"}  # the training captions, and the validation captions it samples for
    assert {job["rule"] for job in jobs} == expected
    (train,) = (job["text"] for job in jobs if job["rule"] == "train")
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


@pytest.fixture(scope="module")
def pretrained_plan(pretrained_project) -> tuple[str, list[dict]]:
    return planned_jobs(pretrained_project, *(f"metrics/{name}/pretrained_fid.json" for name in PAPER_ROWS))


@pytest.mark.parametrize("name", PAPER_ROWS)
def test_evaluation_only_dry_run_lists_the_papers_protocol(pretrained_plan, params, name):
    out, jobs = pretrained_plan
    jobs = jobs_for(jobs, f"metrics/{name}/pretrained_fid.json")
    planned = {job["rule"] for job in jobs}
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
    assert any(f"--source w/{name}.pth" in job["text"] for job in jobs)
