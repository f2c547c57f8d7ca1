"""Sample grids drawn during training (training.sample_every): 64 samples (seeds 0..63, the experiment's sampler)
as an 8x8 grid in <run>/progress/step-<step>.png, so a long run can be watched while it learns."""

from __future__ import annotations

from pathlib import Path

from uvit import layout
from uvit.devices import placement
from uvit.errors import UserError
from uvit.figures import grid_pixels
from uvit.sampling import ImageSampler, write_png

GRID = 8  # rows and columns


def training_previews(
    exp: dict,
    data_dir: Path,
    run_dir: Path,
    ae_dir: Path | None = None,
    latent_dir: Path | None = None,
    text_dir: Path | None = None,
):
    """The callback uvit.training.train calls with (step, EMA model) every training.sample_every steps."""
    if exp["space"] == "latent" and ae_dir is None:
        raise UserError(
            f"experiments.{exp['name']}.training.sample_every: previews of a latent experiment need its decoder; "
            "give --autoencoder-dir"
        )
    sampler = ImageSampler(
        exp, data_dir, ae_dir=ae_dir, latent_dir=latent_dir, device=placement()[2], text_dir=text_dir
    )
    progress_dir = run_dir / layout.PROGRESS
    progress_dir.mkdir(parents=True, exist_ok=True)

    def preview(step, ema):
        images = sampler.images(ema, list(range(GRID * GRID)))
        if images.shape[-1] == 1:
            images = images.repeat(3, axis=-1)
        write_png(progress_dir / f"step-{step:07d}.png", grid_pixels(list(images), rows=GRID, cols=GRID))

    return preview
