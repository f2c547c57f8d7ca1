"""Bad input is never trusted silently and always named in one line.

A table of (input, command, expected fragments of the one-line message): each case runs `uvit` (in-process,
a few through the real command) on one bad input beside a world of good outputs (prepared data, a trained
run, samples) and asserts: a non-zero exit, exactly one `error:` line that names the thing and the fix, no
traceback, no output left at the --out path, and every good output byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import project_params, write_emoji_package
from PIL import Image

from uvit import cli
from uvit.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"
WEIGHTS_KEY = "experiments.smoke_pixel.evaluation.pretrained_weights"


@dataclass
class World:
    root: Path

    def __getattr__(self, name: str) -> str:
        return str(self.root / {"params": "params.yaml", "model": "run/nnet_ema.pth"}.get(name, name))

    def cmd(self, *args: str, params: str | None = None) -> list[str]:
        return ["--params", params or self.params, "--threads", "1", *args]


def uvit(world: World, *args: str) -> None:
    assert main(world.cmd(*args)) == 0, args


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    """Good outputs: prepared digits and emoji, a 4-step smoke_pixel run, 4 samples (fp32, tiny)."""
    root = tmp_path_factory.mktemp("world")
    sampling = {"num_samples": 4, "batch_size": 4, "steps": 2, "precision": "fp32"}
    loop = {"steps": 4, "batch_size": 16, "checkpoint_every": 2, "keep_checkpoints": 3, "log_every": 2}
    path = project_params(root, sampling=sampling, precision="fp32", **loop)
    write_emoji_package(root / "raw" / "emoji", count=12)
    params = yaml.safe_load(path.read_text())
    params["datasets"]["emoji_mini"]["root"] = str(root / "raw" / "emoji")
    params["datasets"]["imagenet64"]["root"] = str(root / "raw" / "imagenet")
    params["datasets"]["imagenet64"]["classes"] = 1  # the small folders below have one synset
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    w = World(root)
    uvit(w, "prepare-data", "--dataset", "digits", "--out", w.data)
    uvit(w, "prepare-data", "--dataset", "emoji_mini", "--out", w.emoji)
    run = ["train", "--experiment", "smoke_pixel", "--data", w.data, "--out", w.run, "--metrics", w.metrics]
    uvit(w, *run)
    uvit(w, "sample", "--experiment", "smoke_pixel", "--model", w.model, "--data", w.data, "--out", w.samples)
    return w


def tree_hash(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------------------------------------
# Writers of bad inputs (each returns the path it wrote)
# --------------------------------------------------------------------------------------------------------


def write(path: Path, data: bytes | str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def another_network(t: Path) -> str:
    """A diffusers folder of a UNet where an autoencoder is expected."""
    write(t / "unet" / "diffusion_pytorch_model.safetensors", b"")
    return str(Path(write(t / "unet" / "config.json", '{"_class_name": "UNet2DModel"}')).parent)


def params_text(w: World, t: Path, edit) -> str:
    """The world's params.yaml with its text edited, beside a copy of the schema."""
    shutil.copytree(Path(w.root) / "workflow", t / "workflow", dirs_exist_ok=True)
    return write(t / "params.yaml", edit(Path(w.params).read_text()))


def params_edit(w: World, t: Path, edit) -> str:
    """The world's params.yaml with edit(dict) applied."""

    def apply(text: str) -> str:
        params = yaml.safe_load(text)
        edit(params)
        return yaml.safe_dump(params, sort_keys=False)

    return params_text(w, t, apply)


def smoke(params: dict) -> dict:
    return params["experiments"]["smoke_pixel"]


def truncated(source: str, t: Path, name: str) -> str:
    blob = Path(source).read_bytes()
    return write(t / name, blob[: len(blob) // 2])


def weights(w: World, t: Path, edit) -> str:
    """The world's EMA weights with edit(state_dict) applied."""
    state = torch.load(w.model, weights_only=True)
    edit(state)
    torch.save(state, t / "edited.pth")
    return str(t / "edited.pth")


class Payload:
    """An arbitrary object: a file carrying one must be refused by the weights-only loader."""


def pickled(t: Path) -> str:
    torch.save({"pos_embed": torch.zeros(1), "payload": Payload()}, t / "pickled.pth")
    return str(t / "pickled.pth")


def data_copy(w: World, t: Path, edit) -> str:
    """A copy of the prepared digits with edit(train split folder) applied."""
    shutil.copytree(w.data, t / "data")
    edit(t / "data" / "train")
    return str(t / "data")


def corrupt_shard(split: Path) -> None:
    shard = split / "images-00000.npy"
    shard.write_bytes(shard.read_bytes()[:-10])


def imagenet(
    w: World, loose: bool = False, broken: bool = False, empty: bool = False, extra_class: bool = False
) -> str:
    """A small ImageNet train folder at the root params.yaml names for imagenet64 (rewritten by each case)."""
    root = Path(w.root) / "raw" / "imagenet"
    shutil.rmtree(root, ignore_errors=True)
    (root / "train" / "n01").mkdir(parents=True)
    if not empty:
        Image.new("RGB", (80, 80), (10, 20, 30)).save(root / "train" / "n01" / "n01_1.JPEG")
    if loose:
        Image.new("RGB", (80, 80)).save(root / "train" / "n01_2.JPEG")
    if broken:
        write(root / "train" / "n01" / "n01_3.JPEG", b"\xff\xd8\xff\xe0 not a jpeg")
    if extra_class:
        (root / "train" / "n02").mkdir()
        Image.new("RGB", (80, 80)).save(root / "train" / "n02" / "n02_1.JPEG")
    return "imagenet64"


def sample_args(w: World, t: Path, model: str | None = None, data: str | None = None, *extra) -> list[str]:
    return ["sample", "--experiment", "smoke_pixel", "--model", model or w.model, "--data", data or w.data,
            "--out", str(t / "out"), *extra]  # fmt: skip


def train_args(
    w: World, t: Path, data: str | None = None, experiment: str = "smoke_pixel", *extra
) -> list[str]:
    return ["train", "--experiment", experiment, "--data", data or w.data, "--out", str(t / "out"),
            "--metrics", str(t / "out.json"), *extra]  # fmt: skip


def accuracy_args(w: World, t: Path, experiment: str) -> list[str]:
    return ["accuracy", "--experiment", experiment, "--samples", w.samples, "--classifier", str(t / "c.pth"),
            "--classifier-metrics", str(t / "c.json"), "--data", w.data, "--metrics", str(t / "out")]  # fmt: skip


def import_args(source: str, t: Path, kind: str = "weights", key: str = WEIGHTS_KEY) -> list[str]:
    return ["import", "--kind", kind, "--source", source, "--key", key, "--out", str(t / "out")]


def plan(w: World, params: str) -> list[str]:
    return w.cmd("plan", "--experiment", "smoke_pixel", params=params)


# --------------------------------------------------------------------------------------------------------
# The table: (id, argv builder (world, scratch dir), fragments of the one error line, through a subprocess)
# --------------------------------------------------------------------------------------------------------


def duplicate_experiment(text: str) -> str:
    return text.replace("experiments:\n", "experiments:\n  smoke_pixel:\n    description: x\n", 1)


CASES = [
    # ---- params.yaml ----
    ("dup-experiment", lambda w, t: plan(w, params_text(w, t, duplicate_experiment)),
     ("params.yaml: experiments.smoke_pixel (line", "key given twice", "keep one"), True),
    ("dup-nested-key", lambda w, t: plan(w, params_text(w, t, lambda s: s.replace("    lr: ", "    lr: 0.1\n    lr: ", 1))),
     ("autoencoders.fmnist_kl.lr (line", "key given twice"), False),
    ("dup-top-level", lambda w, t: plan(w, params_text(w, t, lambda s: s + "targets: [smoke_pixel]\n")),
     ("params.yaml: targets (line", "first on line 1"), False),
    ("dup-in-list-item", lambda w, t: plan(w, params_text(w, t, lambda s: s.replace("datasets:\n", "datasets:\n  digits: {}\n", 1))),
     ("datasets.digits (line", "key given twice"), False),
    ("params-missing", lambda w, t: plan(w, str(t / "nowhere.yaml")),
     ("nowhere.yaml: file not found", "--params"), False),
    ("params-a-folder", lambda w, t: plan(w, str(t)),
     ("file not found", "--params"), False),
    ("params-bad-yaml", lambda w, t: plan(w, params_text(w, t, lambda s: s + "oops: [unclosed\n")),
     ("params.yaml: not valid YAML", "line"), False),
    ("params-not-utf8", lambda w, t: plan(w, write(t / "p.yaml", b"\xff\xfe\x00targets")),
     ("p.yaml: unreadable", "check the file"), False),
    ("params-a-list", lambda w, t: plan(w, params_text(w, t, lambda s: "- 1\n- 2\n")),
     ("params.yaml: (top level)", "not of type 'object'"), False),
    ("params-unknown-key", lambda w, t: plan(w, params_edit(w, t, lambda p: smoke(p).__setitem__("colour", 1))),
     ("experiments.smoke_pixel: unknown key 'colour'", "allowed keys"), False),
    ("params-steps-zero", lambda w, t: plan(w, params_edit(w, t, lambda p: smoke(p)["sampling"].__setitem__("steps", 0))),
     ("experiments.smoke_pixel.sampling.steps", "minimum of 1"), False),
    ("params-unknown-dataset", lambda w, t: plan(w, params_edit(w, t, lambda p: smoke(p).__setitem__("dataset", "mnist"))),
     ("experiments.smoke_pixel.dataset: unknown dataset 'mnist'", "known:"), False),
    ("params-unknown-target", lambda w, t: plan(w, params_edit(w, t, lambda p: p.__setitem__("targets", ["nope"]))),
     ("targets.0: unknown experiment 'nope'", "known:"), False),
    ("params-even-depth", lambda w, t: plan(w, params_edit(w, t, lambda p: smoke(p)["model"].__setitem__("depth", 4))),
     ("experiments.smoke_pixel.model.depth: must be odd",), False),
    ("params-guidance-unconditional", lambda w, t: plan(w, params_edit(w, t, lambda p: smoke(p)["sampling"].__setitem__("guidance_scale", 1.0))),
     ("experiments.smoke_pixel.sampling.guidance_scale", "condition: class or text"), False),
    ("params-guidance-scales-negative", lambda w, t: plan(w, params_edit(w, t, lambda p: p["experiments"]["smoke_latent"]["evaluation"].__setitem__("guidance_scales", [-1]))),
     ("experiments.smoke_latent.evaluation.guidance_scales.0: -1 is less than the minimum of 0", "give a number >= 0"), False),
    ("params-guidance-scales-unconditional", lambda w, t: plan(w, params_edit(w, t, lambda p: smoke(p)["evaluation"].__setitem__("guidance_scales", [0, 1]))),
     ("experiments.smoke_pixel.evaluation.guidance_scales: [0, 1] needs condition: class or text", "set evaluation.guidance_scales: []"), True),
    ("params-classifier-unconditional", lambda w, t: plan(w, params_edit(w, t, lambda p: smoke(p)["evaluation"].__setitem__("classifier", "digits_cnn"))),
     ("experiments.smoke_pixel.evaluation.classifier:", "condition: none", "set evaluation.classifier: null"), False),
    ("params-schema-missing", lambda w, t: plan(w, write(t / "p.yaml", Path(w.params).read_text())),
     ("params.schema.yaml: unreadable", "No such file"), False),
    ("experiment-misspelled-train", lambda w, t: w.cmd(*train_args(w, t, experiment="smoke_pxl")),
     ("experiments.smoke_pxl: no such experiment; did you mean smoke_pixel?", "(known: "), True),
    ("experiment-misspelled-sample", lambda w, t: w.cmd("sample", "--experiment", "smok", "--model", w.model, "--data", w.data, "--out", str(t / "out")),
     ("experiments.smok: no such experiment", "smoke_pixel"), False),
    ("experiment-misspelled-plan", lambda w, t: w.cmd("plan", "--experiment", "nope"),
     ("experiments.nope: no such experiment",), False),
    ("dataset-misspelled", lambda w, t: w.cmd("prepare-data", "--dataset", "digit", "--out", str(t / "out")),
     ("datasets.digit: not in params.yaml", "use one of: ", "digits"), False),
    ("autoencoder-misspelled", lambda w, t: w.cmd("train-autoencoder", "--autoencoder", "digits", "--data", w.data, "--out", str(t / "out"), "--metrics", str(t / "m.json")),
     ("autoencoders.digits: not in params.yaml", "digits_kl"), False),
    # ---- command line ----
    ("sampler-steps-zero", lambda w, t: w.cmd(*sample_args(w, t, None, None, "--sampler-steps", "0")),
     ("--sampler-steps: expected a whole number >= 1, got '0'", "--help"), True),
    ("sampler-steps-negative", lambda w, t: w.cmd(*sample_args(w, t, None, None, "--sampler-steps", "-3")),
     ("--sampler-steps: expected a whole number >= 1, got '-3'",), False),
    ("sampler-steps-text", lambda w, t: w.cmd(*sample_args(w, t, None, None, "--sampler-steps", "many")),
     ("--sampler-steps: expected a whole number >= 1, got 'many'",), False),
    ("guidance-scale-negative", lambda w, t: w.cmd(*sample_args(w, t, None, None, "--guidance-scale", "-1")),
     ("--guidance-scale: expected a number >= 0, got '-1'", "--help"), False),
    ("guidance-scale-unconditional", lambda w, t: w.cmd(*sample_args(w, t, None, None, "--guidance-scale", "1")),
     ("experiments.smoke_pixel: guidance scale 1.0 needs condition: class or text", "sample it without guidance"), False),
    ("classifier-misspelled", lambda w, t: w.cmd("train-classifier", "--classifier", "digits", "--data", w.data, "--out", str(t / "out"), "--metrics", str(t / "m.json")),
     ("classifiers.digits: not in params.yaml", "digits_cnn"), False),
    ("classifier-other-dataset", lambda w, t: w.cmd("train-classifier", "--classifier", "digits_cnn", "--data", w.emoji, "--out", str(t / "out"), "--metrics", str(t / "m.json")),
     ("prepared from source 'emoji'", "expected dataset 'digits'"), False),
    ("accuracy-without-classifier", lambda w, t: w.cmd(*accuracy_args(w, t, "smoke_pixel")),
     ("experiments.smoke_pixel.evaluation.classifier: not set", "name a classifier"), False),
    ("accuracy-samples-count-differs", lambda w, t: w.cmd(*accuracy_args(w, t, "smoke_latent")),
     ("samples: 4 samples, sampling.num_samples says 8", "re-run sample"), False),
    ("threads-negative", lambda w, t: ["--threads", "-2", "plan"],
     ("--threads: expected a whole number >= 1, got '-2'",), False),
    ("threads-zero", lambda w, t: ["--threads", "0", "plan"],
     ("--threads: expected a whole number >= 1, got '0'",), False),
    ("count-zero", lambda w, t: w.cmd("reference-stats", "--data", w.data, "--split", "train", "--count", "0", "--out", str(t / "out")),
     ("--count: expected a whole number >= 1",), False),
    ("tokens-zero", lambda w, t: w.cmd("encode-text", "--data", w.emoji, "--encoder", "minilm", "--tokens", "0", "--out", str(t / "out")),
     ("--tokens: expected a whole number >= 1",), False),
    ("training-step-negative", lambda w, t: w.cmd("fid", "--experiment", "smoke_pixel", "--samples", w.samples, "--reference", "r", "--floor", "f", "--data", w.data, "--checkpoint", w.model, "--training-step", "-1", "--metrics", str(t / "out")),
     ("--training-step: expected a whole number >= 1",), False),
    ("scale-factor-negative", lambda w, t: w.cmd("encode-latents", "--autoencoder-dir", "a", "--scale-factor", "-1", "--data", w.data, "--out", str(t / "out")),
     ("--scale-factor: expected a number > 0, got '-1'",), False),
    ("unknown-stage", lambda w, t: w.cmd("frobnicate"),
     ("invalid choice: 'frobnicate'", "--help"), False),
    ("no-stage", lambda w, t: w.cmd(),
     ("the following arguments are required: STAGE",), False),
    ("missing-out", lambda w, t: w.cmd("train", "--experiment", "smoke_pixel", "--data", w.data, "--metrics", str(t / "m")),
     ("the following arguments are required: --out",), False),
    ("unknown-kind", lambda w, t: w.cmd(*import_args(w.model, t, kind="bogus")),
     ("--kind: invalid choice: 'bogus'",), False),
    ("sample-out-is-a-file", lambda w, t: w.cmd("sample", "--experiment", "smoke_pixel", "--model", w.model, "--data", w.data, "--out", write(t / "file", "x")),
     ("file: File exists", "check the path"), False),
    ("train-latent-without-latents", lambda w, t: w.cmd(*train_args(w, t, experiment="smoke_latent")),
     ("experiments.smoke_latent: a latent experiment trains on encoded latents", "give --latents"), False),
    ("sample-latent-without-autoencoder", lambda w, t: w.cmd("sample", "--experiment", "smoke_latent", "--model", w.model, "--data", w.data, "--out", str(t / "out")),
     ("experiments.smoke_latent: a latent experiment decodes its samples with its autoencoder", "give --autoencoder-dir (results/autoencoders/"), False),
    ("train-text-without-text", lambda w, t: w.cmd(*train_args(w, t, w.emoji, "smoke_text")),
     ("smoke_text: a text experiment trains on encoded captions", "give --text"), False),
    # ---- prepared data and other data files ----
    ("data-missing", lambda w, t: w.cmd(*train_args(w, t, str(t / "nowhere"))),
     ("nowhere/train/manifest.json: missing", "prepare_data"), False),
    ("data-other-dataset-train", lambda w, t: w.cmd(*train_args(w, t, w.emoji)),
     ("emoji/train/manifest.json: prepared from source 'emoji'", "expected dataset 'digits'", "prepare-data --dataset digits"), True),
    ("data-other-dataset-sample", lambda w, t: w.cmd(*sample_args(w, t, None, w.emoji)),
     ("prepared from source 'emoji'", "expected dataset 'digits'"), False),
    ("data-other-dataset-autoencoder", lambda w, t: w.cmd("train-autoencoder", "--autoencoder", "digits_kl", "--data", w.emoji, "--out", str(t / "out"), "--metrics", str(t / "m.json")),
     ("prepared from source 'emoji'", "expected dataset 'digits'"), False),
    ("manifest-truncated", lambda w, t: w.cmd(*train_args(w, t, data_copy(w, t, lambda s: truncated(str(s / "manifest.json"), s, "manifest.json")))),
     ("train/manifest.json: not a readable JSON file", "run the stage that wrote it again"), False),
    ("manifest-a-list", lambda w, t: w.cmd(*train_args(w, t, data_copy(w, t, lambda s: write(s / "manifest.json", "[1, 2]")))),
     ("manifest.json: expected a JSON object, found list",), False),
    ("shard-truncated", lambda w, t: w.cmd(*train_args(w, t, data_copy(w, t, corrupt_shard))),
     ("images-00000.npy: checksum mismatch", "re-run prepare_data"), False),
    ("shard-missing", lambda w, t: w.cmd(*train_args(w, t, data_copy(w, t, lambda s: (s / "labels-00000.npy").unlink()))),
     ("labels-00000.npy: checksum mismatch",), False),
    ("imagenet-loose-file", lambda w, t: w.cmd("prepare-data", "--dataset", imagenet(w, loose=True), "--out", str(t / "out")),
     ("n01_2.JPEG: not directly in a synset folder", "Move each image into its class's folder"), False),
    ("imagenet-broken-image", lambda w, t: w.cmd("prepare-data", "--dataset", imagenet(w, broken=True), "--out", str(t / "out")),
     ("n01_3.JPEG: unreadable image", "skip_corrupt"), False),
    ("imagenet-class-count", lambda w, t: w.cmd("prepare-data", "--dataset", imagenet(w, extra_class=True), "--out", str(t / "out")),
     ("has 2 synset folders with images, datasets.<name>.classes expects 1",), False),
    ("imagenet-empty", lambda w, t: w.cmd("prepare-data", "--dataset", imagenet(w, empty=True), "--out", str(t / "out")),
     ("ImageNet: no images under", "one folder per synset"), False),
    ("cifar-missing", lambda w, t: w.cmd("prepare-data", "--dataset", "cifar10", "--out", str(t / "out")),
     ("CIFAR-10: data/raw/cifar-10-batches-py not found", "datasets.cifar10.root"), False),
    ("metrics-truncated-tables", lambda w, t: w.cmd("tables", "--metrics", write(t / "fid.json", '{"fid": 1'), "--out-dir", str(t / "out")),
     ("fid.json: not a readable JSON file", "run the stage that writes it again"), False),
    ("metrics-truncated-figures", lambda w, t: w.cmd("figures", "--metrics", write(t / "fid.json", "{"), "--loss", "l.csv", "--out-dir", str(t / "out")),
     ("fid.json: not a readable JSON file",), False),
    ("samples-folder-empty", lambda w, t: w.cmd("fid", "--experiment", "smoke_pixel", "--samples", w.run, "--reference", "r.npz", "--floor", "f.json", "--data", w.data, "--checkpoint", w.model, "--metrics", str(t / "out")),
     ("run: no image files found", "give the folder `uvit sample` wrote"), False),
    ("reference-without-sfid-arrays", lambda w, t: w.cmd("fid", "--experiment", "smoke_pixel", "--samples", w.samples, "--reference", str(npz(t, mu=[0.0], sigma=[[1.0]], protocol="clean")), "--floor", "f.json", "--data", w.data, "--checkpoint", w.model, "--metrics", str(t / "out")),
     ("ref.npz: no key 'mu_s'", "which sfid needs", "evaluation.metrics"), False),
    ("reference-other-protocol", lambda w, t: w.cmd("fid", "--experiment", "smoke_pixel", "--samples", w.samples, "--reference", str(npz(t, mu=[0.0], sigma=[[1.0]], mu_s=[0.0], sigma_s=[[1.0]], features=[[0.0]], protocol="adm_tf")), "--floor", "f.json", "--data", w.data, "--checkpoint", w.model, "--metrics", str(t / "out")),
     ("ref.npz: made with fid_protocol 'adm_tf'", "asks for 'clean'"), False),
    ("samples-mixed-sizes", lambda w, t: w.cmd("fid", "--experiment", "smoke_pixel", "--samples", mixed_sizes(w, t), "--reference", "r.npz", "--floor", "f.json", "--data", w.data, "--checkpoint", w.model, "--metrics", str(t / "out")),
     ("000001.png: 8x8 pixels", "a sample folder holds images of one size"), False),
    ("samples-count-differs", lambda w, t: w.cmd("fid", "--experiment", "smoke_pixel", "--samples", one_sample(w, t), "--reference", "r.npz", "--floor", "f.json", "--data", w.data, "--checkpoint", w.model, "--metrics", str(t / "out")),
     ("s: 1 images, sampling.num_samples says 4", "re-run sample"), False),
    ("samples-npz-empty", lambda w, t: w.cmd("samples-npz", "--samples", str(t), "--out", str(t / "out")),
     ("no PNG samples to export",), False),
    ("reference-not-npz", lambda w, t: w.cmd(*import_args(write(t / "ref.npz", "mu, sigma"), t, "reference", "evaluation.reference_npz")),
     ("ref.npz: not an .npz of reference statistics", "expected keys mu and sigma"), False),
    ("reference-missing-key", lambda w, t: w.cmd(*import_args(str(npz(t, mu=[0.0])), t, "reference", "evaluation.reference_npz")),
     ("ref.npz: no key 'sigma'", "which fid needs"), False),
    ("reference-wrong-shape", lambda w, t: w.cmd(*import_args(str(npz(t, mu=[0.0], sigma=[[1.0]])), t, "reference", "evaluation.reference_npz")),
     ("are not 2048-d Inception pool statistics",), False),
    ("autoencoder-folder-without-config", lambda w, t: w.cmd(*import_args(str(t), t, "autoencoder", "autoencoders.x.pretrained")),
     ("a diffusers AutoencoderKL folder needs config.json",), False),
    ("autoencoder-folder-of-another-network", lambda w, t: w.cmd(*import_args(another_network(t), t, "autoencoder", "autoencoders.x.pretrained")),
     ("unet/config.json: _class_name is 'UNet2DModel', expected 'AutoencoderKL'",), False),
    ("autoencoder-text-file", lambda w, t: w.cmd(*import_args(write(t / "vae.txt", "hello"), t, "autoencoder", "autoencoders.x.pretrained")),
     ("vae.txt: not found or not an autoencoder", "diffusers folder"), False),
    ("encode-latents-missing-autoencoder", lambda w, t: w.cmd("encode-latents", "--autoencoder-dir", str(t / "none"), "--data", w.data, "--out", str(t / "out")),
     ("none: not found or not an autoencoder",), False),
    # ---- checkpoints and weights ----
    ("model-missing", lambda w, t: w.cmd(*sample_args(w, t, str(t / "none.pth"))),
     ("none.pth: No such file or directory", "expected the EMA weights (nnet_ema.pth) of smoke_pixel"), False),
    ("model-truncated", lambda w, t: w.cmd(*sample_args(w, t, truncated(w.model, t, "cut.pth"))),
     ("cut.pth: truncated or damaged", "expected the EMA weights"), True),
    ("model-text-file", lambda w, t: w.cmd(*sample_args(w, t, write(t / "notes.txt", "these are not weights\n"))),
     ("notes.txt: not a torch file",), False),
    ("model-empty-file", lambda w, t: w.cmd(*sample_args(w, t, write(t / "empty.pth", b""))),
     ("empty.pth:", "expected the EMA weights"), False),
    ("model-pickled-object", lambda w, t: w.cmd(*sample_args(w, t, pickled(t))),
     ("pickled.pth: refused by the weights-only loader", "Python objects"), False),
    ("model-wrong-shape", lambda w, t: w.cmd(*sample_args(w, t, weights(w, t, lambda s: s.__setitem__("pos_embed", torch.zeros(1, 5, 32))))),
     ("edited.pth: pos_embed has shape [1, 5, 32], the model of smoke_pixel expects [1, 17, 32]", "fix its model settings"), False),
    ("model-missing-key", lambda w, t: w.cmd(*sample_args(w, t, weights(w, t, lambda s: s.pop("norm.weight")))),
     ("edited.pth: no 'norm.weight'",), False),
    ("model-extra-key", lambda w, t: w.cmd(*sample_args(w, t, weights(w, t, lambda s: s.__setitem__("extra.weight", torch.zeros(1))))),
     ("edited.pth: 'extra.weight' is not in the model of smoke_pixel",), False),
    ("model-is-a-training-checkpoint", lambda w, t: w.cmd(*sample_args(w, t, str(Path(w.run) / "checkpoints" / "ckpt-0000004.pt"))),
     ("ckpt-0000004.pt: not a state_dict of tensors",), False),
    ("import-text-file", lambda w, t: w.cmd(*import_args(write(t / "w.pth", "not weights"), t)),
     ("w.pth: not a torch file", "smoke_pixel"), False),
    ("import-truncated", lambda w, t: w.cmd(*import_args(truncated(w.model, t, "cut.pth"), t)),
     ("cut.pth: truncated or damaged",), False),
    ("import-pickled-object", lambda w, t: w.cmd(*import_args(pickled(t), t)),
     ("pickled.pth: refused by the weights-only loader",), False),
    ("import-wrong-shape", lambda w, t: w.cmd(*import_args(weights(w, t, lambda s: s.__setitem__("decoder_pred.weight", torch.zeros(8, 32))), t)),
     ("edited.pth: decoder_pred.weight has shape [8, 32]", "expects [16, 32]"), False),
    ("import-other-experiment-model", lambda w, t: w.cmd(*import_args(w.model, t, key="experiments.smoke_latent.evaluation.pretrained_weights")),
     ("nnet_ema.pth: ", "the model of smoke_latent expects"), False),
    ("import-missing", lambda w, t: w.cmd(*import_args(str(t / "none.pth"), t)),
     ("none.pth: not found; set experiments.smoke_pixel.evaluation.pretrained_weights in params.yaml",), False),
    ("import-unknown-experiment", lambda w, t: w.cmd(*import_args(w.model, t, key="pretrained")),
     ("pretrained: cannot tell which experiment", "give --experiment"), False),
]  # fmt: skip


def one_sample(w: World, t: Path) -> str:
    (t / "s").mkdir()
    shutil.copy(Path(w.samples) / "000000.png", t / "s")
    return str(t / "s")


def mixed_sizes(w: World, t: Path) -> str:
    from PIL import Image

    one_sample(w, t)
    Image.new("RGB", (8, 8)).save(t / "s" / "000001.png")
    return str(t / "s")


def npz(t: Path, **arrays) -> Path:
    import numpy as np

    with open(t / "ref.npz", "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
    return t / "ref.npz"


def run_cli(argv: list[str]) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(SRC), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "uvit.cli", *argv], capture_output=True, text=True, env=env, timeout=120
    )
    return result.returncode, result.stderr


def out_path(argv: list[str]) -> Path | None:
    return Path(argv[argv.index("--out") + 1]) if "--out" in argv else None


@pytest.mark.parametrize(
    "build, fragments, subprocess_run", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_named_in_one_line(world, tmp_path, capsys, build, fragments, subprocess_run):
    argv = build(world, tmp_path)
    out = out_path(argv)
    existed = out is not None and out.exists()
    before = tree_hash(world.root)
    if subprocess_run:
        code, stderr = run_cli(argv)
    else:
        capsys.readouterr()
        code, stderr = main(argv), capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code != 0
    assert "Traceback" not in stderr, stderr
    assert len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    assert out is None or existed or not out.exists(), f"{out} left behind"
    assert tree_hash(world.root) == before  # nothing good touched


def test_the_table_is_large_and_covers_every_kind_of_input():
    assert len(CASES) >= 60
    assert sum(case[3] for case in CASES) >= 5  # through the real command


# --------------------------------------------------------------------------------------------------------
# Resumed stages: bad leftovers are named and redone, never trusted
# --------------------------------------------------------------------------------------------------------


def test_a_truncated_newest_checkpoint_is_skipped_and_named(world, tmp_path, capsys):
    shutil.copytree(world.run, tmp_path / "run")
    newest = tmp_path / "run" / "checkpoints" / "ckpt-0000004.pt"
    newest.write_bytes(newest.read_bytes()[:2000])
    (tmp_path / "run" / "nnet_ema.pth").unlink()
    argv = ["train", "--experiment", "smoke_pixel", "--data", world.data, "--out", str(tmp_path / "run")]
    assert main(world.cmd(*argv, "--metrics", str(tmp_path / "m.json"))) == 0
    stderr = capsys.readouterr().err
    assert "skipping " in stderr and "ckpt-0000004.pt: truncated or damaged" in stderr
    assert "resuming from" in stderr and "(step 2)" in stderr
    assert (tmp_path / "run" / "nnet_ema.pth").read_bytes() == Path(world.model).read_bytes()


def resample(world: World, out: Path, *extra: str, model: str | None = None) -> None:
    args = ["sample", "--experiment", "smoke_pixel", "--model", model or world.model, "--data", world.data]
    assert main(world.cmd(*args, "--out", str(out), *extra)) == 0


def test_samples_of_another_model_are_drawn_again(world, tmp_path, capsys):
    shutil.copytree(world.samples, tmp_path / "s")
    other = weights(world, tmp_path, lambda s: s["decoder_pred.bias"].add_(0.5))
    capsys.readouterr()
    resample(world, tmp_path / "s", model=other)
    stderr = capsys.readouterr().err
    assert "samples drawn with other settings (model_md5" in stderr and "removed 4 samples" in stderr
    originals = {p.name: p.read_bytes() for p in Path(world.samples).glob("*.png")}
    assert all((tmp_path / "s" / name).read_bytes() != blob for name, blob in originals.items())
    assert '"model_md5"' in (tmp_path / "s" / "sampling.json").read_text()


def test_other_sampler_steps_start_over_and_a_truncated_sample_is_redrawn(world, tmp_path, capsys):
    shutil.copytree(world.samples, tmp_path / "s")
    capsys.readouterr()
    resample(world, tmp_path / "s", "--sampler-steps", "3")
    assert "steps 2 -> 3" in capsys.readouterr().err
    resample(world, tmp_path / "s")  # back to the world's settings: the same bytes again
    cut = tmp_path / "s" / "000001.png"
    cut.write_bytes(cut.read_bytes()[:40])
    resample(world, tmp_path / "s")
    assert "removed 1 samples drawn with other settings or unreadable" in capsys.readouterr().err
    for original in Path(world.samples).glob("*.png"):
        assert (tmp_path / "s" / original.name).read_bytes() == original.read_bytes()


def test_an_unexpected_error_names_the_stage_and_debug_shows_the_traceback(world, monkeypatch, capsys):
    def broken(args, params):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "cmd_plan", broken)
    assert main(world.cmd("plan")) == 1
    stderr = capsys.readouterr().err
    assert stderr.strip() == (
        "error: uvit plan: unexpected ZeroDivisionError: division by zero; rerun with --debug for the traceback"
    )
    with pytest.raises(ZeroDivisionError):
        main(["--debug", *world.cmd("plan")])
    code, stderr = run_cli(["--debug", *world.cmd("plan", "--experiment", "nope")])
    assert code != 0 and "Traceback" in stderr and "ConfigError" in stderr


def test_the_checked_values_still_accept_every_good_value():
    parse = cli.build_parser().parse_args
    args = parse(["--threads", "1", "encode-latents", "--autoencoder-dir", "a", "--scale-factor", "0.18215",
                  "--data", "d", "--out", "o"])  # fmt: skip
    assert (args.threads, args.scale_factor) == (1, 0.18215)
    args = parse(
        ["sample", "--experiment", "e", "--model", "m", "--data", "d", "--out", "o", "--sampler-steps", "1"]
    )
    assert args.sampler_steps == 1
    for scale in ("0", "0.4", "7"):  # 0 is the conditional model alone
        args = parse(["sample", "--experiment", "e", "--model", "m", "--out", "o", "--guidance-scale", scale])
        assert args.guidance_scale == float(scale)
