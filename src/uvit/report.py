"""Tables: the paper's numbers beside ours, rendered with jinja2 to Markdown and LaTeX in paper_tables/.

Each paper row (src/uvit/paper_results.yaml) is followed by the experiments that reproduce it or stand in
for it at demo scale. Demo rows say so, and carry what differs from the paper's protocol (sample count,
sampler, training steps, resolution) and their provenance: short hashes of checkpoint and samples, commit.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jinja2
import yaml

from uvit.config import resolve_experiment


def paper_results() -> dict:
    return yaml.safe_load(resources.files("uvit").joinpath("paper_results.yaml").read_text())["rows"]


def short(md5: str | None) -> str:
    return md5[:8] if md5 else "-"


def experiment_row(params: dict, name: str, metrics: dict | None, paper_fid: float) -> dict:
    """One of our rows: measured numbers from a metrics file, or 'not run' with the command that runs it."""
    exp = resolve_experiment(params, name)
    row = {"experiment": name, "scale": exp["scale"], "description": exp["description"]}
    if metrics is None:
        return row | {"run": False, "command": f"snakemake --cores all metrics/{name}/fid.json"}
    inputs = metrics["provenance"]["inputs"]
    commit = metrics["provenance"]["commit"]
    return row | {
        "run": True,
        "fid": metrics["fid"],
        "fid_floor": metrics["fid_floor"],
        "difference": metrics["fid"] - paper_fid,
        "samples": metrics["num_samples"],
        "reference": f"{metrics['reference_images']} {metrics['reference_split']}",
        "sampler": f"{metrics['sampler']} {metrics['sampler_steps']}",
        "guidance": metrics["guidance_scale"],
        "training_steps": metrics["training_steps"],
        "resolution": metrics["resolution"],
        "model": metrics["model"],
        "checkpoint": short(inputs["checkpoint"]["md5"]),
        "samples_hash": short(inputs["samples"]["md5"]),
        "commit": (commit[:8] if commit else "-") + ("+dirty" if metrics["provenance"]["dirty"] else ""),
    }


def table_rows(params: dict, metrics_files: list[Path]) -> list[dict]:
    """Paper rows in paper order, each with the experiments that stand for it."""
    measured = {}
    for path in metrics_files:
        metrics = json.loads(Path(path).read_text())
        measured[metrics["experiment"]] = metrics
    rows = []
    for key, paper in paper_results().items():
        # Measured experiments, and paper-scale ones not run yet (with the command that runs them).
        ours = [
            n
            for n, exp in params["experiments"].items()
            if exp["paper_row"] == key and (n in measured or exp.get("scale") == "paper")
        ]
        rows.append(
            {
                "key": key,
                "paper": paper,
                "ours": [experiment_row(params, n, measured.get(n), paper["fid"]) for n in ours],
            }
        )
    return rows


def render_tables(params: dict, metrics_files: list[Path], out_dir: Path) -> list[Path]:
    """Render results.md and results.tex into out_dir."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("uvit", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["latex"] = lambda s: str(s).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")
    rows = table_rows(params, metrics_files)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for template, name in (("results.md.j2", "results.md"), ("results.tex.j2", "results.tex")):
        path = out_dir / name
        path.write_text(env.get_template(template).render(rows=rows))
        written.append(path)
    return written
