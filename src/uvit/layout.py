"""Where every file of the pipeline lives: the one owner of each path (torch-free, imports nothing of uvit).

Each function builds one path from names. The names may be concrete (`checkpoint("fmnist_latent")`) or
placeholders, so the same function gives the Snakemake rule its pattern (`checkpoint("{experiment}")`) and the
DVC template its entry (`checkpoint("${key}")`): a path is written once, here.

    data/prepared/<dataset>                 prepared splits (shards + manifest)
    data/text/<dataset>/<split>             encoded captions
    data/latents/<autoencoder>              encoded latents
    data/external/...                       imported: autoencoders, reference statistics, released weights
    results/<experiment>/...                a training run: weights, snapshots, checkpoints, samples
    results/{autoencoders,classifiers,fid_refs}/...
    metrics/<experiment>/...                records with provenance (+ .scores.json, the numbers alone)
    metrics/{autoencoders,classifiers,fid_floors}/...
    settings/<rule>/<key>.json              each DVC stage's resolved settings
    paper_tables/, paper_tables/figures/    tables and figures
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = "metrics"
PAPER_TABLES = "paper_tables"
FIGURES_DIR = f"{PAPER_TABLES}/figures"
SETTINGS_DIR = "settings"


# --- data -------------------------------------------------------------------------------------------------
def prepared(dataset: str) -> str:
    return f"data/prepared/{dataset}"


def prepared_split(dataset: str, split: str) -> str:
    return f"{prepared(dataset)}/{split}"


def text(dataset: str, split: str) -> str:
    return f"data/text/{dataset}/{split}"


def latents(autoencoder: str) -> str:
    return f"data/latents/{autoencoder}"


def imported_autoencoder(autoencoder: str) -> str:
    return f"data/external/autoencoders/{autoencoder}"


def imported_reference(ref: str) -> str:
    return f"data/external/fid_refs/{ref}.npz"


def released_weights(experiment: str) -> str:
    return f"data/external/weights/{experiment}.pth"


# --- trained and computed -----------------------------------------------------------------------------------
def trained_autoencoder(autoencoder: str) -> str:
    return f"results/autoencoders/{autoencoder}"


def computed_reference(dataset: str, ref: str) -> str:
    return f"results/fid_refs/{dataset}-{ref}.npz"


def classifier_weights(classifier: str) -> str:
    return f"results/classifiers/{classifier}.pth"


# A training run's folder (`uvit train --out`), in the authors' layout; uvit.training writes these names.
EMA_WEIGHTS = "nnet_ema.pth"  # what sampling and FID use
WEIGHTS = "nnet.pth"
SNAPSHOTS = "snapshots"  # the EMA weights at each of training.keep_steps
CHECKPOINTS = "checkpoints"  # resumable training state, kept across runs
PROGRESS = "progress"  # sample grids drawn during training
LOSS_LOG = "loss.jsonl"


def snapshot_name(step: int) -> str:
    return f"nnet_ema-{int(step):07d}.pth"


def run_dir(experiment: str) -> str:
    return f"results/{experiment}"


def checkpoint(experiment: str) -> str:
    return f"{run_dir(experiment)}/{EMA_WEIGHTS}"


def raw_weights(experiment: str) -> str:
    return f"{run_dir(experiment)}/{WEIGHTS}"


def snapshots(experiment: str) -> str:
    return f"{run_dir(experiment)}/{SNAPSHOTS}"


def snapshot(experiment: str, step: int) -> str:
    return f"{snapshots(experiment)}/{snapshot_name(step)}"


def loss_log(experiment: str) -> str:
    return f"{run_dir(experiment)}/{LOSS_LOG}"


def checkpoints(experiment: str) -> str:
    return f"{run_dir(experiment)}/{CHECKPOINTS}"


def samples(experiment: str) -> str:
    return f"{run_dir(experiment)}/samples"


def curve_samples(experiment: str, step, sampler_steps) -> str:
    return f"{run_dir(experiment)}/curve/step{step}-sampler_steps{sampler_steps}"


def guidance_samples(experiment: str, scale: str) -> str:
    return f"{run_dir(experiment)}/guidance/scale{scale}"


def released_samples(experiment: str) -> str:
    return f"{run_dir(experiment)}/pretrained_samples"


def autoencoder_dir(autoencoder: str, cfg: dict) -> str:
    """An autoencoder as imported (`pretrained`: a diffusers folder), or the folder the pipeline trains."""
    return imported_autoencoder(autoencoder) if "pretrained" in cfg else trained_autoencoder(autoencoder)


# --- an experiment's evaluation files, from its resolved settings ---------------------------------------------
def reference_name(ev: dict) -> str:
    """How a reference is named in paths: a given .npz by its stem, a computed one by split and count."""
    if ev["reference_npz"]:
        return Path(ev["reference_npz"]).stem
    return f"{ev['reference_split']}{ev['reference_images']}"


def reference(exp: dict) -> str:
    """The experiment's FID reference statistics: a given .npz as imported, or the ones computed once per dataset."""
    name = reference_name(exp["evaluation"])
    return (
        imported_reference(name)
        if exp["evaluation"]["reference_npz"]
        else computed_reference(exp["dataset"], name)
    )


def floor(exp: dict) -> str:
    """The experiment's FID floor: as many held-out real images as it draws samples, against its reference."""
    ev = exp["evaluation"]
    held_out = f"{ev['floor_split']}{exp['sampling']['num_samples']}"
    return floor_metrics(exp["dataset"], reference_name(ev), held_out)


# --- metrics ----------------------------------------------------------------------------------------------
def train_metrics(experiment: str) -> str:
    return f"{METRICS_DIR}/{experiment}/train.json"


def loss_csv(experiment: str) -> str:
    return f"{METRICS_DIR}/{experiment}/loss.csv"


def fid_metrics(experiment: str) -> str:
    return f"{METRICS_DIR}/{experiment}/fid.json"


def curve_metrics(experiment: str, step, sampler_steps) -> str:
    return f"{METRICS_DIR}/{experiment}/curve/step{step}-sampler_steps{sampler_steps}.json"


def guidance_metrics(experiment: str, scale: str, kind: str = "fid") -> str:
    """The FID (kind "fid") or classifier-accuracy (kind "accuracy") record of a guidance point."""
    suffix = ".accuracy" if kind == "accuracy" else ""
    return f"{METRICS_DIR}/{experiment}/guidance/scale{scale}{suffix}.json"


def released_fid_metrics(experiment: str) -> str:
    return f"{METRICS_DIR}/{experiment}/pretrained_fid.json"


def accuracy_metrics(experiment: str) -> str:
    return f"{METRICS_DIR}/{experiment}/accuracy.json"


def floor_metrics(dataset: str, ref: str, floor: str) -> str:
    """The FID of `floor` (split + count) held-out real images against reference `ref` of a dataset."""
    return f"{METRICS_DIR}/fid_floors/{dataset}-{ref}-{floor}.json"


def autoencoder_metrics(autoencoder: str) -> str:
    return f"{METRICS_DIR}/autoencoders/{autoencoder}.json"


def classifier_metrics(classifier: str) -> str:
    return f"{METRICS_DIR}/classifiers/{classifier}.json"


def scores(record: str | Path) -> str:
    """The numbers of a metrics record alone (DVC metrics): metrics/x/fid.json -> metrics/x/fid.scores.json."""
    path = Path(record)
    return str(path.with_name(f"{path.stem}.scores.json"))


# --- settings and report ----------------------------------------------------------------------------------
def settings_record(rule: str, key: str | None = None) -> str:
    """A DVC stage's resolved settings: settings/<rule>/<key>.json, or settings/<rule>.json for a single stage."""
    return f"{SETTINGS_DIR}/{rule}.json" if key is None else f"{SETTINGS_DIR}/{rule}/{key}.json"


# The figures of `uvit figures`; an FID curve's figure by the quantity on its x axis.
CURVE_FIGURES = {"training_steps": "fid_over_training", "sampler_steps": "fid_over_sampler_steps"}
FIGURES = ["loss_curves", *CURVE_FIGURES.values()]


def ablation_figure(grid: str) -> str:
    return f"ablation_{grid}"


def table(name: str, ext: str) -> str:
    return f"{PAPER_TABLES}/{name}.{ext}"


def figure_stem(name: str) -> str:
    """A figure without its extension (`uvit figures` and `uvit sample-grid` write .png and .pdf)."""
    return f"{FIGURES_DIR}/{name}"


def figure(name: str, ext: str) -> str:
    return f"{figure_stem(name)}.{ext}"


def sample_grid_name(experiment: str) -> str:
    return f"{experiment}_samples"


def curve_data_dir(figure_name: str) -> str:
    """The folder of CSVs behind an FID curve figure (one per experiment)."""
    return f"{FIGURES_DIR}/{figure_name}"


def curve_data(x_key: str, experiment: str) -> str:
    return f"{curve_data_dir(CURVE_FIGURES[x_key])}/{experiment}.csv"
