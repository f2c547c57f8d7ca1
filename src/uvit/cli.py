"""`uvit`: one command with a subcommand per pipeline stage. The Snakefile's rules call these.

Every subcommand reads its settings from params.yaml (validated first; `--params` to point elsewhere) and its
inputs and outputs from the command line, so the DAG decides paths and params.yaml decides settings.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from uvit import layout
from uvit.config import (
    load_params,
    resolve_experiment,
    settings_hash,
    stage_settings,
)
from uvit.errors import UserError
from uvit.zoo import CONTEXT_TOKENS


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def named(params: dict, section: str, name: str) -> dict:
    """params[section][name], or a UserError listing the names there are."""
    if name not in params[section]:
        raise UserError(f"{section}.{name}: not in params.yaml; use one of: {', '.join(params[section])}")
    return params[section][name]


def check_data(params: dict, dataset: str, data_dir: str) -> None:
    """Refuse a prepared folder made from another dataset than the one the experiment names."""
    from uvit.shards import check_prepared

    check_prepared(Path(data_dir) / "train", dataset, params["datasets"][dataset])


# glibc's mallopt parameters (malloc.h): freed memory stays in the heap, blocks up to 32 MB (glibc's ceiling) come
# from it, and the heap's top is never given back.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> None:
    """By default glibc returns each freed block over 128 KB to the OS, and the next allocation faults it back in,
    page by page, zeroed: with PyTorch's CPU activations that was most of a stage's system time (sampling 1,000
    demo images: 7.0 s of 53.6 s CPU, 3.0 M page faults; kept in the heap, 0.7 s and 0.14 M, 11% less wall time,
    the same images). Without glibc (macOS, musl) nothing changes."""
    import ctypes

    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, 32 << 20)
        mallopt(M_TRIM_THRESHOLD, 1 << 30)


def set_threads(threads: int | None) -> None:
    if threads:  # torch only when asked: `uvit settings`, `uvit verify` and `uvit tables` start without it
        import torch

        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------------


def cmd_prepare_data(args, params: dict) -> None:
    from uvit.data import prepare_dataset

    named(params, "datasets", args.dataset)
    manifests = prepare_dataset(params["datasets"][args.dataset], args.out)
    for split, manifest in manifests.items():
        log(f"{args.dataset}/{split}: {manifest['count']} images of shape {manifest['shape']}")


def cmd_train_autoencoder(args, params: dict) -> None:
    from uvit.autoencoder import train_autoencoder
    from uvit.provenance import record, write_json

    cfg = named(params, "autoencoders", args.autoencoder)
    check_data(params, cfg["dataset"], args.data)
    reference = Path(args.reference) if args.reference else None
    metrics = train_autoencoder(cfg, Path(args.data), Path(args.out), log=log, reference=reference)
    inputs = {"dataset": args.data, **({"reference": args.reference} if reference else {})}
    provenance = record(cfg, inputs, settings_hash(cfg))
    write_json(args.metrics, {"autoencoder": args.autoencoder, **metrics, "provenance": provenance})


def cmd_train_classifier(args, params: dict) -> None:
    from uvit.classifier import train_classifier
    from uvit.provenance import record, write_json

    cfg = named(params, "classifiers", args.classifier)
    check_data(params, cfg["dataset"], args.data)
    metrics = train_classifier(cfg, Path(args.data), Path(args.out), log=log)
    provenance = record(cfg, {"dataset": args.data}, settings_hash(cfg))
    provenance["outputs"] = {"classifier": args.out}
    write_json(
        args.metrics,
        {"classifier": args.classifier, "dataset": cfg["dataset"], **metrics, "provenance": provenance},
    )


def cmd_encode_latents(args, params: dict) -> None:
    from uvit.autoencoder import encode_dataset

    manifest = encode_dataset(
        Path(args.autoencoder_dir),
        Path(args.data),
        Path(args.out),
        scale_factor=args.scale_factor,
        flips=not args.no_flips,
        log=log,
    )
    log(
        f"encoded {manifest['count']} images, moments {manifest['moments_shape']}, scale {manifest['scale_factor']:.5f}"
    )


def cmd_encode_text(args, params: dict) -> None:
    from uvit.text import encode_caption_dataset, minilm_path

    encoder = Path(args.encoder) if args.encoder != "minilm" else minilm_path()
    manifest = encode_caption_dataset(Path(args.data), encoder, Path(args.out), tokens=args.tokens, log=log)
    log(
        f"encoded {manifest['captions']} captions of {manifest['images']} images: {manifest['context_shape']}"
    )


def cmd_samples_npz(args, params: dict) -> None:
    from uvit.sampling import export_npz

    log(
        f"wrote {export_npz(Path(args.samples), Path(args.out))} samples to {args.out} (arr_0: N x H x W x 3 uint8)"
    )


def cmd_train(args, params: dict) -> None:
    from uvit.devices import placement
    from uvit.provenance import record, write_json
    from uvit.training import train, write_loss_csv

    exp = resolve_experiment(params, args.experiment)
    check_data(params, exp["dataset"], args.data)
    if exp["space"] == "latent" and not args.latents:
        raise UserError(
            f"experiments.{exp['name']}: a latent experiment trains on encoded latents; give --latents"
        )
    latents = Path(args.latents) if args.latents else None
    text = Path(args.text) if args.text else None
    preview = None
    if exp["training"]["sample_every"]:
        from uvit.previews import training_previews

        ae_dir = Path(args.autoencoder_dir) if args.autoencoder_dir else None
        preview = training_previews(exp, Path(args.data), Path(args.out), ae_dir, latents, text)
    metrics = train(
        exp, Path(args.data), Path(args.out), latent_dir=latents, log=log, preview=preview, text_dir=text
    )
    settings = stage_settings(exp, "train")
    inputs = {"dataset": args.data, **({"latents": args.latents} if latents else {})}
    provenance = record(settings, inputs, settings_hash(settings))
    provenance["outputs"] = {"checkpoint": str(Path(args.out) / layout.EMA_WEIGHTS)}
    if placement()[0] == 0:  # under torchrun, one process writes the metrics
        write_json(args.metrics, {"experiment": args.experiment, **metrics, "provenance": provenance})
        if args.loss_plot:
            write_loss_csv(Path(args.out) / layout.LOSS_LOG, Path(args.loss_plot))


def cmd_sample(args, params: dict) -> None:
    from uvit.config import evaluation_point
    from uvit.sampling import sample_experiment, weights_geometry

    exp = evaluation_point(resolve_experiment(params, args.experiment), guidance_scale=args.guidance_scale)
    if args.data:
        check_data(params, exp["dataset"], args.data)
    elif exp["condition"] == "text":
        raise UserError(
            f"{args.experiment}: a text experiment samples for its prepared captions; give --data"
        )
    if exp["space"] == "latent" and not args.autoencoder_dir:
        ae = exp["autoencoder"]
        raise UserError(
            f"experiments.{exp['name']}: a latent experiment decodes its samples with its autoencoder; give "
            f"--autoencoder-dir ({layout.autoencoder_dir(ae, named(params, 'autoencoders', ae))})"
        )
    geometry = None
    if exp["space"] == "latent" and not args.latents:
        geometry = tuple(exp["derived"]["latent_shape"]), exp["derived"]["latent_scale_factor"]
        if geometry[1] is None:
            raise UserError(
                f"autoencoders.{exp['autoencoder']}: measures its latent scale (no scale_factor); give --latents"
            )
    weights = None if args.data else weights_geometry(params, exp, Path(args.model))
    sample_experiment(
        exp,
        Path(args.model),
        Path(args.data) if args.data else None,
        Path(args.out),
        ae_dir=Path(args.autoencoder_dir) if args.autoencoder_dir else None,
        latent_dir=Path(args.latents) if args.latents else None,
        steps=args.sampler_steps,
        latent_geometry=geometry,
        text_dir=Path(args.text) if args.text else None,
        log=log,
        weights_geometry=weights,
    )


def cmd_import(args, params: dict) -> None:
    """Check a file given from outside the pipeline and store it as a pipeline artifact (hashed by DVC)."""
    from uvit.external import import_external

    import_external(
        args.kind, Path(args.source), Path(args.out), params, args.key, args.protocol, args.experiment
    )
    log(f"imported {args.kind} {args.source} -> {args.out}")


def cmd_reference_stats(args, params: dict) -> None:
    from uvit.evaluation import reference_statistics

    reference_statistics(
        Path(args.data),
        args.split,
        args.count,
        Path(args.out),
        precision=args.precision,
        protocol_name=args.protocol,
        log=log,
    )


def cmd_fid_floor(args, params: dict) -> None:
    from uvit.evaluation import fid_floor

    fid_floor(
        Path(args.data),
        args.split,
        args.count,
        Path(args.reference),
        Path(args.out),
        precision=args.precision,
        log=log,
    )


def cmd_fid(args, params: dict) -> None:
    from uvit.config import evaluation_point
    from uvit.evaluation import fid_of_samples
    from uvit.provenance import scores, write_json

    exp = evaluation_point(
        resolve_experiment(params, args.experiment),
        args.training_step,
        args.sampler_steps,
        args.guidance_scale,
    )
    if not args.floor and not args.pretrained:
        raise UserError(
            "uvit fid: --floor is needed for the pipeline's own weights (only --pretrained may omit it)"
        )
    inputs = {
        **({"dataset": args.data} if args.data else {}),
        "checkpoint": args.checkpoint,
        "samples": args.samples,
        "reference": args.reference,
    }
    if args.weights_output and Path(args.weights_output) != Path(args.checkpoint):
        inputs["weights_output"] = args.weights_output  # the DVC output the checkpoint file lies in
    floor = Path(args.floor) if args.floor else None
    metrics = fid_of_samples(exp, inputs, floor, Path(args.metrics), pretrained=args.pretrained, log=log)
    write_json(layout.scores(args.metrics), scores(metrics))


def cmd_accuracy(args, params: dict) -> None:
    """The share of an experiment's samples its classifier labels as the class each was drawn for."""
    from uvit.classifier import accuracy_of_samples
    from uvit.config import evaluation_point
    from uvit.provenance import scores, write_json

    exp = evaluation_point(resolve_experiment(params, args.experiment), guidance_scale=args.guidance_scale)
    if exp["evaluation"]["classifier"] is None:
        raise UserError(
            f"experiments.{args.experiment}.evaluation.classifier: not set; name a classifier from `classifiers` "
            "(class experiments only)"
        )
    check_data(params, exp["dataset"], args.data)
    inputs = {
        "dataset": args.data,
        "samples": args.samples,
        "classifier": args.classifier,
        "classifier_metrics": args.classifier_metrics,
    }
    metrics = accuracy_of_samples(params, exp, inputs, Path(args.metrics), log=log)
    write_json(layout.scores(args.metrics), scores(metrics))


def cmd_sample_grid(args, params: dict) -> None:
    """The first samples as a grid: a class experiment's one row per class, a text experiment's with the
    caption of each."""
    from uvit.figures import captioned_samples, sample_grid

    exp = resolve_experiment(params, args.experiment)
    if exp["condition"] == "text":
        from uvit.conditioning import sample_captions
        from uvit.config import caption_split
        from uvit.shards import load_captions

        captions = load_captions(Path(args.data) / caption_split(exp))
        drawn = sample_captions(captions, exp["sampling"]["num_samples"])
        written = captioned_samples(Path(args.samples), drawn, Path(args.out))
    elif exp["condition"] == "class":
        from uvit.conditioning import class_grid_order
        from uvit.shards import num_classes

        classes, per_class = num_classes(Path(args.data) / "train"), 10
        order = class_grid_order(classes, per_class)
        written = sample_grid(Path(args.samples), Path(args.out), classes, per_class, order)
    else:
        written = sample_grid(Path(args.samples), Path(args.out))
    log("wrote " + ", ".join(map(str, written)))


def cmd_figures(args, params: dict) -> None:
    """FID over training steps, FID over sampler steps and loss curves of the experiments given, and of those
    the tables show beside them (uvit.tables.present_metrics)."""
    from uvit import figures
    from uvit.tables import ablation_curves, curves_by_experiment, paper_choices, paper_data, present_metrics

    metrics = present_metrics(params, args.metrics)
    out_dir = Path(args.out_dir)
    paper = {name: m["fid"] for name, m in paper_data()["sampler_steps"]["models"].items()}
    over_training = curves_by_experiment(params, metrics, "training_steps")
    over_sampler = curves_by_experiment(params, metrics, "sampler_steps")
    shown = {m["experiment"] for m in metrics.values() if "experiment" in m}  # not autoencoder records
    loss = {Path(p).parent.name: Path(p) for p in args.loss}
    loss |= {n: p for n in sorted(shown - set(loss)) if (p := Path(layout.loss_csv(n))).is_file()}
    loss_figure, training_figure, sampler_figure = layout.FIGURES
    written = figures.loss_curves(loss, out_dir / loss_figure)
    written += figures.fid_over_training(over_training, out_dir / training_figure)
    written += figures.fid_over_sampler_steps(over_sampler, paper, out_dir / sampler_figure)
    for x_key, points in (("training_steps", over_training), ("sampler_steps", over_sampler)):
        written += figures.write_curve_data(points, x_key, out_dir / layout.CURVE_FIGURES[x_key])
    for grid in params[
        "target_grids"
    ]:  # FID over training per value of each axis, its seeds' points together
        curves = ablation_curves(params, grid, over_training)
        written += figures.ablation_comparison(
            curves, out_dir / layout.ablation_figure(grid), paper_choices()
        )
    log("wrote " + ", ".join(map(str, written)))


def cmd_tables(args, params: dict) -> None:
    from uvit.render import render_tables

    written = render_tables(params, [Path(p) for p in args.metrics], Path(args.out_dir))
    log("wrote " + ", ".join(map(str, written)))


def cmd_plan(args, params: dict) -> None:
    """GPU-hour estimates of experiments (all paper-scale ones by default)."""
    from uvit.plan import describe

    names = args.experiment or [
        n for n in params["experiments"] if resolve_experiment(params, n)["scale"] == "paper"
    ]
    for name in names:
        print(describe(params, name))


def cmd_settings(args, params: dict) -> None:
    from uvit.stages import Lineage, all_jobs

    jobs = all_jobs(params)
    changed = Lineage(params).write_settings(jobs, Path(args.root))
    log(
        f"settings of {len(jobs)} stages in {Path(args.root) / layout.SETTINGS_DIR}/: {len(changed)} changed"
        + "".join(f"\n  {name}" for name in changed[:20])
    )


def cmd_rehearse(args, params: dict) -> None:
    from uvit.rehearsal import rehearse

    root = Path(args.params).resolve().parent
    rehearse(args.row, Path(args.out).resolve(), root, args.per_class, args.tiny, args.cores, log=log)


def cmd_verify(args, params: dict) -> None:
    from uvit.verify import TraceError, verify

    try:
        log(verify(params, Path(args.root)))
    except TraceError as err:
        log(f"verify failed: {err}")
        raise SystemExit(1) from None


# --------------------------------------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """Command-line mistakes as one line: `error: <what>; <how to fix>`."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def add_guidance_scale(p: argparse.ArgumentParser, text: str) -> None:
    """--guidance-scale of sample, fid and accuracy: one guidance point of evaluation.guidance_scales."""
    p.add_argument("--guidance-scale", type=positive(float, zero=True), metavar="S", help=text)


def positive(kind, zero: bool = False):
    """An argparse type: a whole number >= 1 (counts, steps, threads), or a float > 0 (>= 0 with `zero`)."""
    expected = "a whole number >= 1" if kind is int else f"a number {'>=' if zero else '>'} 0"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not (value >= 0 if zero else value > 0) or math.isinf(value):  # nan and inf fail too
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="uvit", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--params", default="params.yaml", metavar="FILE", help="settings file (default: %(default)s)"
    )
    parser.add_argument(
        "--threads",
        type=positive(int),
        default=None,
        metavar="N",
        help="torch CPU threads (default: torch's)",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")

    def stage(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = stage("prepare-data", cmd_prepare_data, "Convert a raw dataset into the prepared shard format.")
    p.add_argument("--dataset", required=True, help="name under `datasets` in params.yaml")
    p.add_argument("--out", required=True, metavar="DIR")

    p = stage(
        "train-autoencoder", cmd_train_autoencoder, "Train a small KL autoencoder for latent experiments."
    )
    p.add_argument("--autoencoder", required=True, help="name under `autoencoders`")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared dataset")
    p.add_argument(
        "--reference", metavar="NPZ", help="FID reference statistics: the floor beside the reconstruction FID"
    )
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--metrics", required=True, metavar="FILE")

    p = stage(
        "train-classifier",
        cmd_train_classifier,
        "Train a small CNN classifier on a prepared training split (scores class-conditional samples).",
    )
    p.add_argument("--classifier", required=True, help="name under `classifiers`")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared dataset")
    p.add_argument("--out", required=True, metavar="FILE", help="the weights (a state_dict)")
    p.add_argument("--metrics", required=True, metavar="FILE")

    p = stage("encode-latents", cmd_encode_latents, "Encode a prepared dataset into posterior moments.")
    p.add_argument(
        "--autoencoder-dir",
        required=True,
        metavar="PATH",
        help="trained folder, or an SD KL-f8 file or folder",
    )
    p.add_argument(
        "--scale-factor",
        type=positive(float),
        metavar="S",
        help="fixed latent scale (SD: 0.18215; COCO: 0.23010)",
    )
    p.add_argument(
        "--no-flips", action="store_true", help="encode the images only, not also their horizontal flips"
    )
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--out", required=True, metavar="DIR")

    p = stage(
        "encode-text",
        cmd_encode_text,
        f"Encode the captions of a prepared text dataset ({CONTEXT_TOKENS} tokens each by default).",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="a prepared split with captions.json")
    p.add_argument(
        "--encoder",
        required=True,
        metavar="DIR",
        help="local transformers text encoder, or 'minilm' (offline)",
    )
    p.add_argument(
        "--tokens",
        type=positive(int),
        default=CONTEXT_TOKENS,
        help="context tokens per caption (default: %(default)s, CLIP's)",
    )
    p.add_argument("--out", required=True, metavar="DIR")

    p = stage(
        "import", cmd_import, "Check and store a file given in params.yaml (reference, autoencoder, weights)."
    )
    p.add_argument("--kind", required=True, choices=["reference", "autoencoder", "weights"])
    p.add_argument("--source", required=True, metavar="PATH")
    p.add_argument("--key", required=True, help="the params.yaml key that names the source (for messages)")
    p.add_argument(
        "--protocol",
        default="clean",
        choices=["clean", "pytorch_fid", "adm_tf"],
        help="reference: the fid_protocol it was made with (recorded in the import)",
    )
    p.add_argument(
        "--experiment", help="whose model the weights must fit (default: the experiment --key names)"
    )
    p.add_argument("--out", required=True, metavar="PATH")

    p = stage("train", cmd_train, "Train (or resume) an experiment's U-ViT.")
    p.add_argument("--experiment", required=True)
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--latents", metavar="DIR", help="encoded latents (latent experiments)")
    p.add_argument("--text", metavar="DIR", help="encoded captions of the training split (text experiments)")
    p.add_argument(
        "--autoencoder-dir", metavar="DIR", help="decoder for the sample grids of latent experiments"
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="run directory: checkpoints/, snapshots/, progress/, nnet.pth, nnet_ema.pth, loss.jsonl",
    )
    p.add_argument("--metrics", required=True, metavar="FILE")
    p.add_argument("--loss-plot", metavar="FILE", help="also write the loss curve as CSV (a DVC plot)")

    p = stage("sample", cmd_sample, "Draw an experiment's samples into a PNG folder (resumable).")
    p.add_argument("--experiment", required=True)
    p.add_argument("--model", required=True, metavar="FILE", help="EMA weights (nnet_ema.pth)")
    p.add_argument(
        "--data",
        metavar="DIR",
        help="prepared dataset (classes, image shape); without it, read off the weights",
    )
    p.add_argument("--autoencoder-dir", metavar="DIR")
    p.add_argument("--latents", metavar="DIR")
    p.add_argument("--text", metavar="DIR", help="encoded captions to sample for (text experiments)")
    p.add_argument("--sampler-steps", type=positive(int), metavar="N", help="instead of sampling.steps")
    add_guidance_scale(p, "instead of sampling.guidance_scale (0: the conditional model alone)")
    p.add_argument("--out", required=True, metavar="DIR")

    for name, func, text in (
        ("reference-stats", cmd_reference_stats, "Inception statistics of prepared images (FID reference)."),
        (
            "fid-floor",
            cmd_fid_floor,
            "FID of held-out real images against the reference (the small-sample floor).",
        ),
    ):
        p = stage(name, func, text)
        p.add_argument("--data", required=True, metavar="DIR")
        p.add_argument("--split", required=True, help="a prepared split: train, test (val for MS-COCO)")
        p.add_argument("--count", required=True, type=positive(int), metavar="N")
        p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
        p.add_argument("--out", required=True, metavar="FILE")
        if name == "fid-floor":
            p.add_argument("--reference", required=True, metavar="FILE")
        else:
            p.add_argument("--protocol", default="clean", choices=["clean", "pytorch_fid", "adm_tf"])

    p = stage("fid", cmd_fid, "FID of an experiment's samples against the reference statistics.")
    p.add_argument("--experiment", required=True)
    p.add_argument("--samples", required=True, metavar="DIR")
    p.add_argument("--reference", required=True, metavar="FILE")
    p.add_argument(
        "--floor", metavar="FILE", help="the FID floor (--pretrained with a given reference: none)"
    )
    p.add_argument("--data", metavar="DIR", help="prepared dataset (recorded for provenance)")
    p.add_argument(
        "--checkpoint", required=True, metavar="FILE", help="EMA weights (recorded for provenance)"
    )
    p.add_argument(
        "--weights-output",
        metavar="PATH",
        help="the pipeline output holding --checkpoint, if another (e.g. snapshots/; recorded for provenance)",
    )
    p.add_argument(
        "--sampler-steps", type=positive(int), metavar="N", help="the samples' steps, if not sampling.steps"
    )
    add_guidance_scale(p, "the samples' guidance scale, if not sampling.guidance_scale")
    p.add_argument("--pretrained", action="store_true", help="the checkpoint is the authors' release")
    p.add_argument(
        "--training-step",
        type=positive(int),
        metavar="N",
        help="the checkpoint's step, if not training.steps",
    )
    p.add_argument("--metrics", required=True, metavar="FILE")

    p = stage(
        "accuracy",
        cmd_accuracy,
        "Share of a class experiment's samples its classifier labels as the class each was drawn for.",
    )
    p.add_argument("--experiment", required=True)
    p.add_argument("--samples", required=True, metavar="DIR")
    p.add_argument("--classifier", required=True, metavar="FILE", help="the weights train-classifier wrote")
    p.add_argument(
        "--classifier-metrics", required=True, metavar="FILE", help="its metrics (held-out accuracy)"
    )
    p.add_argument("--data", required=True, metavar="DIR", help="prepared dataset (image shape, classes)")
    add_guidance_scale(p, "the samples' guidance scale, if not sampling.guidance_scale")
    p.add_argument("--metrics", required=True, metavar="FILE")

    p = stage(
        "samples-npz", cmd_samples_npz, "Pack a sample folder into an .npz for the ADM evaluation suite."
    )
    p.add_argument("--samples", required=True, metavar="DIR")
    p.add_argument("--out", required=True, metavar="FILE")

    p = stage("sample-grid", cmd_sample_grid, "A grid of the first samples (PNG and PDF).")
    p.add_argument("--experiment", required=True)
    p.add_argument(
        "--data", required=True, metavar="DIR", help="prepared dataset (captions of text experiments)"
    )
    p.add_argument("--samples", required=True, metavar="DIR")
    p.add_argument("--out", required=True, metavar="STEM", help="output path without .png / .pdf")

    p = stage("figures", cmd_figures, "FID curves and loss curves (PNG and PDF).")
    p.add_argument("--metrics", nargs="+", required=True, metavar="FILE", help="FID metrics files")
    p.add_argument("--loss", nargs="+", required=True, metavar="CSV", help="metrics/<experiment>/loss.csv")
    p.add_argument("--out-dir", required=True, metavar="DIR")

    p = stage("tables", cmd_tables, "Render paper_tables/ (Markdown and LaTeX) from the metrics files.")
    p.add_argument("--metrics", nargs="+", required=True, metavar="FILE")
    p.add_argument("--out-dir", required=True, metavar="DIR")

    p = stage("plan", cmd_plan, "Estimated A100-hours to train and sample experiments (no data needed).")
    p.add_argument("--experiment", nargs="*", help="experiments (default: every paper-scale one)")

    p = stage(
        "settings",
        cmd_settings,
        "Write each DVC stage's resolved settings to settings/<rule>/<key>.json (rewriting only those that changed).",
    )
    p.add_argument("--root", default=".", metavar="DIR", help="project root (default: %(default)s)")

    p = stage(
        "rehearse",
        cmd_rehearse,
        "A paper row's whole DAG on synthetic data in its real raw layout, steps and samples cut to fit.",
    )
    p.add_argument("row", help="a paper row of params.yaml (uvit plan lists them)")
    p.add_argument(
        "--out", required=True, metavar="DIR", help="a new folder: the project copy and its outputs"
    )
    p.add_argument(
        "--per-class", type=positive(int), default=2, metavar="N", help="synthetic images per class"
    )
    p.add_argument(
        "--tiny",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tiny U-ViT and autoencoder widths (default: on a machine without a GPU)",
    )
    p.add_argument("--cores", type=positive(int), default=os.cpu_count() or 1, help="Snakemake's --cores")

    p = stage(
        "verify",
        cmd_verify,
        "Check that every number in paper_tables/ traces to its metrics file, dvc.lock and the artifacts.",
    )
    p.add_argument("--root", default=".", metavar="DIR", help="project root (default: %(default)s)")
    return parser


def stage_functions() -> dict:
    """The table of stages: {subcommand: the function that runs it}. uvit.stages reads each function's imports
    (the subcommand's code: a DVC dependency of its stages and part of their lineage)."""
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: parser.get_default("func") for name, parser in subparsers.choices.items()}


def main(argv: list[str] | None = None) -> int:
    """Run one stage. Every failure ends as one line on stderr and a non-zero exit (the traceback: --debug)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, or a command-line mistake (already printed as one line)
        return stop.code
    try:
        params = load_params(args.params)
        keep_freed_memory()
        set_threads(args.threads)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        args.func(args, params)
    except UserError as err:
        if args.debug:
            raise
        log(f"error: {' '.join(str(err).split())}")
        return 2
    except OSError as err:  # a file given on the command line or in params.yaml
        if args.debug:
            raise
        if err.filename:
            log(f"error: {err.filename}: {err.strerror}; check the path given and its permissions")
        else:
            log(f"error: {' '.join(str(err).split())}")
        return 2
    except KeyboardInterrupt:
        log(f"error: uvit {args.command}: interrupted; run it again to resume")
        return 130
    except Exception as err:
        if args.debug:
            raise
        first = str(err).splitlines()[0] if str(err) else ""
        log(
            f"error: uvit {args.command}: unexpected {type(err).__name__}: {first}; rerun with --debug for the traceback"
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
