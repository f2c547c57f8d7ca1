"""`uvit rehearse <row>`: a paper row's whole DAG on synthetic data in the row's real raw layout.

Nothing of a paper row runs on the CPU at its real scale, yet its DAG has steps no demo takes: ImageNet's synset
folders (all 1,000 classes), the CIFAR-10 tarball, CelebA's zip and partition file, COCO's caption JSON, the
SD KL-f8 autoencoder at 256 or 512 pixels. A rehearsal writes a few synthetic images per class in that layout
and at a size the row's preprocessing crops from, an SD-layout autoencoder with random weights where the row
expects Stable Diffusion's, and runs the row's own Snakemake target (prepare, encode, train, sample, FID) in a
copy of the project, with the step and sample counts cut to fit. `--tiny` (the default on a machine without a
GPU) also shrinks the U-ViT and the autoencoder to tiny widths; without it they keep the row's shapes.
What it proves: the row's settings, layouts and stages fit together end to end. Not its numbers: the images
are noise and the FID of a few steps is meaningless (the metrics say `scale: rehearsal`).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from uvit import layout
from uvit.config import resolve_experiment
from uvit.errors import UserError
from uvit.plan import CALIBRATION
from uvit.zoo import CONTEXT_TOKENS

IMAGENET_CLASSES = 1000
TINY_MODEL = {"embed_dim": 32, "depth": 3, "num_heads": 2}
TINY_AUTOENCODER = {"block_out_channels": [16, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 8}
CUTS = {
    "training": {"steps": 4, "batch_size": 8, "grad_accumulation": 1, "checkpoint_every": 2, "log_every": 1,
                 "keep_steps": [], "sample_every": 0, "warmup_steps": 2},
    "sampling": {"num_samples": 16, "batch_size": 8, "steps": 3},
    "evaluation": {"reference_npz": None, "reference_images": 16, "sampler_steps": [], "guidance_scales": [],
                   "pretrained_weights": None, "classifier": None},
}  # fmt: skip


# --------------------------------------------------------------------------------------------------------
# Synthetic raw data, in each source's layout
# --------------------------------------------------------------------------------------------------------


def picture(width: int, height: int, seed: int) -> Image.Image:
    """A smooth random RGB picture (a coarse random grid, upsampled): compresses like a photo, unlike noise."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BILINEAR)


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_imagenet(root: Path, resolution: int, per_class: int, classes: int = IMAGENET_CLASSES) -> Path:
    """train/<synset>/<synset>_<k>.JPEG, one folder per class, each image larger than the row's resolution."""
    for c in range(classes):
        synset = f"n{1_000_000 + c:08d}"
        (root / "train" / synset).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            image = picture(resolution * 5 // 4 + 8 * k, resolution + 4 * k, c * per_class + k)
            (root / "train" / synset / f"{synset}_{k}.JPEG").write_bytes(jpeg(image))
    return root


def write_cifar10(root: Path, resolution: int, per_class: int) -> Path:
    """cifar-10-python.tar.gz as published: cifar-10-batches-py/data_batch_1..5 and test_batch (pickled)."""
    rng = np.random.default_rng(0)

    def batch(n: int) -> bytes:
        labels = (np.arange(n) % 10).tolist()
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        return pickle.dumps(
            {b"batch_label": b"rehearsal", b"labels": labels, b"data": data, b"filenames": []}
        )

    root.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root, "w:gz") as tar:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        # Ten classes per batch file; the test batch holds at least the floor's num_samples images.
        per_file = 10 * max(per_class, -(-CUTS["sampling"]["num_samples"] // 10))
        for name in names:
            blob = batch(per_file)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return root


def write_celeba(root: Path, resolution: int, per_class: int) -> Path:
    """img_align_celeba.zip (178 x 218 JPEGs) and list_eval_partition.txt: 80% train, 10% val, 10% test."""
    count = max(
        10 * per_class, 10 * CUTS["sampling"]["num_samples"]
    )  # the floor takes num_samples test images
    root.mkdir(parents=True, exist_ok=True)
    names = [f"{i:06d}.jpg" for i in range(1, count + 1)]
    partition = [0 if i < 0.8 * count else 1 if i < 0.9 * count else 2 for i in range(count)]
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{n} {p}\n" for n, p in zip(names, partition, strict=True))
    )
    with zipfile.ZipFile(root / "img_align_celeba.zip", "w") as zf:
        for i, name in enumerate(names):
            zf.writestr(f"img_align_celeba/{name}", jpeg(picture(178, 218, i)))
    return root


def write_mscoco(root: Path, resolution: int, per_class: int) -> Path:
    """train2014/ and val2014/ (COCO_<split>_<id>.jpg) and annotations/captions_<split>.json, 5 captions each."""
    for split, count in (("train2014", max(10 * per_class, 32)), ("val2014", 32)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image_id = 1000 + i
            name = f"COCO_{split}_{image_id:012d}.jpg"
            width, height = resolution * 5 // 4, resolution
            (root / split / name).write_bytes(jpeg(picture(width, height, image_id)))
            images.append({"id": image_id, "file_name": name, "width": width, "height": height})
            for k in range(5):
                caption = f"a picture of thing {i % 7} in place {k}"
                annotations.append({"id": 10 * image_id + k, "image_id": image_id, "caption": caption})
        (root / "annotations").mkdir(exist_ok=True)
        blob = json.dumps({"images": images, "annotations": annotations})
        (root / "annotations" / f"captions_{split}.json").write_text(blob)
    return root


RAW_WRITERS = {
    "imagenet": (write_imagenet, "data/raw/imagenet"),
    "cifar10": (write_cifar10, "data/raw/cifar-10-python.tar.gz"),
    "celeba": (write_celeba, "data/raw/celeba"),
    "mscoco": (write_mscoco, "data/raw/coco"),
}


def write_random_autoencoder(out: Path, latent_channels: int, tiny: bool) -> None:
    """An AutoencoderKL in Stable Diffusion's layout (f8: four blocks, three downsamplings) with random weights."""
    import torch

    from uvit.autoencoder import SD_VAE_CONFIG
    from uvit.autoencoder_kl import AutoencoderKL

    torch.manual_seed(0)
    widths = TINY_AUTOENCODER if tiny else {}
    AutoencoderKL(**SD_VAE_CONFIG | widths | {"latent_channels": latent_channels}).save_pretrained(out)


def byte_characters() -> list[str]:
    """The 256 printable characters byte-level BPE (GPT-2, CLIP) maps the bytes to."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in kept else chr(next(extra)) for b in range(256)]


def write_random_text_encoder(out: Path, tiny: bool) -> None:
    """A CLIP text model with random weights and a byte-level tokenizer without merges (one token per character):
    the layout of openai/clip-vit-large-patch14's text half (77 tokens; 768 wide unless tiny)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    characters = byte_characters()
    vocab = characters + [c + "</w>" for c in characters] + ["<|startoftext|>", "<|endoftext|>"]
    CLIPTokenizer(vocab={token: i for i, token in enumerate(vocab)}, merges=[]).save_pretrained(str(out))
    width = 64 if tiny else 768
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=2 if tiny else 12,
        num_attention_heads=2 if tiny else 12,
        max_position_embeddings=CONTEXT_TOKENS,
        bos_token_id=len(vocab) - 2,
        eos_token_id=len(vocab) - 1,
    )
    torch.manual_seed(0)
    CLIPTextModel(config).save_pretrained(str(out))


# --------------------------------------------------------------------------------------------------------
# The row's settings, cut to fit
# --------------------------------------------------------------------------------------------------------


def paper_rows(params: dict) -> list[str]:
    return [name for name in params["experiments"] if resolve_experiment(params, name)["scale"] == "paper"]


def rehearsal_params(params: dict, row: str, tiny: bool, gpus: int = 0) -> dict:
    """params.yaml with only `row` (and its dataset, autoencoder), its raw data where the rehearsal writes it, and
    its steps and sample counts cut; the row's shapes, recipe and stages otherwise as they are."""
    if row not in paper_rows(params):
        raise UserError(
            f"rehearse: {row!r} is not a paper row; choose one of {', '.join(paper_rows(params))}"
        )
    exp = params["experiments"][row]
    dataset = params["datasets"][exp["dataset"]]
    if dataset["source"] not in RAW_WRITERS:
        raise UserError(f"rehearse: no synthetic layout for source {dataset['source']!r} of {row}")
    dataset["root"] = RAW_WRITERS[dataset["source"]][1]
    if "text_encoder" in dataset:
        dataset["text_encoder"] = "data/raw/clip-vit-large-patch14"
    for section, cuts in CUTS.items():
        exp.setdefault(section, {}).update(cuts)
    exp["scale"] = "rehearsal"
    # One machine: its GPUs (none on a CPU-only one), not the row's node.
    exp["resources"] = {**exp.get("resources", {}), "gpus": gpus, "gpu_model": None, "mem_gb": 8, "hours": 1}
    if tiny:
        exp["model"] = {**exp.get("model", {}), **TINY_MODEL}
    # The GPU-hour estimates of every row are scaled from one calibration row: it stays (and is not run).
    calibration = params["experiments"][CALIBRATION]
    params["experiments"] = {CALIBRATION: calibration} | {row: exp}
    kept = [params["experiments"][name] for name in params["experiments"]]
    params["datasets"] = {
        name: d for name, d in params["datasets"].items() if any(e["dataset"] == name for e in kept)
    }
    autoencoders = {e.get("autoencoder") for e in kept}
    params["autoencoders"] = {k: v for k, v in params["autoencoders"].items() if k in autoencoders}
    params["ablations"], params["classifiers"] = {}, {}
    params["targets"], params["quick_targets"] = [row], [row]
    return params


# --------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------


def project_files(root: Path) -> list[Path]:
    """The project's tracked files (what a fresh clone has)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    return [Path(name) for name in listed.decode().split("\0") if name and (root / name).is_file()]


def make_project(root: Path, dest: Path, params: dict) -> None:
    for name in project_files(root):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, dest / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=rehearsal", "-c", "user.email=rehearsal@localhost"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "rehearsal"]):
        subprocess.run([*git, *command], cwd=dest, check=True, capture_output=True)


def rehearse(
    row: str, out: Path, root: Path, per_class: int, tiny: bool | None, cores: int, log=print
) -> dict:
    """Write the row's synthetic inputs into a project copy at `out` and run its FID target there; `tiny`
    None: tiny widths on a machine without a GPU."""
    import torch

    gpus = min(torch.cuda.device_count(), 1)
    tiny = not gpus if tiny is None else tiny
    params = rehearsal_params(yaml.safe_load((root / "params.yaml").read_text()), row, tiny, gpus)
    exp = params["experiments"][row]
    dataset = params["datasets"][exp["dataset"]]
    if out.exists() and any(out.iterdir()):
        raise UserError(f"rehearse: {out} is not empty; give a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    make_project(root, out, params)
    started = time.perf_counter()
    writer, raw = RAW_WRITERS[dataset["source"]]
    writer(out / raw, dataset["resolution"], per_class)
    autoencoder = params["autoencoders"].get(exp.get("autoencoder") or "", {})
    if "pretrained" in autoencoder:
        write_random_autoencoder(out / autoencoder["pretrained"], autoencoder["latent_channels"], tiny)
    if "text_encoder" in dataset:
        write_random_text_encoder(out / dataset["text_encoder"], tiny)
    log(
        f"rehearse {row}: synthetic {dataset['source']} inputs written in {time.perf_counter() - started:.0f} s"
    )
    target = layout.fid_metrics(row)
    env = dict(os.environ, UVIT_SKIP_DVC_COMMIT="1")
    command = ["snakemake", "--cores", str(cores), target]
    log(f"rehearse {row}: {' '.join(command)} (in {out})")
    started = time.perf_counter()
    result = subprocess.run(command, cwd=out, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    (out / "rehearsal.log").write_text(result.stdout + result.stderr)
    if result.returncode:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise UserError(
            f"rehearse {row}: the DAG failed after {seconds:.0f} s (log: {out}/rehearsal.log)\n{tail}"
        )
    jobs = job_costs(out)
    summary = {"row": row, "tiny": tiny, "per_class": per_class, "seconds": round(seconds, 1), "jobs": jobs}
    (out / "rehearsal.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(f"rehearse {row}: the DAG ran in {seconds:.0f} s; {len(jobs)} jobs (wall s, peak RSS MiB):")
    for job in jobs:
        log(f"  {job['job']}: {job['seconds']:.1f} s, {job['max_rss_mib']:.0f} MiB")
    return summary


def job_costs(project: Path) -> list[dict]:
    """Each job's wall time and peak memory from the rules' Snakemake benchmark files."""
    jobs = []
    for path in sorted((project / "logs").rglob("*.benchmark.tsv")):
        header, values = (line.split("\t") for line in path.read_text().splitlines()[:2])
        row = dict(zip(header, values, strict=False))
        name = str(path.relative_to(project / "logs")).removesuffix(".benchmark.tsv")
        rss = float(row["max_rss"]) if row.get("max_rss", "NA") != "NA" else float("nan")
        jobs.append({"job": name, "seconds": float(row["s"]), "max_rss_mib": rss})
    return jobs
