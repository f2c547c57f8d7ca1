# Shared helpers: the validated params, experiment resolution and per-stage settings (no lambdas in rules).
import json
import os
import subprocess
import sys

from uvit.config import ConfigError, load_params, resolve_experiment, stage_settings

try:
    PARAMS = load_params("params.yaml")
except ConfigError as err:
    sys.exit(f"error: {err}")

EXPERIMENTS = sorted(PARAMS["experiments"])
DATASETS = sorted(PARAMS["datasets"])
AUTOENCODERS = sorted(PARAMS["autoencoders"])


def experiment(wildcards):
    return resolve_experiment(PARAMS, wildcards.experiment)


def settings_json(stage):
    """The settings a stage reads, passed as params so that Snakemake re-runs the stage when they change."""

    def params(wildcards):
        return json.dumps(stage_settings(experiment(wildcards), stage), sort_keys=True)

    return params


def autoencoder_json(wildcards):
    return json.dumps(PARAMS["autoencoders"][wildcards.autoencoder], sort_keys=True)


def dataset_json(wildcards):
    return json.dumps(PARAMS["datasets"][wildcards.dataset], sort_keys=True)


def prepared(wildcards):
    return f"data/prepared/{experiment(wildcards)['dataset']}"


def latent_inputs(stage):
    """Inputs a latent experiment adds: its encoded latents (train), plus the autoencoder to decode (sample)."""

    def inputs(wildcards):
        exp = experiment(wildcards)
        if exp["space"] != "latent":
            return {}
        paths = {"latents": f"data/latents/{exp['autoencoder']}"}
        if stage == "sample":
            paths["autoencoder"] = f"results/autoencoders/{exp['autoencoder']}"
        return paths

    return inputs


def latent_args(wildcards, input):
    """Command-line flags for the latent inputs present."""
    flags = {"latents": "--latents", "autoencoder": "--autoencoder-dir"}
    return " ".join(f"{flag} {input[name]}" for name, flag in flags.items() if name in input.keys())


def autoencoder_dataset(wildcards):
    return f"data/prepared/{PARAMS['autoencoders'][wildcards.autoencoder]['dataset']}"


def reference_stats(wildcards):
    exp = experiment(wildcards)
    ev = exp["evaluation"]
    return f"results/fid_refs/{exp['dataset']}-{ev['reference_split']}{ev['reference_images']}.npz"


def fid_floor(wildcards):
    exp = experiment(wildcards)
    ev = exp["evaluation"]
    ref = f"{ev['reference_split']}{ev['reference_images']}"
    return (
        f"metrics/fid_floors/{exp['dataset']}-{ref}-{ev['floor_split']}{exp['sampling']['num_samples']}.json"
    )


def all_targets(experiments=None):
    experiments = experiments or PARAMS["targets"]
    return [
        "paper_tables/results.md",
        "paper_tables/results.tex",
        *[f"paper_tables/figures/{name}_samples.png" for name in experiments],
        *[f"metrics/{name}/loss.csv" for name in experiments],
    ]


def target_metrics(wildcards):
    return [f"metrics/{name}/fid.json" for name in PARAMS["targets"]]


def sync_dvc_lock():
    """After Snakemake ran jobs, record the new outputs in dvc.lock so `dvc status` agrees (one DAG, two engines)."""
    if os.environ.get("UVIT_SKIP_DVC_COMMIT") or not os.path.isdir(".dvc"):
        return
    lock_time = os.path.getmtime("dvc.lock") if os.path.exists("dvc.lock") else 0.0
    newest = max(
        (os.path.getmtime(p) for p in target_metrics(None) + all_targets() if os.path.exists(p)), default=0.0
    )
    if newest > lock_time:
        subprocess.run(["dvc", "commit", "--force", "--quiet", "--no-relink"], check=False)
