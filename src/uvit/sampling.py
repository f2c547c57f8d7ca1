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
from uvit.precision import autocast, choose
from uvit.text import Contexts
from uvit.training import model_for, placement


def sample_name(index: int) -> str:
    return f"{index:06d}.png"


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an H x W x C uint8 image (grey when C == 1) atomically."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def load_ema_model(
    exp: dict,
    model_path: Path,
    data_shape: tuple[int, ...],
    classes: int,
    context_shape: tuple[int, int] | None = None,
) -> torch.nn.Module:
    """The experiment's U-ViT with the EMA weights (a plain state_dict, loaded weights-only and strict)."""
    model = model_for(exp, data_shape, classes, context_shape)
    model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True), strict=True)
    return model.eval().requires_grad_(False)


def import_weights(source: Path, out: Path) -> None:
    """Check the authors' released EMA weights (a plain state_dict, read weights-only) and store a copy."""
    if not source.is_file():
        raise FileNotFoundError(
            f"{source}: no such file (evaluation.pretrained_weights: the authors' nnet_ema.pth)"
        )
    state = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source}: not a state_dict of tensors (expected the authors' nnet_ema.pth)")
    atomic_write_bytes(out, source.read_bytes())


class ImageSampler:
    """The experiment's sampler, guidance and decoder around a U-ViT: seed indices in, uint8 images out.

    Sample i starts from the noise of seed (sampling.seed, i) and, for class models, has class i mod classes;
    for text models, caption i mod N of the encoded captions given (the held-out split's, as the paper samples
    MS-COCO validation captions).
    """

    def __init__(
        self,
        exp: dict,
        data_dir: Path,
        ae_dir: Path | None = None,
        latent_dir: Path | None = None,
        device: torch.device | str = "cpu",
        latent_geometry: tuple[tuple[int, ...], float] | None = None,
        text_dir: Path | None = None,
        log=print,
    ):
        """Latent experiments read the latent shape and scale from the encoded latents, or, without them
        (a pretrained autoencoder, evaluation only), take `latent_geometry` = (shape, scale factor)."""
        self.exp, self.cfg, self.device = exp, exp["sampling"], torch.device(device)
        self.classes = num_classes(data_dir / "train")
        self.decoder, self.scale = None, 1.0
        if exp["space"] == "latent":
            self.decoder = load_autoencoder(ae_dir).to(self.device)
            if latent_dir is not None:
                latent = read_manifest(latent_dir)
                self.scale = latent["scale_factor"]
                self.data_shape = (latent["moments_shape"][1] // 2, *latent["moments_shape"][2:])
            else:
                self.data_shape, self.scale = latent_geometry
        else:
            height, width, channels = read_manifest(data_dir / "train")["shape"]
            self.data_shape = (channels, height, width)
        self.null_class = self.classes if exp["training"]["cond_drop_prob"] > 0 else None
        self.contexts = None
        if exp["condition"] == "text":
            if text_dir is None:
                raise ValueError(f"{exp['name']}: a text experiment samples from encoded captions (--text)")
            self.contexts = Contexts(text_dir)
            self.null_class = self.contexts.null
        self.schedule = make_schedule(exp["diffusion"]["schedule"])
        self.precision = choose(self.cfg["precision"], self.device, "sampling.precision", log)

    def load(self, model_path: Path) -> torch.nn.Module:
        context_shape = self.contexts.shape if self.contexts is not None else None
        return load_ema_model(self.exp, model_path, self.data_shape, self.classes, context_shape).to(
            self.device
        )

    @torch.no_grad()
    def images(self, model: torch.nn.Module, indices: list[int], steps: int | None = None) -> np.ndarray:
        """uint8 N x H x W x C samples of these seed indices (`steps` overrides sampling.steps)."""
        cfg = self.cfg
        labels = None
        if self.exp["condition"] == "class":
            labels = torch.tensor([i % self.classes for i in indices])
        elif self.contexts is not None:
            labels = self.contexts.cycled(indices)
        eps_fn = guided_noise_predictor(model, self.schedule, labels, self.null_class, cfg["guidance_scale"])
        noise = SeededNoise(cfg["seed"], indices, self.data_shape, self.device)
        # Autocast reaches only the network: the solver's arithmetic stays in fp32.
        with autocast(self.precision, self.device):
            x = sample(eps_fn, self.schedule, noise, cfg["sampler"], steps or cfg["steps"], cfg["order"])
        if self.decoder is not None:
            x = self.decoder.decode(x / self.scale).sample
        return to_uint8(x.cpu())


@torch.no_grad()
def sample_experiment(
    exp: dict,
    model_path: Path,
    data_dir: Path,
    out_dir: Path,
    ae_dir: Path | None = None,
    latent_dir: Path | None = None,
    steps: int | None = None,
    latent_geometry: tuple[tuple[int, ...], float] | None = None,
    text_dir: Path | None = None,
    log=print,
) -> None:
    """Draw `sampling.num_samples` images into out_dir (resumes a partial folder); `steps` overrides
    sampling.steps (FID over sampler steps)."""
    cfg = exp["sampling"]
    rank, world, device = placement()  # sampling needs no process group: ranks split samples by index
    sampler = ImageSampler(exp, data_dir, ae_dir, latent_dir, device, latent_geometry, text_dir, log)
    model = sampler.load(model_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(cfg["num_samples"]) if not (out_dir / sample_name(i)).exists()]
    if len(missing) < cfg["num_samples"]:
        log(f"resuming: {cfg['num_samples'] - len(missing)} samples already in {out_dir}")
    todo = [i for i in missing if i % world == rank]  # by index: ranks agree whenever each one starts
    start = time.perf_counter()
    for begin in tqdm(range(0, len(todo), cfg["batch_size"]), desc=f"sample {exp['name']}", mininterval=5):
        indices = todo[begin : begin + cfg["batch_size"]]
        for index, image in zip(indices, sampler.images(model, indices, steps), strict=True):
            write_png(out_dir / sample_name(index), image)
    if todo:
        seconds = time.perf_counter() - start
        log(f"{exp['name']}: {len(todo)} samples in {seconds:.1f} s ({len(todo) / seconds:.2f} images/s)")


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
