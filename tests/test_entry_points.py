"""The README's commands where users run them: a changed setting or source file, a machine with several GPUs, a
SLURM login node (a killed run: test_pipeline.py, in the smoke run's project). Each test drives the real command (snakemake, python -m uvit.devices) in a
subprocess; fake nvidia-smi / sbatch / squeue / sacct on PATH stand in for the hardware and the scheduler."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, load_test_params, make_project_copy, project_env, run

from uvit import stages
from uvit.stages import RULE_COMMANDS, Lineage, code_files, module_closure


def fake_command(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + script)
    path.chmod(0o755)


# -- lineage: what a changed setting or source file reruns --------------------------------------------------
@pytest.fixture(scope="module")
def params():
    return load_test_params()


def lineages(params) -> dict[str, str]:
    lin = Lineage(params)
    return {
        "prepare": lin("prepare_data", dataset="digits"),
        "reference": lin("reference_stats", dataset="digits", split="train", n="32"),
        "train": lin("train", experiment="smoke_pixel"),
        "sample": lin("sample", experiment="smoke_pixel"),
        "fid": lin("fid", experiment="smoke_pixel"),
        "other_train": lin("train", experiment="smoke_latent"),
    }


@pytest.mark.parametrize(
    ("section", "key", "value", "changed"),
    [
        ("training", "steps", 3000, {"train", "sample", "fid"}),
        ("model", "depth", 5, {"train", "sample", "fid"}),
        ("sampling", "steps", 50, {"sample", "fid"}),
        ("evaluation", "feature_precision", "bf16", {"fid"}),
    ],
)
def test_a_setting_changes_the_lineage_of_its_stage_and_everything_below(
    params, section, key, value, changed
):
    import copy

    before = lineages(params)
    edited = copy.deepcopy(params)
    edited["experiments"]["smoke_pixel"].setdefault(section, {})[key] = value
    after = lineages(edited)
    assert {name for name in before if before[name] != after[name]} == changed


def test_a_defaulted_setting_counts_like_a_written_one(params):
    import copy

    edited = copy.deepcopy(params)
    edited["defaults"]["training"]["ema_rate"] = 0.5  # smoke_pixel does not write it
    before, after = lineages(params), lineages(edited)
    assert before["train"] != after["train"] and before["prepare"] == after["prepare"]


def test_each_stage_hashes_the_code_it_imports():
    assert "training" in module_closure("train") and "diffusion" in module_closure("sample")
    assert "training" not in module_closure("prepare-data") and "tables" not in module_closure("train")
    assert "fid" in module_closure("fid") and "sampling" not in module_closure("fid")
    # A subpackage: its __init__.py and each module of it that a stage imports, by file.
    assert {"data", "shards", "fileio", "sources", "sources.common", "sources.celeba"} <= set(
        module_closure("prepare-data")
    )
    assert "sources" not in module_closure("train") and "data" not in module_closure("train")
    assert stages.PACKAGE / "sources" / "__init__.py" in code_files("prepare-data")
    assert stages.PACKAGE / "sources" / "emoji.py" in code_files("prepare-data")


def test_the_cli_is_the_table_of_stages_and_each_stage_imports_what_its_function_imports():
    """The stages' entry modules come from the CLI's own functions (no list kept by hand): cmd_train imports
    training and calls nothing else, the previews are imported where sample_every asks for them."""
    from uvit.cli import cmd_train, stage_functions

    assert stage_functions()["train"] is cmd_train and set(stage_functions()) >= set(RULE_COMMANDS.values())
    assert {"training", "previews", "provenance", "config", "layout"} <= set(stages.entry_modules("train"))
    assert "render" in stages.entry_modules("tables") and "training" not in stages.entry_modules("tables")
    assert {"sampling", "figures"} <= set(module_closure("train"))  # previews draw sample grids


@pytest.mark.parametrize(
    "command, args",
    [
        ("tables", ["--metrics", "metrics/fmnist_latent/fid.json", "--out-dir", "{tmp}"]),
        ("plan", ["--experiment", "cifar10_uvit_s2"]),
        ("settings", ["--root", "{tmp}"]),
    ],
)
def test_every_module_a_stage_loads_when_it_runs_is_in_its_code(command, args, tmp_path):
    """Run the subcommand for real in a fresh interpreter: each uvit module it loaded is hashed into its stages."""
    script = (
        "import sys; from uvit.cli import main; code = main(sys.argv[1:]); "
        "print(' '.join(sorted(m[5:] for m in sys.modules if m.startswith('uvit.')))); sys.exit(code)"
    )
    filled = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run([sys.executable, "-c", script, command, *filled], ROOT)
    loaded = set(result.stdout.splitlines()[-1].split()) - {"cli"}  # the last line: the modules loaded
    assert loaded and loaded <= set(module_closure(command)), loaded - set(module_closure(command))


def test_each_rule_runs_the_subcommand_its_code_is_hashed_for():
    """RULE_COMMANDS (whose code a rule's lineage and DVC deps hash) names the subcommand the rule's command runs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_dvc", ROOT / "workflow/scripts/export_dvc.py")
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)
    for rule, template in export.TEMPLATES.items():
        words = template["cmd"].replace("{launcher}", "uvit").replace("{fid_launcher}", "uvit").split()
        assert words[0] == "uvit" and words[1] == RULE_COMMANDS[rule], rule


def test_each_stage_hashes_the_package_data_of_the_modules_it_runs():
    """The tables read paper_results.yaml (uvit.tables) and the templates (uvit.render); the figures run uvit.tables
    for the paper's curves, not the rendering."""
    paper, templates = stages.PACKAGE / "paper_results.yaml", stages.PACKAGE / "templates" / "table.md.j2"
    assert {paper, templates} <= set(code_files("tables"))
    assert paper in code_files("figures") and templates not in code_files("figures")
    assert paper not in code_files("train")


def test_the_code_closure_follows_relative_and_subpackage_imports(tmp_path, monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("from .a import x\nfrom . import b\n")
    (tmp_path / "pkg" / "a.py").write_text("from ..top import y\nfrom uvit.pkg.b import z\n")
    (tmp_path / "pkg" / "b.py").write_text("import uvit.top\n")
    (tmp_path / "top.py").write_text("from uvit import pkg\n")
    monkeypatch.setattr(stages, "PACKAGE", tmp_path)
    imports = stages.uvit_imports.__wrapped__  # uncached: these names are this test's own
    assert set(imports("pkg")) == {"pkg", "pkg.a", "pkg.b"}
    assert set(imports("pkg.a")) == {"top", "pkg", "pkg.b"}
    assert set(imports("pkg.b")) == {"top"} and set(imports("top")) == {"pkg"}
    assert stages.module_path("pkg") == "pkg/__init__.py" and stages.module_path("pkg.a") == "pkg/a.py"


# -- GPU jobs side by side -----------------------------------------------------------------------------------
def devices(bin_dir: Path, locks: Path, *args: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = project_env() | {"PATH": f"{bin_dir}:{project_env()['PATH']}", "UVIT_GPU_LOCKS": str(locks)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env |= env_extra or {}
    command = [sys.executable, "-m", "uvit.devices", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_gpu_jobs_each_get_their_own_device(tmp_path):
    fake_command(
        tmp_path / "bin", "nvidia-smi", 'echo "GPU 0: H200 (UUID: a)"; echo "GPU 1: H200 (UUID: b)"\n'
    )
    show = ["--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES; sleep 2"]
    first, second = (devices(tmp_path / "bin", tmp_path / "locks", "1", *show) for _ in range(2))
    seen = {p.communicate(timeout=30)[0].strip() for p in (first, second)}
    assert seen == {"0", "1"}
    both = devices(tmp_path / "bin", tmp_path / "locks", "2", *show)
    assert both.communicate(timeout=30)[0].strip() == "0,1"
    # SLURM chose the devices already: left as they are.
    given = devices(tmp_path / "bin", tmp_path / "locks", "1", *show, env_extra={"CUDA_VISIBLE_DEVICES": "5"})
    assert given.communicate(timeout=30)[0].strip() == "5"


def test_a_gpu_job_on_a_machine_without_gpus_is_one_line(tmp_path):
    fake_command(tmp_path / "bin", "nvidia-smi", "exit 9\n")  # the driver missing
    job = devices(
        tmp_path / "bin", tmp_path / "locks", "8", "--key", "experiments.x.resources.gpus", "--", "true"
    )
    _, err = job.communicate(timeout=30)
    assert job.returncode != 0 and "Traceback" not in err
    assert err.strip().splitlines() == [
        "error: experiments.x.resources.gpus: this job asks for 8 GPU(s) but this machine has 0; run it where "
        "there are GPUs (a GPU machine, or --profile profiles/slurm), or set experiments.x.resources.gpus: 0 to "
        "run it on the CPU"
    ]


# -- memory that every stage keeps ---------------------------------------------------------------------------
ALLOCATION_PROBE = """
import ctypes, resource, sys
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "kept":
    from uvit.cli import keep_freed_memory
    keep_freed_memory()
block = 8 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # a step's activations: allocated, written, all freed
    blocks = [libc.malloc(block) for _ in range(10)]
    for b in blocks:
        ctypes.memset(b, 1, block)
    for b in blocks:
        libc.free(b)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_stages_keep_freed_memory_instead_of_faulting_it_back_in():
    """Twenty rounds of ten 8 MB blocks written and freed (80 MB): glibc's defaults give the freed heap top back
    and fault all of it in again each round (20 x 20,480 pages); after keep_freed_memory, as every `uvit` stage
    starts, only the first round faults."""
    pages = 80 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    faults = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", ALLOCATION_PROBE, mode], capture_output=True, text=True, check=True
            ).stdout
        )
        for mode in ("default", "kept")
    }
    assert faults["default"] > 10 * pages, faults
    assert faults["kept"] < 2 * pages, faults


# -- profiles ----------------------------------------------------------------------------------------------
def test_profiles_are_where_snakemake_reads_them():
    """Snakemake reads profiles/default beside the Snakefile by itself (rerun-incomplete: a killed job reruns)."""
    out = run(["snakemake", "-n", "--cores", "1", "--verbose", "--dry-run"], ROOT, check=False)
    assert "profiles/default" in out.stdout + out.stderr or (ROOT / "profiles/default/config.yaml").is_file()
    assert not (ROOT / "workflow" / "profiles").exists()


# -- SLURM from a login node ---------------------------------------------------------------------------------
FAKE_SLURM = (
    Path(__file__).parent / "fake_slurm"
)  # sbatch, sacct, srun, sinfo, scontrol, sacctmgr; torchrun, uvit


@pytest.mark.slow
def test_the_readme_slurm_command_submits_and_retries(tmp_path):
    """`snakemake --profile profiles/slurm <target>` with no --cores (a login node), against a fake SLURM that
    runs each job: prepare and encode are submitted with the default resources, the import runs on the login
    node, training asks for the experiment's 8 A100s, memory, hours and CPUs, sees the devices SLURM gave it,
    runs under torchrun, and, preempted once, is resubmitted."""
    project = make_project_copy(tmp_path / "project", targets=["imagenet256_uvit_h2"])
    state = tmp_path / "slurm"
    state.mkdir()
    env = project_env() | {"FAKE_SLURM": str(state), "UVIT_SKIP_DVC_COMMIT": "1"}
    env["PATH"] = f"{FAKE_SLURM}:{env['PATH']}"
    command = ["snakemake", "--profile", "profiles/slurm", "results/imagenet256_uvit_h2/nnet_ema.pth"]
    command += ["--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1"]
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    calls = [json.loads(line) for line in (state / "sbatch.jsonl").read_text().splitlines()]
    rules = [re.search(r"--comment rule_(\w+?)_wildcards", c["call"]).group(1) for c in calls]
    assert rules == ["prepare_data", "encode_latents", "train", "train"]  # the import ran locally
    for call in calls[2:]:
        for flag in ("-t 14400", "--mem 524288", "--cpus-per-task=64", "--gpus=a100:8"):
            assert flag in call["call"], (flag, call["call"])
    assert "--attempt 2" in calls[3]["call"]
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert not {"slurm_account", "slurm_partition"} & set(profile["default-resources"])  # no placeholders

    runs = [json.loads(line) for line in (state / "uvit.jsonl").read_text().splitlines()]
    trains = [r for r in runs if "train" in r["argv"]]
    assert [r["job"] for r in trains] == ["3", "4"] and {r["devices"] for r in trains} == {"0,1,2,3,4,5,6,7"}
    imports = [r for r in runs if "import" in r["argv"]]
    assert imports and all(r["job"] is None for r in imports)  # on the login node
    assert "--nproc_per_node 8 -m uvit.cli" in (state / "torchrun.log").read_text()
