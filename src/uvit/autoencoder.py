"""Latent space: a KL autoencoder (diffusers' AutoencoderKL, the class of Stable Diffusion's KL-f8) and the
encoding of a prepared dataset into posterior moments, as the authors store them for latent U-ViTs.

The demo trains a small AutoencoderKL in the pipeline (no pretrained image autoencoder installs offline).
Encoding keeps the moments (mean and log-variance) of each image and of its horizontal flip, so training can
draw a fresh posterior sample at every step; the latent scale factor is measured as 1 / std of the means.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from uvit.data import load_split, read_manifest, read_shards, write_manifest, write_shards


def build_autoencoder(cfg: dict, channels: int, resolution: int):
    """A small AutoencoderKL from a params.yaml `autoencoders` entry."""
    from diffusers import AutoencoderKL

    blocks = len(cfg["block_channels"])
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=tuple(cfg["block_channels"]),
        layers_per_block=cfg["layers_per_block"],
        latent_channels=cfg["latent_channels"],
        norm_num_groups=min(32, math.gcd(*cfg["block_channels"])),
        sample_size=resolution,
    )


def to_unit_range(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x C -> float N x C x H x W in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float N x C x H x W in [-1, 1] -> uint8 N x H x W x C (round to nearest)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def train_autoencoder(cfg: dict, data_dir: Path, out_dir: Path, log=print) -> dict:
    """Train the autoencoder on the prepared training split (MSE + kl_weight * KL); return its metrics."""
    torch.manual_seed(cfg["seed"])
    images, _ = load_split(data_dir / "train")
    x_all = to_unit_range(images)
    model = build_autoencoder(cfg, x_all.shape[1], x_all.shape[2])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.0)
    generator = torch.Generator().manual_seed(cfg["seed"])
    start = time.perf_counter()
    progress = tqdm(range(cfg["steps"]), desc="autoencoder", mininterval=5)
    for step in progress:
        x = x_all[torch.randint(len(x_all), (cfg["batch_size"],), generator=generator)]
        posterior = model.encode(x).latent_dist
        reconstruction = model.decode(posterior.sample(generator=generator)).sample
        loss = (reconstruction - x).pow(2).mean() + cfg["kl_weight"] * posterior.kl().mean() / x[0].numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            progress.set_postfix(loss=f"{loss.item():.4f}")
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    # Timings go to the log, not the metrics: artifacts stay byte-identical across runs.
    log(f"autoencoder: {seconds:.1f} s, {cfg['steps'] * cfg['batch_size'] / seconds:.1f} images/s")
    metrics = reconstruction_metrics(model, data_dir / "test", cfg["eval_images"])
    log(f"autoencoder: {json.dumps(metrics)}")
    return metrics


@torch.no_grad()
def reconstruction_metrics(model, split_dir: Path, count: int) -> dict:
    """PSNR (dB, on uint8 images) of reconstructions of held-out images, from the posterior mean."""
    images, _ = load_split(split_dir, limit=count)
    model.eval()
    recon = to_uint8(model.decode(model.encode(to_unit_range(images)).latent_dist.mode()).sample)
    mse = np.mean((recon.astype(np.float64) - images.astype(np.float64)) ** 2, axis=(1, 2, 3))
    psnr = float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))
    return {"heldout_images": len(images), "psnr_db": round(psnr, 3)}


def load_autoencoder(path: str | Path):
    from diffusers import AutoencoderKL

    model = AutoencoderKL.from_pretrained(str(path))
    return model.eval().requires_grad_(False)


@torch.no_grad()
def encode_dataset(
    ae_dir: Path, data_dir: Path, out_dir: Path, batch_size: int = 500, shard_size: int = 20000, log=print
) -> dict:
    """Encode the training split: moments of each image and its flip, N x 2 x 2C x h x w float32 shards."""
    model = load_autoencoder(ae_dir)
    images, labels = load_split(data_dir / "train")
    out_dir.mkdir(parents=True, exist_ok=True)
    moments, start = [], time.perf_counter()
    for i in tqdm(range(0, len(images), batch_size), desc="encode", mininterval=5):
        x = to_unit_range(images[i : i + batch_size])
        pair = torch.stack(
            [model.encode(x).latent_dist.parameters, model.encode(x.flip(3)).latent_dist.parameters], 1
        )
        moments.append(pair.numpy())
    log(f"encode: {len(images)} images in {time.perf_counter() - start:.1f} s")
    moments = np.concatenate(moments)
    means = moments[:, :, : moments.shape[2] // 2]
    shards = write_shards(out_dir, {"moments": moments, "labels": labels}, shard_size)
    manifest = {
        "count": len(moments),
        "moments_shape": list(moments.shape[1:]),
        "scale_factor": float(1.0 / means.std()),
        "shards": shards,
    }
    write_manifest(out_dir, manifest)
    return manifest


def load_latents(latent_dir: Path) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Moments (N x 2 x 2C x h x w), labels and the scale factor of an encoded dataset (md5-checked)."""
    manifest = read_manifest(latent_dir)
    arrays = read_shards(latent_dir, manifest, "encode_latents")
    return torch.from_numpy(arrays["moments"]), torch.from_numpy(arrays["labels"]), manifest["scale_factor"]
