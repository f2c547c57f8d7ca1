# Shared helpers: the validated params, experiment resolution and per-stage settings (no lambdas in rules).
# Every path comes from uvit.layout (also the DVC export's), a rule's pattern from the same function as a file's.
import json
import os
import subprocess
import sys
import time

from uvit import layout
from uvit.config import (
    ConfigError,
    caption_split,
    encode_flags,
    evaluation_point,
    fid_metrics_paths,
    load_params,
    metrics_paths,
    resolve_experiment,
    text_tokens,
    tier_targets,
)
from uvit.plan import estimate
from uvit.tables import table_names
from uvit.stages import Lineage, autoencoder_reference, given_reference, reference_protocol

try:
    PARAMS = load_params("params.yaml")
    # make demo: --config tier=quick; the tables and figures also show the rest where present and current
    TIER = config.get("tier", "full")
    TIER_TARGETS = tier_targets(PARAMS, TIER)
except ConfigError as err:
    sys.exit(f"error: {err}")

EXPERIMENTS = sorted(PARAMS["experiments"])
DATASETS = sorted(PARAMS["datasets"])
AUTOENCODERS = sorted(PARAMS["autoencoders"])
PRETRAINED_AUTOENCODERS = [name for name in AUTOENCODERS if "pretrained" in PARAMS["autoencoders"][name]]
TRAINED_AUTOENCODERS = sorted(set(AUTOENCODERS) - set(PRETRAINED_AUTOENCODERS))
CLASSIFIERS = sorted(PARAMS["classifiers"])


LINEAGE = Lineage(PARAMS)
RUN_STARTED = time.time()  # outputs written after this were made by this run (uvit.dvclock)
# Threads of the jobs that belong to no experiment (data preparation, encoding, reference statistics); capped
# at --cores locally, asked of SLURM as --cpus-per-task.
DEFAULT_CPUS = PARAMS["defaults"]["resources"]["cpus"]


def lineage(rule):
    """A job's lineage hash as a param: its settings and code and those of every job upstream of it change it,
    so a changed setting or source file reruns the whole chain below it, even where intermediates are gone."""

    def param(wildcards):
        return LINEAGE(rule, **dict(wildcards.items()))

    return param


def experiment(wildcards):
    return resolve_experiment(PARAMS, wildcards.experiment)


def settings(rule):
    """A job's complete settings (defaults and zoo merged: uvit.stages.Lineage.settings) as a param; DVC's stage
    depends on the same record, written to settings/<stage>.json by `uvit settings`."""

    def param(wildcards):
        return json.dumps(LINEAGE.settings(rule, **dict(wildcards.items())), sort_keys=True)

    return param


def prepared(wildcards):
    return layout.prepared(experiment(wildcards)["dataset"])


def latent_inputs(wildcards):
    """Inputs a latent experiment adds: its encoded latents and the autoencoder that decodes samples."""
    exp = experiment(wildcards)
    if exp["space"] != "latent":
        return {}
    return {
        "latents": layout.latents(exp["autoencoder"]),
        "autoencoder": autoencoder_path(exp["autoencoder"]),
    }


def autoencoder_path(name):
    return layout.autoencoder_dir(name, PARAMS["autoencoders"][name])


def encoder_input(wildcards):
    return autoencoder_path(wildcards.autoencoder)


def pretrained_autoencoder_source(wildcards):
    return PARAMS["autoencoders"][wildcards.autoencoder]["pretrained"]


def decoder_inputs(wildcards):
    """Evaluation only: a latent experiment needs its autoencoder to decode, not the encoded dataset."""
    exp = experiment(wildcards)
    return {"autoencoder": autoencoder_path(exp["autoencoder"])} if exp["space"] == "latent" else {}


def needs_dataset(exp):
    """Released weights are evaluated without preparing the dataset when the reference statistics are given
    (no floor then: it needs held-out real images) and no captions are needed."""
    return not exp["evaluation"]["reference_npz"] or exp["condition"] == "text"


def pretrained_inputs(wildcards):
    """The prepared dataset and the floor, where evaluating released weights needs them."""
    exp = experiment(wildcards)
    return {"data": prepared(wildcards), "floor": fid_floor(wildcards)} if needs_dataset(exp) else {}


def optional_flags(wildcards, input):
    """--data and --floor for the inputs a job has (evaluation-only jobs may have neither)."""
    return " ".join(f"--{name} {input[name]}" for name in ("data", "floor") if name in input.keys())


def pretrained_weights_source(wildcards):
    path = experiment(wildcards)["evaluation"]["pretrained_weights"]
    if not path:
        raise ValueError(
            f"params.yaml: experiments.{wildcards.experiment}.evaluation.pretrained_weights: not set; give the path "
            "of the authors' nnet_ema.pth for this row"
        )
    return path


def encode_latents_flags(wildcards):
    return encode_flags(PARAMS["autoencoders"][wildcards.autoencoder])


def text_inputs(stage):
    """A text experiment's encoded captions: the training split's (train), the held-out split's (sample)."""

    def inputs(wildcards):
        exp = experiment(wildcards)
        if exp["condition"] != "text":
            return {}
        split = "train" if stage == "train" else caption_split(exp)
        return {"text": layout.text(exp["dataset"], split)}

    return inputs


def text_encoder_args(wildcards):
    cfg = PARAMS["datasets"][wildcards.dataset]
    return f"--encoder {cfg['text_encoder']} --tokens {text_tokens(cfg)}"


def latent_args(wildcards, input):
    """Command-line flags for the latent and text inputs present."""
    flags = {"latents": "--latents", "autoencoder": "--autoencoder-dir", "text": "--text"}
    return " ".join(f"{flag} {input[name]}" for name, flag in flags.items() if name in input.keys())


def autoencoder_dataset(wildcards):
    return layout.prepared(PARAMS["autoencoders"][wildcards.autoencoder]["dataset"])


def reference_stats(wildcards):
    """The experiment's reference statistics: a given .npz as imported, or the ones the pipeline computes once."""
    return layout.reference(experiment(wildcards))


def autoencoder_reference_input(wildcards):
    """A trained autoencoder's held-out reconstructions are scored against its experiment's FID reference."""
    scored_by = autoencoder_reference(PARAMS, wildcards.autoencoder)
    return {} if scored_by is None else {"reference": layout.reference(scored_by)}


def autoencoder_reference_flag(wildcards, input):
    return f"--reference {input.reference}" if "reference" in input.keys() else ""


def stats_protocol(wildcards):
    """The fid_protocol a reference is computed or imported with: that of the experiments scored against it."""
    ref = getattr(wildcards, "ref", None) or f"{wildcards.split}{wildcards.n}"
    return reference_protocol(PARAMS, ref, getattr(wildcards, "dataset", None))


def given_reference_source(wildcards):
    path = given_reference(PARAMS, wildcards.ref)
    if path is None:
        raise ValueError(f"no experiment gives evaluation.reference_npz named {wildcards.ref}.npz")
    return path


def floor_reference(wildcards):
    """The reference file behind a floor's {ref} name: an imported .npz, else a computed one."""
    if given_reference(PARAMS, wildcards.ref):
        return layout.imported_reference(wildcards.ref)
    return layout.computed_reference(wildcards.dataset, wildcards.ref)


def fid_floor(wildcards):
    return layout.floor(experiment(wildcards))


# Cluster resources of an experiment's GPU jobs (params.yaml `resources`), as the SLURM executor plugin reads
# them: gpu and gpu_model -> --gpus=model:N, mem_mb -> --mem, runtime (minutes) -> -t, cpus_per_task.
def gpu_count(wildcards):
    return experiment(wildcards)["resources"]["gpus"]


def fid_gpus(wildcards):
    """FID runs in one process: one GPU when the experiment has any."""
    return min(gpu_count(wildcards), 1)


def gpu_model(wildcards):
    return experiment(wildcards)["resources"]["gpu_model"] or ""


def mem_mb(wildcards):
    return experiment(wildcards)["resources"]["mem_gb"] * 1024


def runtime_minutes(wildcards):
    return int(experiment(wildcards)["resources"]["hours"] * 60)


def cpus_per_task(wildcards):
    return experiment(wildcards)["resources"]["cpus"]


def estimated_gpu_hours(wildcards):
    """Shown by a dry run (-n) beside the job: A100-hours to train, estimated by uvit.plan."""
    return round(estimate(PARAMS, wildcards.experiment)["train_a100_hours"])


def sampling_protocol(label=""):
    """What a sampling job draws, as a dry run shows it: the experiment (with `label`), its point, the protocol."""

    def protocol(wildcards):
        step, steps, scale = (getattr(wildcards, key, None) for key in ("step", "sampler_steps", "scale"))
        point = f", step {step}" if step is not None else ""
        exp = evaluation_point(
            experiment(wildcards), sampler_steps=steps and int(steps), guidance_scale=scale and float(scale)
        )
        cfg = exp["sampling"]
        return (
            f"{wildcards.experiment}{label}{point}: {cfg['sampler']}, {cfg['steps']} steps, guidance "
            f"{cfg['guidance_scale']}, {cfg['num_samples']} samples"
        )

    return protocol


def pinned(gpus, wildcards):
    """Launch through uvit.devices when a job needs GPUs: it claims its own devices of the machine."""
    key = f"experiments.{wildcards.experiment}.resources.gpus"
    return f"python -m uvit.devices {gpus} --key {key} -- " if gpus else ""


def launcher(wildcards):
    """`uvit`, or torchrun with one process per GPU of the node when the experiment asks for several."""
    gpus = gpu_count(wildcards)
    run = f"torchrun --standalone --nproc_per_node {gpus} -m uvit.cli" if gpus > 1 else "uvit"
    return pinned(gpus, wildcards) + run


def fid_launcher(wildcards):
    return pinned(fid_gpus(wildcards), wildcards) + "uvit"


def classifier_dataset(wildcards):
    return layout.prepared(PARAMS["classifiers"][wildcards.classifier]["dataset"])


def classifier_inputs(wildcards):
    """The classifier an experiment's samples are scored with: its weights and its metrics (held-out accuracy)."""
    name = experiment(wildcards)["evaluation"]["classifier"]
    if name is None:
        raise ValueError(
            f"params.yaml: experiments.{wildcards.experiment}.evaluation.classifier: not set; name a classifier "
            "from `classifiers` to score this class experiment's samples"
        )
    return {
        "classifier": layout.classifier_weights(name),
        "classifier_metrics": layout.classifier_metrics(name),
    }


def final_step(wildcards) -> bool:
    """Whether a point samples the final weights: a curve point at the last step, or any guidance point."""
    step = getattr(wildcards, "step", None)
    return step is None or int(step) == experiment(wildcards)["training"]["steps"]


def curve_model(wildcards):
    """The weights a curve point samples from: a snapshot of a kept checkpoint, or the final EMA weights."""
    if final_step(wildcards):
        return layout.checkpoint(wildcards.experiment)
    return layout.snapshot(wildcards.experiment, int(wildcards.step))


def weights_output_flag(wildcards, input):
    """The pipeline output that holds the sampled weights (snapshots/ for a kept checkpoint), for provenance."""
    return f" --weights-output {input.model}"


def curve_model_input(wildcards):
    """The declared output behind curve_model (snapshots/ is one directory output of training)."""
    if final_step(wildcards):
        return curve_model(wildcards)
    return layout.snapshots(wildcards.experiment)


TABLES = table_names(PARAMS)
ABLATION_FIGURES = [layout.ablation_figure(grid) for grid in PARAMS["target_grids"]]


FIGURE_CATEGORIES = {
    "loss_curves": "Training",
    "fid_over_training": "FID curves",
    "fid_over_sampler_steps": "FID curves",
}


def figure_outputs():
    """Each figure's PNG (in the Snakemake report, captioned by workflow/report/<figure>.rst) and PDF, each
    ablation grid's, and the folders of CSVs behind the FID curves (dvc.yaml's top-level plots)."""
    outputs = {}
    for name in layout.FIGURES + ABLATION_FIGURES:
        caption, category = (
            (name, FIGURE_CATEGORIES[name]) if name in layout.FIGURES else ("ablation", "Ablations")
        )
        outputs[name] = report(
            layout.figure(name, "png"), caption=f"../report/{caption}.rst", category=category
        )
        outputs[f"{name}_pdf"] = layout.figure(name, "pdf")
    for name in layout.CURVE_FIGURES.values():
        outputs[f"{name}_data"] = directory(layout.curve_data_dir(name))
    return outputs


def output_folder(wildcards, output):
    """The folder of a rule's first output (the --out-dir of tables and figures)."""
    return os.path.dirname(output[0])


def table_outputs():
    """Each table's Markdown (in the Snakemake report, captioned by workflow/report/<table>.rst) and LaTeX."""
    outputs = {}
    for name in TABLES:
        category = "Ablations" if name == "ablations" else "Tables"
        outputs[name] = report(layout.table(name, "md"), caption=f"../report/{name}.rst", category=category)
        outputs[f"{name}_tex"] = layout.table(name, "tex")
    return outputs


def all_targets(experiments=None):
    """The tables, the sample grids and loss curves of the experiments, and the FID-curve and ablation figures
    (the full tier only: the quick tier's experiment has no FID curves to draw)."""
    experiments = experiments or TIER_TARGETS
    figures = layout.FIGURES + ABLATION_FIGURES if TIER == "full" else []
    figures += [layout.sample_grid_name(name) for name in experiments]
    return [
        *[layout.table(name, ext) for name in TABLES for ext in ("md", "tex")],
        *[layout.figure(name, ext) for name in figures for ext in ("png", "pdf")],
        *[layout.loss_csv(name) for name in experiments],
    ]


def target_metrics(wildcards):
    """The tier's FID records (the figures' input)."""
    return [path for name in TIER_TARGETS for path in fid_metrics_paths(PARAMS, name)]


def table_metrics(wildcards):
    """The tables' input: the tier's FID and classifier-accuracy records."""
    return list(dict.fromkeys(path for name in TIER_TARGETS for path in metrics_paths(PARAMS, name)))


def target_loss_curves(wildcards):
    return [layout.loss_csv(name) for name in TIER_TARGETS]


def sync_dvc_lock():
    """After Snakemake ran jobs, record in dvc.lock the DVC stages this run made, and only those (uvit.dvclock):
    an output changed by hand stays unrecorded, so `dvc status` and `uvit verify` name it."""
    if os.environ.get("UVIT_SKIP_DVC_COMMIT") or not os.path.isdir(".dvc"):
        return
    # the outputs of every job of this run's DAG: Snakemake found those it did not run up to date (uvit.dvclock
    # records what a killed earlier run made for them)
    outputs = sorted({path for job in workflow.dag.jobs for path in job.output})
    subprocess.run(
        [sys.executable, "-m", "uvit.dvclock", "--since", str(RUN_STARTED), "--dag-outputs"],
        input="\n".join(outputs),
        text=True,
        check=False,
    )
