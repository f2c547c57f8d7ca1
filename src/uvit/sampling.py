"""Sampling stage: a folder of PNG samples from the EMA weights, one file per seed index.

Sample i is drawn from generators seeded with (sampling.seed, i), so it does not depend on the batch size or
the number of processes; files are written atomically and existing ones are skipped, so a killed run resumes
without gaps or duplicates. Under torchrun, process r of N draws the missing samples whose index is r mod N (on GPU r
when there are GPUs). Conditional experiments draw sample i for class i mod num_classes (balanced classes) or for
caption i mod N (uvit.conditioning). `export_npz` packs a folder into the .npz layout of the ADM evaluation suite.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm import tqdm

from uvit.autoencoder import load_autoencoder, to_uint8
from uvit.checkpoints import CheckpointError, check_state_dict, read_torch_file
from uvit.conditioning import Conditions, classes_of_rows
from uvit.config import settings_hash, text_tokens
from uvit.devices import placement
from uvit.diffusion import SeededNoise, guided_noise_predictor, make_schedule, sample
from uvit.errors import UserError
from uvit.fileio import atomic_write_bytes, atomic_writer, md5_file
from uvit.model import model_for
from uvit.precision import autocast, choose
from uvit.shards import num_classes, read_manifest


def sample_name(index: int) -> str:
    return f"{index:06d}.png"


def read_samples(sample_dir: Path, channels: int) -> tuple[list[int], np.ndarray]:
    """(seed indices, uint8 N x H x W x C images) of a sample folder, in index order; C = `channels` (1: grey)."""
    files = sorted(p for p in Path(sample_dir).glob("*.png") if p.stem.isdigit())
    if not files:
        raise FileNotFoundError(f"{sample_dir}: no PNG samples found; give the folder `uvit sample` wrote")
    images = []
    for f in files:
        with Image.open(f) as image:
            pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
        images.append(pixels[..., None] if channels == 1 else pixels)
        if images[-1].shape != images[0].shape:
            raise UserError(
                f"{f}: {images[-1].shape[:2]} pixels, {files[0]} has {images[0].shape[:2]}; re-run sample"
            )
    return [int(f.stem) for f in files], np.stack(images)


RECORD = "sampling.json"  # in a sample folder: what its samples were drawn with
SETTINGS_CHUNK = "uvit-sampling"  # in each sample: the hash of that record


def write_png(path: Path, image: np.ndarray, settings: str | None = None) -> None:
    """Write an H x W x C uint8 image (grey when C == 1) atomically, with the hash of its settings if given."""
    buffer = io.BytesIO()
    info = PngInfo()
    if settings:
        info.add_text(SETTINGS_CHUNK, settings)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG", pnginfo=info)
    atomic_write_bytes(path, buffer.getvalue())


def sampling_record(exp: dict, model_path: Path, steps: int | None, precision: str) -> dict:
    """What a sample folder's images depend on besides their index."""
    cfg = exp["sampling"]
    return {
        "experiment": exp["name"],
        "model_md5": md5_file(model_path),
        "sampler": cfg["sampler"],
        "order": cfg["order"],
        "steps": steps or cfg["steps"],
        "guidance_scale": cfg["guidance_scale"],
        "seed": cfg["seed"],
        "precision": precision,  # as run (auto resolved on this machine)
    }


def sample_is_current(path: Path, settings: str) -> bool:
    """A sample counts only if it decodes completely and was drawn with these settings (its PNG text chunk)."""
    try:
        with Image.open(path) as image:
            image.load()
            return getattr(image, "text", {}).get(SETTINGS_CHUNK) == settings
    except (OSError, SyntaxError, ValueError):
        return False


def clear_stale_samples(out_dir: Path, record: dict, rank: int, world: int, log) -> None:
    """Remove this process's samples that were drawn with other settings (or are unreadable), saying why."""
    path = out_dir / RECORD
    try:
        previous = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        previous = "unreadable"
    files = [p for p in sorted(out_dir.glob("*.png")) if p.stem.isdigit() and int(p.stem) % world == rank]
    if files and previous != record:
        changed = (
            ", ".join(f"{k} {previous.get(k)!r} -> {v!r}" for k, v in record.items() if previous.get(k) != v)
            if isinstance(previous, dict)
            else f"{RECORD} {previous or 'missing'}"
        )
        log(f"{out_dir}: samples drawn with other settings ({changed}); drawing them again")
    settings = settings_hash(record)
    stale = [p for p in files if not sample_is_current(p, settings)]
    for p in stale:
        p.unlink()
    if stale:
        log(f"{out_dir}: removed {len(stale)} samples drawn with other settings or unreadable")
    atomic_write_bytes(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


def load_ema_model(
    exp: dict,
    model_path: Path,
    data_shape: tuple[int, ...],
    classes: int,
    context_shape: tuple[int, int] | None = None,
) -> torch.nn.Module:
    """The experiment's U-ViT with the EMA weights (a plain state_dict, loaded weights-only and strict)."""
    model = model_for(exp, data_shape, classes, context_shape)
    state = read_torch_file(model_path, f"the EMA weights (nnet_ema.pth) of {exp['name']}")
    check_state_dict(model_path, state, model, exp["name"])
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def model_for_weights(params: dict, exp: dict, state: dict) -> torch.nn.Module:
    """The experiment's U-ViT, taking from the weights only the sizes params.yaml leaves to the prepared data
    (image channels of a pixel model, number of classes, text encoder width)."""
    side, patch = exp["derived"]["input_size"], exp["model"]["patch_size"]
    if exp["space"] == "latent":
        channels = exp["derived"]["latent_shape"][0]
    else:
        pred = state.get("decoder_pred.weight")
        channels = max(1, pred.shape[0] // patch**2) if isinstance(pred, torch.Tensor) else 3
    label_emb = state.get("label_emb.weight")
    classes = classes_of_rows(exp, label_emb.shape[0]) if isinstance(label_emb, torch.Tensor) else 1
    context = None
    if exp["condition"] == "text":
        embed = state.get("context_embed.weight")
        width = embed.shape[1] if isinstance(embed, torch.Tensor) else 1
        context = (text_tokens(params["datasets"][exp["dataset"]]), width)
    return model_for(exp, (channels, side, side), max(classes, 1), context)


def weights_geometry(params: dict, exp: dict, model_path: Path) -> tuple[int, tuple[int, ...]]:
    """(classes, data shape) of released weights, for evaluating them without the prepared dataset."""
    state = read_torch_file(model_path, f"the EMA weights (nnet_ema.pth) of {exp['name']}")
    model = model_for_weights(params, exp, state)
    classes = classes_of_rows(exp, model.label_emb.num_embeddings) if hasattr(model, "label_emb") else 1
    side = exp["derived"]["input_size"]
    return classes, (model.in_chans, side, side)


def import_weights(source: Path, out: Path, params: dict, exp: dict) -> None:
    """Check released EMA weights (a plain state_dict, read weights-only) against the experiment's model, key by
    key and shape by shape, and store a copy."""
    if not source.is_file():
        raise FileNotFoundError(
            f"{source}: no such file (evaluation.pretrained_weights: the authors' nnet_ema.pth)"
        )
    state = read_torch_file(source, f"the EMA weights (nnet_ema.pth) of {exp['name']}")
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{source}: not a state_dict; expected the EMA weights (nnet_ema.pth) of {exp['name']}"
        )
    check_state_dict(source, state, model_for_weights(params, exp, state), exp["name"])
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
        weights_geometry: tuple[int, tuple[int, ...]] | None = None,
    ):
        """Latent experiments read the latent shape and scale from the encoded latents, or, without them
        (a pretrained autoencoder, evaluation only), take `latent_geometry` = (shape, scale factor). Without
        the prepared dataset (released weights), classes and image shape come from `weights_geometry`."""
        self.exp, self.cfg, self.device = exp, exp["sampling"], torch.device(device)
        if data_dir is None:
            self.classes, pixel_shape = weights_geometry
        else:
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
        elif data_dir is None:
            self.data_shape = pixel_shape
        else:
            height, width, channels = read_manifest(data_dir / "train")["shape"]
            self.data_shape = (channels, height, width)
        self.conditions = Conditions(exp, self.classes, text_dir, purpose="samples for")
        self.schedule = make_schedule(exp["diffusion"]["schedule"])
        self.precision = choose(self.cfg["precision"], self.device, "sampling.precision", log)

    def load(self, model_path: Path) -> torch.nn.Module:
        context_shape = self.conditions.context_shape
        return load_ema_model(self.exp, model_path, self.data_shape, self.classes, context_shape).to(
            self.device
        )

    @torch.no_grad()
    def images(self, model: torch.nn.Module, indices: list[int], steps: int | None = None) -> np.ndarray:
        """uint8 N x H x W x C samples of these seed indices (`steps` overrides sampling.steps)."""
        cfg, conditions = self.cfg, self.conditions
        labels = conditions.of_samples(indices)
        eps_fn = guided_noise_predictor(model, self.schedule, labels, conditions.null, cfg["guidance_scale"])
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
    data_dir: Path | None,
    out_dir: Path,
    ae_dir: Path | None = None,
    latent_dir: Path | None = None,
    steps: int | None = None,
    latent_geometry: tuple[tuple[int, ...], float] | None = None,
    text_dir: Path | None = None,
    log=print,
    weights_geometry: tuple[int, tuple[int, ...]] | None = None,
) -> None:
    """Draw `sampling.num_samples` images into out_dir (resumes a partial folder); `steps` overrides
    sampling.steps (FID over sampler steps)."""
    cfg = exp["sampling"]
    rank, world, device = placement()  # sampling needs no process group: ranks split samples by index
    sampler = ImageSampler(
        exp, data_dir, ae_dir, latent_dir, device, latent_geometry, text_dir, log, weights_geometry
    )
    model = sampler.load(model_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = sampling_record(exp, model_path, steps, sampler.precision)
    clear_stale_samples(out_dir, record, rank, world, log)
    settings = settings_hash(record)
    missing = [i for i in range(cfg["num_samples"]) if not (out_dir / sample_name(i)).exists()]
    if len(missing) < cfg["num_samples"]:
        log(f"resuming: {cfg['num_samples'] - len(missing)} samples already in {out_dir}")
    todo = [i for i in missing if i % world == rank]  # by index: ranks agree whenever each one starts
    start = time.perf_counter()
    for begin in tqdm(range(0, len(todo), cfg["batch_size"]), desc=f"sample {exp['name']}", mininterval=5):
        indices = todo[begin : begin + cfg["batch_size"]]
        for index, image in zip(indices, sampler.images(model, indices, steps), strict=True):
            write_png(out_dir / sample_name(index), image, settings)
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
