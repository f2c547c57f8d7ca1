"""Benchmark: the quick tier's frontier, FID and classifier accuracy against minutes of U-ViT training.

Trains `fmnist_latent` (params.yaml, everything as `make demo` runs it but training.steps) for each step count,
samples 1,000 images at its guidance scale, and scores them with the pipeline's own commands (`uvit train`,
`uvit sample`, `uvit fid`, `uvit accuracy`) against the DAG's outputs: the autoencoder's latents, the reference
statistics, the floor and the classifier. Run `make demo` first. With a cosine decay every step count is its own
trajectory, so each point trains from scratch.

Usage:
    python benchmarks/demo_frontier.py --steps 1000 1600 2400 3200 --json benchmarks/results/demo_frontier.json

Prints a table (steps, training seconds, FID, FID / floor, accuracy) and writes it as JSON with the machine's
CPU, whether it runs bf16 natively, and the precision each training ran in.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from uvit import layout
from uvit.config import load_params, resolve_experiment
from uvit.precision import cpu_has_native_bf16

EXPERIMENT = "fmnist_latent"


def dag_inputs(params: dict) -> dict:
    """What the frontier scores against, where `make demo` left it (uvit.layout builds every path)."""
    exp = resolve_experiment(params, EXPERIMENT)
    ae, classifier = exp["autoencoder"], exp["evaluation"]["classifier"]
    return {
        "data": layout.prepared(exp["dataset"]),
        "latents": layout.latents(ae),
        "autoencoder": layout.autoencoder_dir(ae, params["autoencoders"][ae]),
        "reference": layout.reference(exp),
        "floor": layout.floor(exp),
        "classifier": layout.classifier_weights(classifier),
        "classifier_metrics": layout.classifier_metrics(classifier),
    }


def uvit(params: Path, threads: int, *args: str) -> float:
    """Run one uvit subcommand; its wall seconds."""
    started = time.perf_counter()
    subprocess.run(["uvit", "--params", str(params), "--threads", str(threads), *args], check=True)
    return time.perf_counter() - started


def frontier_point(steps: int, params: dict, dag: dict, work: Path, threads: int) -> dict:
    params["experiments"][EXPERIMENT]["training"]["steps"] = steps
    point_params = work / f"params-{steps}.yaml"
    point_params.write_text(yaml.safe_dump(params, sort_keys=False))
    run, samples = work / f"steps{steps}", work / f"steps{steps}-samples"
    common = ("--experiment", EXPERIMENT, "--data", dag["data"])
    train_s = uvit(
        point_params, threads, "train", *common, "--latents", dag["latents"], "--out", str(run),
        "--metrics", str(run / "train.json"),
    )  # fmt: skip
    ema = str(run / layout.EMA_WEIGHTS)
    sample_s = uvit(
        point_params, threads, "sample", *common, "--model", ema, "--latents", dag["latents"],
        "--autoencoder-dir", dag["autoencoder"], "--out", str(samples),
    )  # fmt: skip
    fid_s = uvit(
        point_params, threads, "fid", *common, "--samples", str(samples), "--reference", dag["reference"],
        "--floor", dag["floor"], "--checkpoint", ema, "--metrics", str(work / f"fid-{steps}.json"),
    )  # fmt: skip
    uvit(
        point_params, threads, "accuracy", *common, "--samples", str(samples), "--classifier", dag["classifier"],
        "--classifier-metrics", dag["classifier_metrics"], "--metrics", str(work / f"accuracy-{steps}.json"),
    )  # fmt: skip
    fid = json.loads((work / f"fid-{steps}.json").read_text())
    accuracy = json.loads((work / f"accuracy-{steps}.json").read_text())
    return {
        "steps": steps,
        "train_seconds": round(train_s, 1),
        "sample_seconds": round(sample_s, 1),
        "fid_seconds": round(fid_s, 1),
        "precision": json.loads((run / "train.json").read_text())["precision"],
        "fid": fid["fid"],
        "floor": fid["fid_floor"],
        "fid_over_floor": round(fid["fid"] / fid["fid_floor"], 2),
        "accuracy": accuracy["classifier_accuracy"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 1600, 2400, 3200])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, help="keep each point's run here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    params = load_params(args.params)
    dag = dag_inputs(params)
    for path in dag.values():
        if not Path(path).exists():
            sys.exit(f"{path}: missing; run `make demo` first (the frontier scores against its outputs)")
    params = yaml.safe_load(args.params.read_text())  # as written: each point's file is validated again
    guidance = params["experiments"][EXPERIMENT]["sampling"]["guidance_scale"]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        schemas = work / "workflow"  # a settings file is validated against the schema beside it
        if not schemas.exists():
            schemas.symlink_to(Path("workflow").resolve())
        points = [frontier_point(steps, params, dag, work, args.threads) for steps in args.steps]
    print(f"\n{EXPERIMENT}, guidance {guidance}, 1,000 samples; {platform.processor() or platform.machine()}")
    print(f"{'steps':>6} {'train s':>8} {'FID':>8} {'/ floor':>8} {'accuracy':>9}")
    for p in points:
        print(
            f"{p['steps']:>6} {p['train_seconds']:>8.1f} {p['fid']:>8.2f} {p['fid_over_floor']:>8.2f} {p['accuracy']:>9.3f}"
        )
    if args.json:
        record = {
            "experiment": EXPERIMENT,
            "guidance_scale": guidance,
            "threads": args.threads,
            "cpu_native_bf16": cpu_has_native_bf16(),
            "machine": platform.machine(),
            "points": points,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
