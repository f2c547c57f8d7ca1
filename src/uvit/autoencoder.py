"""Latent space: a KL autoencoder (uvit.autoencoder_kl: the network of Stable Diffusion's KL-f8, in diffusers'
names and folder layout) and the encoding of a prepared dataset into posterior moments, as the authors store them
for latent U-ViTs.

The demo trains a small AutoencoderKL in the pipeline (no pretrained image autoencoder installs offline).
The paper's latent models use Stable Diffusion's KL-f8 autoencoder, which `load_autoencoder` reads from a
local path in any of its three published forms: a diffusers folder (config.json + weights), an original
Stable Diffusion checkpoint (.ckpt / .safetensors, keys under `first_stage_model.`), or the authors' converted
`autoencoder_kl.pth` (the same LDM key names without the prefix). The last two are mapped to diffusers' names
by diffusers' own converter. Encoding keeps the moments (mean and log-variance) of each image and of its
horizontal flip, so training can draw a fresh posterior sample at every step; the latent scale factor is
measured as 1 / std of the means.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from uvit.autoencoder_kl import AutoencoderError, AutoencoderKL
from uvit.shards import (
    labelled_rows,
    load_split,
    read_manifest,
    read_shards,
    rechunk,
    write_manifest,
    write_shards,
)

# Pixels per encoding batch: 4,096 images at 32 x 32, 64 at 256 x 256, 16 at 512 x 512. A fixed count of 500
# held 7.2 GB of activations for 256-pixel images in a 16-channel autoencoder (uvit rehearse imagenet256_uvit_h2).
ENCODE_PIXELS = 1 << 22
SPACE_TO_DEPTH_FILE = "space_to_depth.json"  # beside diffusers' config.json: the pixel (un)shuffle factor


class SpaceToDepth(torch.nn.Module):
    """An AutoencoderKL that sees each f x f pixel block as f*f channels (pixel_unshuffle) and decodes back
    (pixel_shuffle): the same downsampling with every convolution at the lower resolution, where CPU
    convolutions of few channels are several times faster. The encode/decode interface of AutoencoderKL."""

    def __init__(self, inner, factor: int):
        super().__init__()
        self.inner, self.factor = inner, factor

    def encode(self, x: torch.Tensor):
        return self.inner.encode(torch.nn.functional.pixel_unshuffle(x, self.factor))

    def decode(self, z: torch.Tensor):
        out = self.inner.decode(z)
        out.sample = torch.nn.functional.pixel_shuffle(out.sample, self.factor)
        return out

    def save_pretrained(self, out_dir) -> None:
        self.inner.save_pretrained(out_dir)
        (Path(out_dir) / SPACE_TO_DEPTH_FILE).write_text(json.dumps({"factor": self.factor}) + "\n")


def build_autoencoder(cfg: dict, channels: int, resolution: int):
    """A small AutoencoderKL from a params.yaml `autoencoders` entry (with its space-to-depth factor)."""
    factor = cfg["space_to_depth"]
    model = AutoencoderKL(
        in_channels=channels * factor**2,
        out_channels=channels * factor**2,
        block_out_channels=tuple(cfg["block_channels"]),
        layers_per_block=cfg["layers_per_block"],
        latent_channels=cfg["latent_channels"],
        norm_num_groups=min(32, math.gcd(*cfg["block_channels"])),
        sample_size=resolution // factor,
    )
    return SpaceToDepth(model, factor) if factor > 1 else model


def to_unit_range(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x C -> float N x C x H x W in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float N x C x H x W in [-1, 1] -> uint8 N x H x W x C (round to nearest)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def train_autoencoder(
    cfg: dict, data_dir: Path, out_dir: Path, log=print, reference: Path | None = None
) -> dict:
    """Train the autoencoder on the prepared training split (MSE + kl_weight * KL); return its held-out metrics
    (with the FID floor at the same count when `reference`, the FID reference statistics, is given)."""
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
    metrics = reconstruction_metrics(model, data_dir / "test", cfg["eval_images"], reference=reference)
    log(f"autoencoder: {json.dumps(metrics)}")
    return metrics


@torch.no_grad()
def reconstruction_metrics(
    model, split_dir: Path, count: int, batch_size: int = 250, reference: Path | None = None
) -> dict:
    """Quality of reconstructions (from the posterior mean) of held-out images: PSNR (dB, on uint8 images)
    and reconstruction FID (rFID: reconstructions against the originals, Inception features as for FID).
    At a few hundred images rFID is biased upward, so with the FID `reference` statistics the same feature pass
    also gives the yardstick at this count: `floor_fid`, the originals against the reference (held-out real
    images scored as samples are), and `reconstructions_fid`, the reconstructions against it (what a latent
    model that drew exactly these latents would score)."""
    from uvit.fid import (
        InceptionFeatureExtractor,
        feature_statistics,
        frechet_distance_to_features,
        load_reference,
        recorded_protocol,
    )

    images, _ = load_split(split_dir, limit=count)
    model.eval()
    recon = np.concatenate(
        [
            to_uint8(
                model.decode(
                    model.encode(to_unit_range(images[i : i + batch_size])).latent_dist.mode()
                ).sample
            )
            for i in range(0, len(images), batch_size)
        ]
    )
    mse = np.mean((recon.astype(np.float64) - images.astype(np.float64)) ** 2, axis=(1, 2, 3))
    psnr = float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))
    protocol_name = (recorded_protocol(reference) or "clean") if reference is not None else "clean"
    extractor = InceptionFeatureExtractor(protocol_name=protocol_name)
    original_features = extractor.features(images, desc="originals")
    recon_features = extractor.features(recon, desc="reconstructions")
    rfid = frechet_distance_to_features(recon_features, *feature_statistics(original_features))
    metrics = {"heldout_images": len(images), "psnr_db": round(psnr, 3), "rfid": round(rfid, 4)}
    if reference is not None:
        ref = load_reference(reference, ("fid",), protocol_name=protocol_name)
        metrics["floor_fid"] = round(
            frechet_distance_to_features(original_features, ref["mu"], ref["sigma"]), 4
        )
        metrics["reconstructions_fid"] = round(
            frechet_distance_to_features(recon_features, ref["mu"], ref["sigma"]), 4
        )
        metrics["fid_protocol"] = protocol_name
    return metrics


# Stable Diffusion's KL-f8 autoencoder (the LDM "kl-f8" first stage): 3 -> 4 x H/8 x W/8.
SD_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=256,
)
SD_CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")


def load_autoencoder(path: str | Path):
    """An AutoencoderKL from a diffusers folder, an original SD checkpoint or the authors' autoencoder_kl.pth."""
    path = Path(path)
    if path.is_dir():
        model = AutoencoderKL.from_pretrained(path)
        if (path / SPACE_TO_DEPTH_FILE).is_file():
            factor = json.loads((path / SPACE_TO_DEPTH_FILE).read_text())["factor"]
            return SpaceToDepth(model.eval().requires_grad_(False), factor)
    elif path.is_file() and path.suffix in SD_CHECKPOINT_SUFFIXES:
        model = AutoencoderKL.from_state_dict(SD_VAE_CONFIG, ldm_vae_state_dict(path))
    else:
        raise AutoencoderError(
            f"{path}: not found or not an autoencoder. Expected a diffusers folder (config.json + "
            f"diffusion_pytorch_model.safetensors) or a checkpoint file ({', '.join(SD_CHECKPOINT_SUFFIXES)})"
        )
    return model.eval().requires_grad_(False)


def import_autoencoder(source: str | Path, out_dir: str | Path) -> None:
    """A published autoencoder in any form load_autoencoder reads, stored as one diffusers folder."""
    load_autoencoder(source).save_pretrained(str(out_dir))


def ldm_vae_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The KL-f8 weights of an LDM-format file, renamed to diffusers' AutoencoderKL (loaded weights-only)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for refused pickles
            raise AutoencoderError(
                f"{path}: refused to unpickle ({str(err).splitlines()[0]}). Checkpoints that carry Python "
                "objects are not loaded; use the .safetensors release of the same weights"
            ) from None
    state = state.get("state_dict", state)
    converted = convert_ldm_vae_checkpoint(state, SD_VAE_CONFIG)
    if "encoder.conv_in.weight" not in converted:
        raise AutoencoderError(f"{path}: no KL-f8 autoencoder weights (encoder.conv_in.weight) found in it")
    return converted


@torch.no_grad()
def encode_dataset(
    ae_dir: Path,
    data_dir: Path,
    out_dir: Path,
    batch_size: int | None = None,
    shard_size: int = 20000,
    scale_factor: float | None = None,
    flips: bool = True,
    log=print,
) -> dict:
    """Encode the training split: moments of each image and its flip, N x 2 x 2C x h x w float32 shards (without
    `flips`, of each image only: N x 1 x 2C x h x w, for training without horizontal flips).

    The latent scale factor is measured (1 / std of the posterior means) unless given: the authors use
    0.18215 for Stable Diffusion's KL-f8 on ImageNet and 0.23010 on MS-COCO."""
    model = load_autoencoder(ae_dir)
    images, labels, _ = labelled_rows(data_dir / "train", "images", "prepare_data")  # read batch by batch
    height, width, _ = images.row_shape
    batch_size = batch_size or max(1, ENCODE_PIXELS // (height * width))
    out_dir.mkdir(parents=True, exist_ok=True)
    means, start = RunningMoments(), time.perf_counter()

    def encoded():
        for i in tqdm(range(0, len(images), batch_size), desc="encode", mininterval=5):
            rows = np.arange(i, min(i + batch_size, len(images)))
            x = to_unit_range(images.take(rows))
            versions = (x, x.flip(3)) if flips else (x,)
            pair = torch.stack([model.encode(v).latent_dist.parameters for v in versions], 1).numpy()
            means.add(pair[:, :, : pair.shape[2] // 2])
            yield pair, labels[rows]

    shards = []
    for index, (moments, block_labels) in enumerate(rechunk(encoded(), shard_size)):
        blocks = {"moments": moments, "labels": block_labels}
        shards += write_shards(out_dir, blocks, shard_size, first_index=index)
    seconds = time.perf_counter() - start
    log(
        f"encode: {len(images)} images{' (and their flips)' if flips else ''} in {seconds:.1f} s, "
        f"{len(images) / seconds:.1f} images/s"
    )
    measured = 1.0 / means.std()  # 1 / std of the posterior means
    manifest = {
        "count": len(images),
        "moments_shape": list(moments.shape[1:]),
        "scale_factor": float(scale_factor) if scale_factor else measured,
        "scale_factor_source": "config" if scale_factor else "measured: 1 / std of the posterior means",
        "measured_scale_factor": measured,
        "shards": shards,
    }
    write_manifest(out_dir, manifest)
    return manifest


class RunningMoments:
    """Mean and standard deviation of every value of a stream of arrays, in float64 (Chan et al.'s merge)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, values: np.ndarray) -> None:
        values = values.astype(np.float64).ravel()
        count, mean = len(values), float(values.mean())
        m2, delta, total = float(((values - mean) ** 2).sum()), mean - self.mean, self.count + len(values)
        self.m2 += m2 + delta**2 * self.count * count / total
        self.mean += delta * count / total
        self.count = total

    def std(self) -> float:
        return math.sqrt(self.m2 / self.count)


def load_latents(latent_dir: Path) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Moments (N x 2 x 2C x h x w), labels and the scale factor of an encoded dataset (md5-checked)."""
    manifest = read_manifest(latent_dir)
    arrays = read_shards(latent_dir, manifest, "encode_latents")
    return torch.from_numpy(arrays["moments"]), torch.from_numpy(arrays["labels"]), manifest["scale_factor"]
