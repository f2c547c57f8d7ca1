"""Generate dvc.yaml and experiments/dvc.yaml from the Snakemake DAG, so the two engines never drift apart.

Every job becomes a DVC stage with the same command (less Snakemake's thread flag and log redirection), its
inputs, the uvit modules it imports and its settings record (settings/<stage>.json, written by the `settings`
stage from uvit.stages.Lineage.settings: every key the job reads, written or defaulted) as deps, and its
outputs: metrics/*.scores.json (the numbers) are DVC metrics, metrics/ CSV files (loss curves) DVC plots,
the other metrics/ files (records with provenance) and paper_tables/ plain outs (all kept in git, cache:
false), the rest cached outs; training checkpoints are persistent. Each stage's `meta` names its rule and
wildcards (what `uvit settings` resolves). dvc.yaml holds the jobs of params.yaml's `targets` (a plain
`dvc repro` runs them), experiments/dvc.yaml every other experiment's (paper rows included:
`dvc repro experiments/dvc.yaml:fid-cifar10_uvit_s2`).

    python workflow/scripts/export_dvc.py            # rewrite both files and the settings records
    python workflow/scripts/export_dvc.py --check    # exit 1 if they differ from the DAG
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
from uvit.stages import (  # noqa: E402
    DVC_FILES,
    ENTRY_MODULES,
    PACKAGE_DATA,
    SETTINGS_DIR,
    Lineage,
    module_closure,
    settings_path,
    stage_name,
)

HEADER = "# Generated from the Snakefile by workflow/scripts/export_dvc.py; do not edit (tests check it).\n"
SETTINGS_STAGE = {
    "cmd": "uvit settings",
    "deps": ["params.yaml", "workflow/schemas/params.schema.yaml"],
    "outs": [{SETTINGS_DIR: {"cache": False}}],
}


def snakemake_jobs(targets: list[str] | None = None) -> list:
    """The jobs of the default target (or of `targets`), as Snakemake plans them with every output missing."""
    from snakemake.api import DAGSettings, OutputSettings, ResourceSettings, SnakemakeApi
    from snakemake.settings.enums import Quietness

    with (
        contextlib.redirect_stdout(io.StringIO()),
        SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api,
    ):
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(cores=1), snakefile=ROOT / "Snakefile", workdir=ROOT
        )
        workflow = workflow_api.dag(DAGSettings(targets=targets or (), forceall=True)).workflow_api._workflow
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True)
        workflow._build_dag()
        return [job for job in workflow.dag.jobs if job.shellcmd]


def dvc_command(shellcmd: str) -> tuple[str, str]:
    """DVC's command for a job (no thread pinning, output to the terminal) and its CLI subcommand."""
    command = re.sub(r"\s*2>\s*\S+\s*$", "", shellcmd.strip())
    command = re.sub(r" --threads \d+", "", command)
    command = re.sub(r"\s+", " ", command)
    subcommand = next(
        word for word in command.split()[1:] if not word.startswith("-") and word in ENTRY_MODULES
    )
    return command, subcommand


def code_deps(subcommand: str) -> list[str]:
    code = [f"src/uvit/{name}.py" for name in module_closure(subcommand)]
    return code + [f"src/uvit/{path}" for m in ENTRY_MODULES[subcommand] for path in PACKAGE_DATA.get(m, [])]


def stage_for(job, name: str) -> dict:
    command, subcommand = dvc_command(job.shellcmd)
    deps = {str(p) for p in job.input} | set(code_deps(subcommand)) | {settings_path(name)}
    stage: dict = {"cmd": command, "deps": sorted(deps)}
    outs, metrics, plots = [], [], []
    for path in sorted(map(str, job.output)):
        if path.startswith("metrics/") and path.endswith(".csv"):
            plots.append({path: {"cache": False, "x": "step", "y": "loss"}})
        elif path.endswith(".scores.json"):
            metrics.append({path: {"cache": False}})
        elif path.startswith(("metrics/", "paper_tables/")):
            outs.append({path: {"cache": False}})
        else:
            outs.append(path)
    if job.rule.name == "train":
        outs.append({str(job.params.run_dir) + "/checkpoints": {"persist": True}})
    for key, entries in (("outs", outs), ("metrics", metrics), ("plots", plots)):
        if entries:
            stage[key] = entries
    stage["meta"] = {"rule": job.rule.name, "wildcards": dict(job.wildcards_dict)}
    return stage


def all_experiment_targets(params: dict) -> list[str]:
    """Every experiment's FID metrics files and loss curve: the paper rows' jobs as well as the targets'."""
    from uvit.config import fid_metrics_paths

    return [
        path
        for name in params["experiments"]
        for path in [*fid_metrics_paths(params, name), f"metrics/{name}/loss.csv"]
    ]


def top_level_plots(default_jobs: list) -> list[dict]:
    """Loss curves of the target experiments, side by side (`dvc plots show`, `dvc plots diff`)."""
    curves = sorted(str(p) for job in default_jobs for p in job.output if str(p).endswith("/loss.csv"))
    return [{"loss": {"template": "linear", "x": "step", "y": {path: "loss" for path in curves}}}]


def dump(document: dict) -> str:
    return HEADER + yaml.safe_dump(document, sort_keys=False, width=1000)


def render() -> dict[str, str]:
    """The text of each generated DVC file: {path: text}."""
    from uvit.config import load_params

    params = load_params(ROOT / "params.yaml")
    default_jobs = snakemake_jobs()
    default = {stage_name(job.rule.name, job.wildcards_dict): job for job in default_jobs}
    others = {
        stage_name(job.rule.name, job.wildcards_dict): job
        for job in snakemake_jobs(all_experiment_targets(params))
    }
    stages = {"settings": {**SETTINGS_STAGE, "deps": SETTINGS_STAGE["deps"] + code_deps("settings")}}
    stages |= {name: stage_for(job, name) for name, job in sorted(default.items())}
    extra = {
        name: {"wdir": "..", **stage_for(job, name)}
        for name, job in sorted(others.items())
        if name not in default
    }
    return {
        DVC_FILES[0]: dump({"stages": stages, "plots": top_level_plots(default_jobs)}),
        DVC_FILES[1]: dump({"stages": extra}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the DVC files differ from the Snakemake DAG"
    )
    args = parser.parse_args()
    for name, text in render().items():
        path = ROOT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                print(
                    f"{name} differs from the Snakemake DAG: run python workflow/scripts/export_dvc.py",
                    file=sys.stderr,
                )
                return 1
            continue
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        print(f"wrote {path} ({text.count('cmd:')} stages)")
    if not args.check:
        from uvit.config import load_params
        from uvit.stages import dvc_stages

        stages = dvc_stages(ROOT)
        changed = Lineage(load_params(ROOT / "params.yaml")).write_settings(stages, ROOT / SETTINGS_DIR)
        print(f"wrote {SETTINGS_DIR}/ ({len(stages)} stages, {len(changed)} changed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
