"""Sampling stage: a folder of PNG samples from the EMA weights, one file per seed index.

Sample i is drawn from generators seeded with (sampling.seed, i), so it does not depend on the batch size or
the number of processes; files are written atomically and existing ones are skipped, so a killed run resumes
without gaps or duplicates. Under torchrun, process r of N draws the missing samples whose index is r mod N (on GPU r
when there are GPUs). Class-conditional experiments draw class i mod num_classes for sample i (balanced
classes). `export_npz` packs a folder into the .npz layout of the ADM evaluation suite.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from uvit.autoencoder import load_autoencoder, to_uint8
from uvit.data import atomic_write_bytes, atomic_writer, num_classes, read_manifest
from uvit.diffusion import SeededNoise, guided_noise_predictor, make_schedule, sample
from uvit.training import model_for, placement


def sample_name(index: int) -> str:
    return f"{index:06d}.png"


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an H x W x C uint8 image (grey when C == 1) atomically."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def load_ema_model(exp: dict, model_path: Path, data_shape: tuple[int, ...], classes: int) -> torch.nn.Module:
    """The experiment's U-ViT with the EMA weights (a plain state_dict, loaded weights-only and strict)."""
    model = model_for(exp, data_shape, classes)
    model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True), strict=True)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def sample_experiment(
    exp: dict,
    model_path: Path,
    data_dir: Path,
    out_dir: Path,
    ae_dir: Path | None = None,
    latent_dir: Path | None = None,
    log=print,
) -> None:
    """Draw `sampling.num_samples` images into out_dir (resumes a partial folder)."""
    cfg = exp["sampling"]
    classes = num_classes(data_dir / "train")
    manifest = read_manifest(data_dir / "train")
    decoder, scale = None, 1.0
    if exp["space"] == "latent":
        decoder = load_autoencoder(ae_dir)
        latent = read_manifest(latent_dir)
        scale = latent["scale_factor"]
        data_shape = (latent["moments_shape"][1] // 2, *latent["moments_shape"][2:])
    else:
        height, width, channels = manifest["shape"]
        data_shape = (channels, height, width)
    rank, world, device = placement()  # sampling needs no process group: ranks split samples by index
    model = load_ema_model(exp, model_path, data_shape, classes).to(device)
    if decoder is not None:
        decoder = decoder.to(device)
    conditional = exp["condition"] == "class"
    null_class = classes if exp["training"]["cond_drop_prob"] > 0 else None
    schedule = make_schedule(exp["diffusion"]["schedule"])

    out_dir.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(cfg["num_samples"]) if not (out_dir / sample_name(i)).exists()]
    if len(missing) < cfg["num_samples"]:
        log(f"resuming: {cfg['num_samples'] - len(missing)} samples already in {out_dir}")
    todo = [i for i in missing if i % world == rank]  # by index: ranks agree whenever each one starts
    start = time.perf_counter()
    for begin in tqdm(range(0, len(todo), cfg["batch_size"]), desc=f"sample {exp['name']}", mininterval=5):
        indices = todo[begin : begin + cfg["batch_size"]]
        labels = torch.tensor([i % classes for i in indices]) if conditional else None
        eps_fn = guided_noise_predictor(model, schedule, labels, null_class, cfg["guidance_scale"])
        noise = SeededNoise(cfg["seed"], indices, data_shape, device)
        # Autocast reaches only the network: the solver's arithmetic stays in fp32.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg["precision"] == "bf16"):
            x = sample(eps_fn, schedule, noise, cfg["sampler"], cfg["steps"], cfg["order"])
        if decoder is not None:
            x = decoder.decode(x / scale).sample
        for index, image in zip(indices, to_uint8(x.cpu()), strict=True):
            write_png(out_dir / sample_name(index), image)
    if todo:
        seconds = time.perf_counter() - start
        log(f"{exp['name']}: {len(todo)} samples in {seconds:.1f} s ({len(todo) / seconds:.2f} images/s)")


def sample_grid(sample_dir: Path, out_path: Path, rows: int = 8, cols: int = 8) -> None:
    """A rows x cols grid of the first samples, as a PNG for the report."""
    files = sorted(sample_dir.glob("*.png"))[: rows * cols]
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    height, width, _ = images[0].shape
    grid = np.full((rows * (height + 2) + 2, cols * (width + 2) + 2, 3), 255, dtype=np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, cols)
        grid[
            2 + r * (height + 2) : 2 + r * (height + 2) + height,
            2 + c * (width + 2) : 2 + c * (width + 2) + width,
        ] = image
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scale = max(1, 256 // (cols * width))
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(out_path)


def export_npz(sample_dir: Path, out_path: Path) -> int:
    """All samples of a folder, in index order, as `arr_0` (N x H x W x 3 uint8): the ADM evaluator's layout."""
    files = sorted(Path(sample_dir).glob("*.png"))
    if not files:
        raise FileNotFoundError(f"{sample_dir}: no PNG samples to export")
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(out_path) as f:
        np.savez(f, arr_0=images)
    return len(images)
