"""The DAG itself: lint, dvc.yaml generated from it, dry runs of paper-scale targets without data."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT, make_project_copy, raw_test_params, run, set_params

from uvit.config import resolve_experiment
from uvit.plan import estimate


def test_snakemake_lint_is_clean():
    result = run(["snakemake", "--lint", "--cores", "1"], ROOT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dvc_yaml_is_generated_from_params_yaml():
    result = run(["python", "workflow/scripts/export_dvc.py", "--check"], ROOT, check=False)
    assert result.returncode == 0, result.stderr
    # Templated: about a line per job (the demo: 18 experiments, 15 of them the skip ablation's values x seeds).
    assert len((ROOT / "dvc.yaml").read_text().splitlines()) < 400


def test_dvc_yaml_declares_settings_code_and_persistent_checkpoints():
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    train = stages["train"]["do"]
    assert "src/uvit/training.py" in train["deps"] and "src/uvit/model.py" in train["deps"]
    assert "settings/train/${key}.json" in train["deps"] and "params" not in train
    assert stages["settings"]["outs"] == ["settings"]  # cached by DVC, not committed
    assert {"results/${key}/checkpoints": {"persist": True}} in train["outs"]
    fid = stages["fid"]["do"]
    assert fid["metrics"] == [{"metrics/${key}/fid.scores.json": {"cache": False}}]
    assert {"metrics/${key}/fid.json": {"cache": False}} in fid["outs"]
    assert "--threads" not in train["cmd"] and "2>" not in train["cmd"]


def dvc_stages(project) -> dict[str, tuple[str, set, set]]:
    """{command: (stage, deps less settings and code, outs)} of every stage DVC expands from both files."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        stages = [stage for stage in repo.index.stages if stage.cmd and stage.name != "settings"]
        return {
            " ".join(stage.cmd.split()): (
                stage.addressing,
                {d.def_path for d in stage.deps}
                - {d.def_path for d in stage.deps if re.match("settings/|src/uvit/", d.def_path)},
                {o.def_path for o in stage.outs if not o.persist},  # checkpoints: DVC keeps them for resuming
            )
            for stage in stages
        }


def assert_engines_agree(project, jobs: list[dict]) -> None:
    """Each job Snakemake plans is a DVC stage with its command (less --threads and the log), inputs and outputs."""
    dvc = dvc_stages(project)
    commands = set()
    for job in jobs:
        command = re.sub(r" --threads \d+| 2> \S+$", "", " ".join(job["shell"].split()))
        commands.add(command)
        assert command in dvc, f"{job['rule']}: no DVC stage runs {command}"
        name, deps, outs = dvc[command]
        if job["rule"] not in ("sample", "sample_pretrained"):  # their paths are printed in part only
            assert (deps, outs) == (job["input"], job["output"]), name
        else:
            assert job["output"] <= outs and job["input"] <= deps, name
    assert commands == set(dvc), sorted(set(dvc) - commands)[:5]


# One key per section, each set to a value it does not have (written or defaulted), with the smoke experiments
# as targets: the DVC stages whose settings record changes (those DVC reruns) and the rules Snakemake reruns
# (those whose lineage param changes, and the tables and figures their metrics feed).
SMOKE_TARGETS = ["smoke_pixel", "smoke_latent", "smoke_text"]
SMOKE_PIXEL_DOWNSTREAM = {"sample", "sample_curve_point", "fid", "fid_curve_point", "sample_grid"}
# smoke_latent's guidance point (scale 1 besides 0.4) and classifier accuracies
SMOKE_LATENT_GUIDANCE = {"sample_guidance_point", "fid_guidance_point", "accuracy", "accuracy_guidance_point"}
CLASSIFIER_JOBS = {
    "train_classifier@digits_cnn",
    "accuracy@smoke_latent",
    "accuracy_guidance_point@smoke_latent-scale1",
}
KEYS = {
    "data": (
        {"datasets": {"digits": {"shard_size": 500}}},
        {"prepare_data@digits"},
        {"prepare_data", "train_autoencoder", "encode_latents", "train", "reference_stats", "fid_floor"}
        | SMOKE_PIXEL_DOWNSTREAM
        | SMOKE_LATENT_GUIDANCE
        | {"train_classifier"},
    ),
    "autoencoder": (
        {"autoencoders": {"digits_kl": {"kl_weight": 1.0e-5}}},
        {"train_autoencoder@digits_kl"},
        {"train_autoencoder", "encode_latents", "train", "sample", "fid", "sample_grid"}
        | SMOKE_LATENT_GUIDANCE,
    ),
    "classifier": (  # the accuracy stages record their classifier's settings: a stale accuracy is named
        {"classifiers": {"digits_cnn": {"lr": 1.0e-3}}},
        CLASSIFIER_JOBS,
        {"train_classifier", "accuracy", "accuracy_guidance_point"},
    ),
    "model": (
        {"experiments": {"smoke_pixel": {"model": {"mlp_ratio": 2.0}}}},
        {
            "train@smoke_pixel",
            "sample@smoke_pixel",
            "sample_curve_point@smoke_pixel-step10-sampler_steps5",
            "sample_curve_point@smoke_pixel-step20-sampler_steps3",
        },
        {"train"} | SMOKE_PIXEL_DOWNSTREAM,
    ),
    "diffusion": (  # a discrete schedule needs a discrete sampler: sampling (FID's too) changes with it
        {
            "experiments": {
                "smoke_text": {
                    "diffusion": {"schedule": "ddpm_linear"},
                    "sampling": {"sampler": "dpm_solver_pp"},
                }
            }
        },
        {"train@smoke_text", "sample@smoke_text", "fid@smoke_text"},
        {"train", "sample", "fid", "sample_grid"},
    ),
    "training": (
        {"experiments": {"smoke_latent": {"training": {"seed": 7}}}},
        {"train@smoke_latent"},
        {"train", "sample", "fid", "sample_grid"} | SMOKE_LATENT_GUIDANCE,
    ),
    "sampling": (
        {"experiments": {"smoke_text": {"sampling": {"seed": 3}}}},
        {"sample@smoke_text", "fid@smoke_text"},
        {"sample", "fid", "sample_grid"},
    ),
    "evaluation": (
        {"experiments": {"smoke_text": {"evaluation": {"feature_precision": "bf16"}}}},
        {"fid@smoke_text"},
        {"fid"},
    ),
}


def edited_params(tmp_path, edit) -> tuple[dict, dict]:
    """The smoke targets' params before and after deep-merging `edit` into params.yaml."""
    import yaml

    from uvit.config import deep_merge, load_params

    raw = raw_test_params() | {"targets": SMOKE_TARGETS, "quick_targets": []}
    (tmp_path / "workflow/schemas").mkdir(parents=True, exist_ok=True)
    (tmp_path / "workflow/schemas/params.schema.yaml").write_bytes(
        (ROOT / "workflow/schemas/params.schema.yaml").read_bytes()
    )
    before, after = ({}, {})
    for params, edited in ((before, raw), (after, deep_merge(raw, edit))):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
        params |= load_params(tmp_path / "params.yaml")
    return before, after


def changed_jobs(before: dict, after: dict, jobs: dict) -> tuple[set[str], set[str]]:
    """(stages whose settings record changes, rules whose lineage changes) among `jobs`."""
    from uvit.stages import Lineage

    old, new = Lineage(before), Lineage(after)
    settings = {
        name for name, (rule, wc) in jobs.items() if old.settings(rule, **wc) != new.settings(rule, **wc)
    }
    return settings, {rule for name, (rule, wc) in jobs.items() if old(rule, **wc) != new(rule, **wc)}


@pytest.mark.parametrize("section", KEYS)
def test_a_key_changes_exactly_the_settings_and_lineage_of_the_stages_that_read_it(section, tmp_path):
    """Torch-free, for a key of each section: the settings records (DVC's deps) and lineage hashes (Snakemake's
    params) that change. tests/test_pipeline.py runs a sampling key through both engines' real dry runs."""
    from uvit.stages import dag_jobs

    edit, dvc_expected, snakemake_expected = KEYS[section]
    before, after = edited_params(tmp_path, edit)
    jobs = dag_jobs(before, SMOKE_TARGETS, report=True)
    assert jobs.keys() == dag_jobs(after, SMOKE_TARGETS, report=True).keys()
    assert changed_jobs(before, after, jobs) == (dvc_expected, snakemake_expected)


def test_another_guidance_scale_adds_its_jobs_and_reruns_none_there_were(tmp_path):
    """A scale added to evaluation.guidance_scales adds its sampling, FID and accuracy (and the tables' rerun);
    the FIDs and accuracies already there keep their settings and lineage."""
    from uvit.stages import dag_jobs

    edit = {"experiments": {"smoke_latent": {"evaluation": {"guidance_scales": [1, 2.5]}}}}
    before, after = edited_params(tmp_path, edit)
    jobs, more = dag_jobs(before, SMOKE_TARGETS, report=True), dag_jobs(after, SMOKE_TARGETS, report=True)
    added = {f"{rule}@smoke_latent-scale2.5" for rule in SMOKE_LATENT_GUIDANCE - {"accuracy"}}
    assert more.keys() - jobs.keys() == added and jobs.keys() <= more.keys()
    assert changed_jobs(before, after, jobs) == (set(), set())


def test_settings_records_are_written_per_stage(tmp_path):
    run(["uvit", "settings", "--root", str(tmp_path)], ROOT)
    records = sorted(tmp_path.glob("settings/**/*.json"))
    assert (
        len(records) > 400 and (tmp_path / "settings/train/cifar10_uvit_s2.json").is_file()
    )  # paper rows too
    (tmp_path / "settings/train/gone.json").write_text("{}")
    out = run(["uvit", "settings", "--root", str(tmp_path)], ROOT).stderr
    assert "1 changed" in out and not (tmp_path / "settings/train/gone.json").exists()


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
    the sampler protocol) is printed as `Job N: <message>`, its paths only in the reason line, its rule told by
    its output."""
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
        name = rule.group(1) if rule else sample_rule(job["output"])
        command = shell.split("\n")[0]
        shell = "" if command == "None" else command  # the `all` rule
        jobs.append(job | {"rule": name, "text": head + command, "shell": shell})
    return out, jobs


def sample_rule(outputs: set[str]) -> str:
    """The sample rule of a job printed by its message (the rules with a `message:`), told by its output."""
    (output,) = outputs
    for rule, marker in (("sample_curve_point", "/curve/"), ("sample_guidance_point", "/guidance/")):
        if marker in output:
            return rule
    return "sample_pretrained" if output.endswith("/pretrained_samples") else "sample"


def jobs_for(jobs: list[dict], target: str) -> list[dict]:
    """The jobs one target needs (it and everything upstream), out of the plan of several targets."""
    needed = [next(job for job in jobs if target in job["output"])]
    for job in needed:
        needed += [up for up in jobs if up["output"] & job["input"] and up not in needed]
    return needed


def name_the_authors_weights(params: dict) -> None:
    """Each paper row names the authors' weights (files that do not exist here); a new dict each: rows share
    their evaluation section through a YAML anchor."""
    for name in PAPER_ROWS:
        evaluation = params["experiments"][name].get("evaluation", {})
        params["experiments"][name]["evaluation"] = {**evaluation, "pretrained_weights": f"w/{name}.pth"}


@pytest.fixture(scope="module")
def paper_plan(tmp_path_factory) -> tuple[str, list[dict]]:
    """One dry run of every experiment in the user's params.yaml (without the tests' own), each paper row also
    naming the authors' weights, and of the default target, in a copy without outputs (one Snakemake start and
    one DVC index for all): each paper-row test takes its row's jobs (trained, or evaluated from the weights),
    the DVC test all of them (dvc.yaml and experiments/dvc.yaml generated for these params: that the committed
    ones are what params.yaml generates is test_dvc_yaml_is_generated_from_params_yaml)."""
    from uvit.config import load_params, metrics_paths

    project = make_project_copy(tmp_path_factory.mktemp("plan") / "project", smoke=False)
    set_params(project, name_the_authors_weights)
    run(["python", "workflow/scripts/export_dvc.py"], project)
    params = load_params(project / "params.yaml")
    targets = [path for name in params["experiments"] for path in metrics_paths(params, name)]
    assert {f"metrics/{name}/pretrained_fid.json" for name in PAPER_ROWS} <= set(targets)
    return project, *planned_jobs(project, "all", *targets)


def test_dvc_stages_are_the_snakemake_jobs_of_every_experiment(paper_plan):
    """The stages DVC expands from dvc.yaml and experiments/dvc.yaml are the jobs `snakemake -n` plans for every
    experiment (paper rows included, with their released weights' evaluation) and the default target: same
    commands, inputs and outputs."""
    project, _, jobs = paper_plan
    assert len(jobs) > 400
    assert {"import_weights", "sample_pretrained", "fid_pretrained"} <= {job["rule"] for job in jobs}
    assert_engines_agree(project, [job for job in jobs if job["shell"]])


@pytest.mark.parametrize("name", PAPER_ROWS)
def test_paper_row_dry_run_plans_the_recipe_without_data(name, params, paper_plan):
    """The plan of a paper row, with no data present: the right rules, the GPU resources params.yaml gives, a
    torchrun launch on multi-GPU nodes, and a GPU-hour estimate."""
    exp = resolve_experiment(params, name)
    _, out, jobs = paper_plan
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


@pytest.mark.parametrize("name", PAPER_ROWS)
def test_evaluation_only_dry_run_lists_the_papers_protocol(paper_plan, params, name):
    _, out, jobs = paper_plan
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
