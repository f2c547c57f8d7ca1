"""Generate dvc.yaml from the Snakemake DAG, so the two engines never drift apart.

Every job of the default target becomes a DVC stage with the same command (less Snakemake's thread flag and
log redirection), its inputs and the uvit modules it imports as deps, the params.yaml keys it reads as
params, and its outputs as outs: metrics/ JSON files are DVC metrics, metrics/ CSV files (loss curves) DVC
plots and paper_tables/ files plain outs (all kept in git, cache: false), the rest cached outs; training
checkpoints are persistent.

    python workflow/scripts/export_dvc.py            # rewrite dvc.yaml
    python workflow/scripts/export_dvc.py --check    # exit 1 if dvc.yaml differs from the DAG
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
from uvit.stages import ENTRY_MODULES, PACKAGE_DATA, module_closure  # noqa: E402

HEADER = "# Generated from the Snakefile by workflow/scripts/export_dvc.py; do not edit (tests check it).\n"

# Rules that run a stage of uvit.config.STAGE_SECTIONS under another name.
RULE_STAGES = {
    "sample_curve_point": "sample",
    "sample_pretrained": "sample",
    "fid_curve_point": "fid",
    "fid_pretrained": "fid",
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


def params_read(job, params: dict) -> list[str]:
    """The params.yaml keys a job reads (those that exist: DVC refuses missing keys)."""
    from uvit.config import STAGE_SECTIONS

    wildcards, rule = job.wildcards_dict, RULE_STAGES.get(job.rule.name, job.rule.name)
    if rule == "prepare_data":
        return [f"datasets.{wildcards['dataset']}"]
    if rule == "train_autoencoder":
        return [f"autoencoders.{wildcards['autoencoder']}"]
    if rule in ("tables", "figures"):
        return ["targets", "experiments", *(["ablations"] if params.get("ablations") else [])]
    if rule not in STAGE_SECTIONS:
        return []
    name = wildcards["experiment"]
    keys = [f"defaults.{s}" for s in STAGE_SECTIONS[rule] if s in params["defaults"]]
    ablation = params["experiments"][name].get("ablation")
    if ablation:  # an experiment expanded from a grid: its base's keys and the grid's
        grid = ablation["grid"]
        name = params["ablations"][grid]["base"]
        keys.append(f"ablations.{grid}")
    keys += [f"experiments.{name}.{s}" for s in STAGE_SECTIONS[rule] if s in params["experiments"][name]]
    return keys


def stage_name(job) -> str:
    return "-".join([job.rule.name, *job.wildcards_dict.values()])


def stage_for(job, params: dict) -> dict:
    command, subcommand = dvc_command(job.shellcmd)
    code = [f"src/uvit/{name}.py" for name in module_closure(subcommand)]
    code += [f"src/uvit/{path}" for m in ENTRY_MODULES[subcommand] for path in PACKAGE_DATA.get(m, [])]
    stage: dict = {"cmd": command, "deps": sorted({str(p) for p in job.input} | set(code))}
    keys = params_read(job, params)
    if keys:
        stage["params"] = keys
    outs, metrics, plots = [], [], []
    for path in sorted(map(str, job.output)):
        if path.startswith("metrics/") and path.endswith(".csv"):
            plots.append({path: {"cache": False, "x": "step", "y": "loss"}})
        elif path.startswith("metrics/"):
            metrics.append({path: {"cache": False}})
        elif path.startswith("paper_tables/"):
            outs.append({path: {"cache": False}})
        else:
            outs.append(path)
    if job.rule.name == "train":
        outs.append({str(job.params.run_dir) + "/checkpoints": {"persist": True}})
    if outs:
        stage["outs"] = outs
    if metrics:
        stage["metrics"] = metrics
    if plots:
        stage["plots"] = plots
    return stage


def render() -> str:
    from uvit.config import load_params

    params = load_params(ROOT / "params.yaml")
    stages = {stage_name(job): stage_for(job, params) for job in snakemake_jobs()}
    document = {"stages": dict(sorted(stages.items()))}
    return HEADER + yaml.safe_dump(document, sort_keys=False, width=1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if dvc.yaml differs from the Snakemake DAG"
    )
    args = parser.parse_args()
    text = render()
    path = ROOT / "dvc.yaml"
    if args.check:
        if not path.exists() or path.read_text() != text:
            print(
                "dvc.yaml differs from the Snakemake DAG: run python workflow/scripts/export_dvc.py",
                file=sys.stderr,
            )
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {path} ({text.count('cmd:')} stages)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
