# Shared helpers: the validated params, experiment resolution and per-stage settings (no lambdas in rules).
import json
import os
import subprocess
import sys

from uvit.config import ConfigError, fid_metrics_paths, load_params, resolve_experiment, stage_settings

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


def latent_inputs(wildcards):
    """Inputs a latent experiment adds: its encoded latents and the autoencoder that decodes samples."""
    exp = experiment(wildcards)
    if exp["space"] != "latent":
        return {}
    return {
        "latents": f"data/latents/{exp['autoencoder']}",
        "autoencoder": f"results/autoencoders/{exp['autoencoder']}",
    }


def latent_args(wildcards, input):
    """Command-line flags for the latent inputs present."""
    flags = {"latents": "--latents", "autoencoder": "--autoencoder-dir"}
    return " ".join(f"{flag} {input[name]}" for name, flag in flags.items() if name in input.keys())


def autoencoder_dataset(wildcards):
    return f"data/prepared/{PARAMS['autoencoders'][wildcards.autoencoder]['dataset']}"


def reference_name(ev):
    """How a reference is named in paths: a given .npz by its stem, a computed one by split and count."""
    if ev["reference_npz"]:
        return os.path.splitext(os.path.basename(ev["reference_npz"]))[0]
    return f"{ev['reference_split']}{ev['reference_images']}"


def reference_stats(wildcards):
    """The experiment's reference statistics: the given .npz, or the ones the pipeline computes (once)."""
    exp = experiment(wildcards)
    ev = exp["evaluation"]
    return ev["reference_npz"] or f"results/fid_refs/{exp['dataset']}-{reference_name(ev)}.npz"


def floor_reference(wildcards):
    """The reference file behind a floor's {ref} name (a given .npz of some experiment, else a computed one)."""
    for name in EXPERIMENTS:
        ev = PARAMS["experiments"][name].get("evaluation", {})
        if ev.get("reference_npz") and reference_name(ev) == wildcards.ref:
            return ev["reference_npz"]
    return f"results/fid_refs/{wildcards.dataset}-{wildcards.ref}.npz"


def fid_floor(wildcards):
    exp = experiment(wildcards)
    ev = exp["evaluation"]
    floor = f"{ev['floor_split']}{exp['sampling']['num_samples']}"
    return f"metrics/fid_floors/{exp['dataset']}-{reference_name(ev)}-{floor}.json"


def curve_model(wildcards):
    """The weights a curve point samples from: a snapshot of a kept checkpoint, or the final EMA weights."""
    if int(wildcards.step) == experiment(wildcards)["training"]["steps"]:
        return f"results/{wildcards.experiment}/nnet_ema.pth"
    return f"results/{wildcards.experiment}/snapshots/nnet_ema-{int(wildcards.step):07d}.pth"


def curve_model_input(wildcards):
    """The declared output behind curve_model (snapshots/ is one directory output of training)."""
    if int(wildcards.step) == experiment(wildcards)["training"]["steps"]:
        return curve_model(wildcards)
    return f"results/{wildcards.experiment}/snapshots"


TABLES = ["results", "training_steps", "sampler_steps"]
FIGURES = ["loss_curves", "fid_over_training", "fid_over_sampler_steps"]


def all_targets(experiments=None):
    experiments = experiments or PARAMS["targets"]
    return [
        *[f"paper_tables/{table}.{ext}" for table in TABLES for ext in ("md", "tex")],
        *[f"paper_tables/figures/{name}.{ext}" for name in FIGURES for ext in ("png", "pdf")],
        *[f"paper_tables/figures/{name}_samples.{ext}" for name in experiments for ext in ("png", "pdf")],
        *[f"metrics/{name}/loss.csv" for name in experiments],
    ]


def target_metrics(wildcards):
    return [path for name in PARAMS["targets"] for path in fid_metrics_paths(PARAMS, name)]


def target_loss_curves(wildcards):
    return [f"metrics/{name}/loss.csv" for name in PARAMS["targets"]]


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
