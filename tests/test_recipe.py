"""The recipe: what training and sampling do with the data, pinned to the paper and the authors' code
(github.com/baofff/U-ViT: datasets.py, utils.py, train.py, train_ldm*.py, libs/autoencoder.py, sde.py).

The closed-form tests of the network, schedules and solvers cannot see a vertical flip, a missing latent scale
factor or warm-up, every sample drawn as class 0, or an inverted EMA rate; these tests can. Expected values
come from formulas written here, never from our output. Rates are checked against a binomial bound of 4
standard deviations (a false alarm about once in 16,000 runs; the draws are seeded, so never in practice).
"""

from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import edited, load_test_params, record

import uvit.sampling as sampling
import uvit.training as training
from uvit.autoencoder import build_autoencoder, encode_dataset, load_latents
from uvit.conditioning import Conditions
from uvit.config import resolve_experiment
from uvit.diffusion import DiscreteSchedule, SeededNoise, VPSchedule, sample
from uvit.seeds import batch_indices
from uvit.shards import in_memory, load_split, write_manifest, write_shards, write_split
from uvit.training import (
    LatentData,
    PixelData,
    lr_factor,
    train,
    trajectory_hash,
    update_ema,
    warmup_constant,
)

CLASSES, SIZE, CHANNELS, COUNT = 5, 8, 3, 64
SIGMAS = 4  # width of every binomial bound, in standard deviations


def within_binomial(hits: int, n: int, p: float) -> bool:
    return abs(hits / n - p) <= SIGMAS * math.sqrt(p * (1 - p) / n)


@functools.cache
def _params() -> dict:
    return load_test_params()


def experiment(name: str, training: dict | None = None, sampling: dict | None = None, **top) -> dict:
    exp = copy.deepcopy(resolve_experiment(_params(), name)) | top
    exp["training"].update(training or {})
    exp["sampling"].update(sampling or {})
    return record(exp)


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    """A prepared RGB dataset of random 8x8 images (none is its own mirror image), labels i mod 5."""
    root = tmp_path_factory.mktemp("recipe")
    images = np.random.default_rng(0).integers(0, 256, (COUNT, SIZE, SIZE, CHANNELS), dtype=np.uint8)
    labels = np.arange(COUNT, dtype=np.int64) % CLASSES
    write_split(root / "train", in_memory({"train": (images, labels)})["train"], 1000, "test")
    return root


def unit(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x C -> float N x C x H x W in [-1, 1], the authors' x / 127.5 - 1."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).double() / 127.5 - 1


def back_to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.double().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def mirrored(images: np.ndarray) -> np.ndarray:
    """The horizontal flip of N x H x W x C images: the authors' `arr[:, ::-1]` on each H x W x C array
    (ImageNet), torchvision's RandomHorizontalFlip (CIFAR-10, CelebA)."""
    return images[:, :, ::-1, :]


def flipped_rows(x: torch.Tensor, images: np.ndarray) -> np.ndarray:
    """Which rows of a batch are the flipped image; fails if a row is neither the image nor its flip."""
    got = back_to_uint8(x)
    same = (got == images).reshape(len(got), -1).all(1)
    flip = (got == mirrored(images)).reshape(len(got), -1).all(1)
    assert (same | flip).all(), "rows that are neither the image nor its horizontal flip"
    assert not (same & flip).any()  # random images: never their own mirror image
    return flip


# --------------------------------------------------------------------------------------------------------
# Augmentation: a horizontal flip at rate 1/2, for pixels and for stored latents
# --------------------------------------------------------------------------------------------------------


def test_pixel_augmentation_is_a_horizontal_flip_at_rate_one_half(split):
    images, labels = load_split(split / "train")
    index = torch.arange(COUNT).repeat(100)  # 6400 draws
    x, y = PixelData(split, hflip=True).batch(index, torch.Generator().manual_seed(0))
    flips = flipped_rows(x, images[index])
    assert within_binomial(int(flips.sum()), len(index), 0.5), flips.mean()
    assert torch.equal(y, torch.from_numpy(labels[index]))
    x, _ = PixelData(split, hflip=False).batch(index, torch.Generator().manual_seed(0))
    assert not flipped_rows(x, images[index]).any()


def write_latents(out: Path, moments: torch.Tensor, labels: torch.Tensor, scale: float) -> None:
    """An encoded dataset in encode_dataset's layout: moments N x 2 (image, flip) x 2C (mean, logvar) x h x w."""
    shards = write_shards(out, {"moments": moments.float().numpy(), "labels": labels.numpy()}, 1000)
    manifest = {"count": len(moments), "moments_shape": list(moments.shape[1:]), "scale_factor": scale}
    write_manifest(out, manifest | {"shards": shards})


def test_latent_augmentation_picks_the_flipped_images_moments_at_rate_one_half(tmp_path):
    """The authors store the moments of every image and of its flip as two dataset entries (FeatureDataset has
    2 x 1,281,167 items), so a uniformly drawn entry is the flip half the time."""
    n, scale = 40, 0.25
    code = torch.arange(2 * n, dtype=torch.float64).view(n, 2) + 1  # mean of image i, version v: 2 i + v + 1
    mean = code.view(n, 2, 1, 1, 1).expand(n, 2, 2, 2, 2)
    logvar = torch.full_like(mean, -100.0)  # clamped to -30: std 3e-7, the sample is the mean
    write_latents(tmp_path, torch.cat([mean, logvar], 2), torch.arange(n) % 3, scale)
    index = torch.arange(n).repeat(150)  # 6000 draws
    z, y = LatentData(tmp_path, hflip=True).batch(index, torch.Generator().manual_seed(0))
    drawn = (z / scale).round().long()
    assert (drawn == drawn[:, :1, :1, :1]).all()
    version = drawn[:, 0, 0, 0] - 1 - 2 * index
    assert set(version.tolist()) <= {0, 1}
    assert within_binomial(int(version.sum()), len(index), 0.5), version.double().mean()
    assert torch.equal(y, index % 3)
    z, _ = LatentData(tmp_path, hflip=False).batch(index, torch.Generator().manual_seed(0))
    assert torch.equal((z / scale).round().long()[:, 0, 0, 0], 2 * index + 1)


def test_encoding_stores_the_moments_of_the_horizontally_flipped_image(split, tmp_path):
    """Version 1 of each image is the encoding of its horizontal flip (the authors' extract_imagenet_feature.py:
    `img.flip(dims=[-1])` on N x C x H x W)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    build_autoencoder(
        {"space_to_depth": 1, "block_channels": [8, 16], "layers_per_block": 1, "latent_channels": 2}, 3, 8
    ).save_pretrained(tmp_path / "ae")
    encode_dataset(tmp_path / "ae", split, tmp_path / "z", log=lambda m: None)
    moments, _, _ = load_latents(tmp_path / "z")
    ae = AutoencoderKL.from_pretrained(tmp_path / "ae").eval()
    images, _ = load_split(split / "train")
    with torch.no_grad():
        for version, pixels in enumerate((images, mirrored(images))):
            expected = ae.encode(unit(pixels).float()).latent_dist.parameters
            torch.testing.assert_close(moments[:, version], expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------------
# Latent scale factor: z = scale * (mean + std * noise) in training, decode(z / scale) in sampling
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mean", "logvar", "std"),
    [(0.5, math.log(4.0), 2.0), (0.0, 30.0, math.exp(10.0)), (0.0, -100.0, math.exp(-15.0))],
    ids=["posterior", "logvar-clamped-at-20", "logvar-clamped-at--30"],
)
def test_training_latents_are_scaled_posterior_samples(tmp_path, mean, logvar, std):
    """The authors' `scale_factor * (mean + exp(0.5 * clamp(logvar, -30, 20)) * randn)`: check the mean and
    standard deviation of 64,000 draws against 4 standard errors."""
    n, scale = 1000, 0.3
    moments = torch.cat([torch.full((n, 2, 4, 4, 4), mean), torch.full((n, 2, 4, 4, 4), logvar)], 2)
    write_latents(tmp_path, moments, torch.zeros(n, dtype=torch.long), scale)
    z, _ = LatentData(tmp_path, hflip=True).batch(torch.arange(n), torch.Generator().manual_seed(1))
    assert z.shape == (n, 4, 4, 4)
    values = z.double().flatten() / scale
    assert abs(values.mean().item() - mean) < SIGMAS * std / math.sqrt(values.numel())
    assert abs(values.std().item() / std - 1) < SIGMAS * math.sqrt(1 / (2 * (values.numel() - 1)))


ENCODER_GAIN, LATENT_SCALE = 1.5, 0.3


class LinearAutoencoder(torch.nn.Module):
    """A constructed autoencoder: encode(x) = 1.5 x, decode(z) = z / 1.5 (an exact round trip)."""

    def decode(self, z: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=z / ENCODER_GAIN)


def vp_alpha_sigma(t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """The VP SDE's alpha_t and sigma_t for beta(t) linear from 0.1 to 20, in float64 (Song et al. 2021)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    log_alpha = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    return log_alpha.exp(), (-torch.expm1(2 * log_alpha)).sqrt()


class PointMass:
    """The exact noise predictor of data concentrated at x0 (one per row, given by `target(cond)`), fed the
    network's time t * 999: eps = (x_t - alpha_t x0) / sigma_t. Along the probability-flow ODE this eps stays
    constant, so a DPM-Solver of any order ends exactly at alpha_e x0 + sigma_e (x_T - alpha_1 x0) / sigma_1.
    It records the conditions of each call."""

    def __init__(self, target):
        self.target, self.calls = target, []

    def __call__(self, x: torch.Tensor, t_in: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append((x.clone(), None if cond is None else cond.clone()))
        alpha, sigma = (v.view(-1, 1, 1, 1) for v in vp_alpha_sigma(t_in.double() / 999))
        return ((x.double() - alpha * self.target(cond)) / sigma).float()


def flow_end(
    x_start: torch.Tensor, x0: torch.Tensor, t_start: float = 1.0, t_end: float = 1e-4
) -> torch.Tensor:
    """Where the probability-flow ODE of a point mass at x0 takes x_start, from t_start to t_end (the authors'
    DPM-Solver runs from T = 1 to eps = 1e-4 for the continuous-time models)."""
    (a1, s1), (a0, s0) = vp_alpha_sigma(t_start), vp_alpha_sigma(t_end)
    return a0 * x0 + s0 * (x_start.double() - a1 * x0) / s1


def test_latents_are_scaled_for_training_and_unscaled_before_decoding(split, tmp_path, monkeypatch):
    """A round trip image -> linear encoder -> training latent -> the exact model of that latent -> sampler ->
    linear decoder: training sees scale * encode(x), the sampler decodes its latent divided by the same scale
    (the authors' libs/autoencoder.py: `sample` returns scale_factor * z, `decode` takes z / scale_factor)."""
    images, labels = load_split(split / "train")
    mean = ENCODER_GAIN * unit(images)
    moments = torch.stack([torch.cat([m, torch.full_like(m, -100.0)], 1) for m in (mean, mean.flip(-1))], 1)
    write_latents(tmp_path / "z", moments, torch.from_numpy(labels), LATENT_SCALE)

    indices = [0, 5, 9, 17]
    z, _ = LatentData(tmp_path / "z", hflip=False).batch(
        torch.tensor(indices), torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(z.double(), LATENT_SCALE * mean[indices], rtol=0, atol=1e-6)

    monkeypatch.setattr(sampling, "load_autoencoder", lambda path: LinearAutoencoder())
    exp = experiment(
        "smoke_latent",
        condition="none",
        training={"cond_drop_prob": 0.0},
        sampling={"guidance_scale": 0.0, "precision": "fp32", "sampler": "dpm_solver", "steps": 5},
    )
    sampler = sampling.ImageSampler(exp, split, ae_dir=tmp_path / "ae", latent_dir=tmp_path / "z")
    out = sampler.images(PointMass(lambda cond: z.double()), indices)
    x_T = SeededNoise(exp["sampling"]["seed"], indices, (CHANNELS, SIZE, SIZE)).draw()
    expected = back_to_uint8(flow_end(x_T, z.double()) / LATENT_SCALE / ENCODER_GAIN)
    assert np.abs(out.astype(int) - expected).max() <= 1  # rounding to uint8
    # The images come back, up to the sampler's last noise level sigma(1e-4) = 0.0032 (a few grey levels).
    noise_levels = (
        127.5 * vp_alpha_sigma(1e-4)[1].item() * x_T.abs().max().item() / (LATENT_SCALE * ENCODER_GAIN)
    )
    assert np.abs(out.astype(int) - images[indices]).max() <= math.ceil(noise_levels) + 1


# --------------------------------------------------------------------------------------------------------
# Optimisation: warm-up, EMA, condition dropout, flips, all seen through the training loop
# --------------------------------------------------------------------------------------------------------


def lr_used(schedule, updates: int, base: float = 0.1) -> list[float]:
    """The learning rate each optimizer update runs with, under LambdaLR(schedule) stepped after each update
    (the authors' order in train.py: optimizer.step(), then lr_scheduler.step())."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=base)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    used = []
    for _ in range(updates):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return used


def test_warmup_is_linear_and_reaches_the_base_rate_at_the_configured_step():
    """Update k (1, 2, ...) runs at base * min(k / W, 1): linear, base exactly from update W on.

    The authors' customized_lr_scheduler (utils.py) is LambdaLR(min(step / W, 1)) from step 0, so their update
    k runs at base * min((k - 1) / W, 1): the same ramp one update later, their first update at rate 0 (it
    moves nothing but Adam's moments). Their logged lr (read after lr_scheduler.step()) is the rate of the
    next update, base * min(k / W, 1) after update k: the numbers our updates run with."""
    warmup, base = 8, 0.1
    used = lr_used(warmup_constant(warmup), 12, base)
    assert used == pytest.approx([base * min(k / warmup, 1) for k in range(1, 13)], rel=1e-12)
    assert used[warmup - 1] == base and used[warmup - 2] < base
    authors = lr_used(lambda step: min(step / warmup, 1), 13, base)
    assert authors[0] == 0 and used == pytest.approx(authors[1:], rel=1e-12)
    assert lr_used(warmup_constant(0), 3, base) == [base] * 3


def test_a_cosine_schedule_warms_up_then_decays_to_zero_at_the_last_step():
    """lr_schedule: cosine: update k runs at base min(k / W, 1) (1 + cos(pi (k - 1) / N)) / 2 for N steps; constant is
    the warmup alone. A cosine run of another length is another trajectory (its checkpoints are not resumed)."""
    warmup, steps, base = 4, 20, 0.1
    cosine = {"warmup_steps": warmup, "steps": steps, "lr_schedule": "cosine"}
    used = lr_used(lr_factor(cosine), steps, base)
    expected = [
        base * min(k / warmup, 1) * (1 + math.cos(math.pi * (k - 1) / steps)) / 2 for k in range(1, steps + 1)
    ]
    assert used == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert lr_factor(cosine)(steps) == 0 and 0 < used[-1] < used[-2] < used[warmup - 1] < base
    assert lr_used(lr_factor(cosine | {"lr_schedule": "constant"}), steps, base) == lr_used(
        warmup_constant(warmup), steps, base
    )
    short, longer = experiment("smoke_pixel"), experiment("smoke_pixel", training={"steps": 40})
    assert trajectory_hash(short) == trajectory_hash(longer)  # constant: a longer run resumes a shorter one
    short, longer = (
        experiment("smoke_pixel", training={"lr_schedule": "cosine", "steps": n}) for n in (20, 40)
    )
    assert trajectory_hash(short) != trajectory_hash(longer)


def test_ema_of_a_constant_model_follows_the_closed_form():
    """The authors' ema(): p_ema <- rate p_ema + (1 - rate) p, so after N updates toward fixed weights theta,
    ema_N = rate^N ema_0 + (1 - rate^N) theta."""
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(5, 3).double(), torch.nn.Linear(5, 3).double()
    start = copy.deepcopy(ema.state_dict())
    rate, n = 0.9, 25
    for _ in range(n):
        update_ema(ema, model, rate)
    for name, value in ema.state_dict().items():
        expected = rate**n * start[name] + (1 - rate**n) * model.state_dict()[name]
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-14)


def test_condition_dropout_uses_the_null_class_num_classes_at_its_rate():
    """CFGDataset (datasets.py): y is replaced by empty_token = K (the dataset's class count) with p_uncond."""
    exp = experiment("smoke_latent", training={"cond_drop_prob": 0.15})
    labels = torch.arange(100_000) % 10
    cond = Conditions(exp, classes=10).draw(torch.arange(100_000), labels, torch.Generator().manual_seed(0))
    dropped = cond == 10
    assert within_binomial(int(dropped.sum()), len(cond), 0.15), dropped.double().mean()
    assert torch.equal(cond[~dropped], labels[~dropped])
    exp = edited(exp, "training", cond_drop_prob=0.0)
    assert torch.equal(Conditions(exp, classes=10).draw(torch.arange(10), labels[:10], None), labels[:10])


def test_the_training_loop_follows_the_recipe(split, tmp_path, monkeypatch):
    """Through train(): each image or its horizontal flip, each label or the null class K, the logged learning
    rate, and the EMA recursion ema_k = rate ema_{k-1} + (1 - rate) model_k from ema_0 = model_0 (the authors
    start the EMA as a copy: `train_state.ema_update(0)`)."""
    steps, warmup, lr, rate, drop = 6, 4, 1e-3, 0.9, 0.25
    exp = experiment(
        "smoke_pixel",
        condition="class",
        training={
            "steps": steps, "batch_size": 32, "warmup_steps": warmup, "lr": lr, "ema_rate": rate,
            "cond_drop_prob": drop, "hflip": True, "precision": "fp32", "checkpoint_every": 1,
            "keep_checkpoints": steps, "log_every": 1, "keep_steps": [], "sample_every": 0,
        },
    )  # fmt: skip
    seen = []
    real_loss = training.noise_prediction_loss

    def recording(net, schedule, x0, **kwargs):
        seen.append((x0.clone(), kwargs["cond"].clone()))
        return real_loss(net, schedule, x0, **kwargs)

    monkeypatch.setattr(training, "noise_prediction_loss", recording)
    train(exp, split, tmp_path / "run", log=lambda m: None)
    images, labels = load_split(split / "train")
    assert len(seen) == steps
    flips = drops = 0
    for step, (x0, cond) in enumerate(seen):
        index = batch_indices(step, 32, COUNT, exp["training"]["seed"]).numpy()
        flips += int(flipped_rows(x0, images[index]).sum())
        dropped = cond == CLASSES
        assert torch.equal(cond[~dropped], torch.from_numpy(labels[index])[~dropped])
        drops += int(dropped.sum())
    assert within_binomial(flips, 32 * steps, 0.5) and within_binomial(drops, 32 * steps, drop)

    history = [json.loads(line) for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    # Logged after update k: the rate of update k + 1.
    assert [h["lr"] for h in history] == pytest.approx(
        [lr * min((k + 1) / warmup, 1) for k in range(1, steps + 1)], rel=1e-12
    )

    exp = edited(exp, "training", steps=0)  # the initial weights, as written by a run of no steps
    train(exp, split, tmp_path / "init", log=lambda m: None)
    model_0 = torch.load(tmp_path / "init" / "nnet.pth", weights_only=True)
    previous = torch.load(tmp_path / "init" / "nnet_ema.pth", weights_only=True)
    assert all(torch.equal(previous[k], model_0[k]) for k in model_0)
    for step in range(1, steps + 1):
        state = torch.load(tmp_path / "run" / "checkpoints" / f"ckpt-{step:07d}.pt", weights_only=True)
        assert not torch.equal(state["model"]["pos_embed"], model_0["pos_embed"])  # the model moves
        for name, value in state["ema"].items():
            expected = rate * previous[name] + (1 - rate) * state["model"][name]
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-7, msg=f"step {step}: {name}")
        previous = state["ema"]


# --------------------------------------------------------------------------------------------------------
# Sampling: class of each sample, guidance, step counts and time grids
# --------------------------------------------------------------------------------------------------------


def test_sample_i_has_class_i_mod_k_and_guidance_uses_it(split):
    """Each network call carries the samples' classes (i mod K, as documented) and the null class K in one
    batch. With a point-mass model of mean c_y per class, guidance eps_c + s (eps_c - eps_u) is the point-mass
    model of (1 + s) c_y - s c_null, so each sample's end point is known in closed form."""
    scale, steps = 0.4, 5
    means = torch.tensor([-0.5, -0.3, -0.1, 0.1, 0.3, 0.05], dtype=torch.float64)  # classes 0..4, null 5
    exp = experiment(
        "smoke_pixel",
        condition="class",
        training={"cond_drop_prob": 0.15},
        sampling={"guidance_scale": scale, "precision": "fp32", "sampler": "dpm_solver", "steps": steps},
    )
    sampler = sampling.ImageSampler(exp, split)
    model = PointMass(lambda cond: means[cond].view(-1, 1, 1, 1))
    indices = [7, 3, 12, 18, 5, 0, 24]
    out = sampler.images(model, indices)

    classes = torch.tensor([i % CLASSES for i in indices])
    assert len(model.calls) == steps  # one batched forward per evaluation
    for x, cond in model.calls:
        assert torch.equal(cond, torch.cat([classes, torch.full_like(classes, CLASSES)]))
        assert torch.equal(x[: len(indices)], x[len(indices) :])
    guided = ((1 + scale) * means[classes] - scale * means[CLASSES]).view(-1, 1, 1, 1)
    x_T = SeededNoise(exp["sampling"]["seed"], indices, (CHANNELS, SIZE, SIZE)).draw()
    expected = back_to_uint8(flow_end(x_T, guided))
    assert np.abs(out.astype(int) - expected).max() <= 1  # rounding to uint8


class Recorder:
    """A noise predictor that records the times it is called at and predicts data at 0 exactly:
    eps = x_t / sigma_t, under which every solver step only rescales x by sigma_t / sigma_s."""

    def __init__(self, sigma):
        self.sigma, self.times = sigma, []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.times.append(t.item())
        return (x.double() / self.sigma(t.double())).to(x.dtype)


class CountingNoise:
    def __init__(self, shape=(64, 1)):
        self.shape, self.draws = shape, 0
        self.x = torch.linspace(-3, 3, shape[0], dtype=torch.float64).view(shape)

    def draw(self) -> torch.Tensor:
        self.draws += 1
        return self.x.clone()


def vp_log_snr(t: torch.Tensor) -> torch.Tensor:
    alpha, sigma = vp_alpha_sigma(t)
    return torch.log(alpha / sigma)


@pytest.mark.parametrize(("order", "steps"), [(1, 6), (2, 5), (2, 6), (3, 4), (3, 5), (3, 6), (3, 25)])
def test_dpm_solver_spends_its_steps_on_the_authors_grid(order, steps):
    """`steps` network evaluations (the fast pattern's budget, Lu et al. 2022, Appendix D.1), from t = 1 to
    eps = 1e-4 (the authors' `dpm_solver.sample(..., eps=1e-4, fast_version=True)`), outer steps uniform in
    log-SNR."""
    model, noise = Recorder(lambda t: vp_alpha_sigma(t)[1]), CountingNoise()
    x = sample(model, VPSchedule(), noise, "dpm_solver", steps, order)
    assert len(model.times) == steps and noise.draws == 1
    assert model.times[0] == 1.0
    ratio = (vp_alpha_sigma(1e-4)[1] / vp_alpha_sigma(1.0)[1]).item()
    torch.testing.assert_close(x.double(), ratio * noise.x, rtol=1e-5, atol=1e-9)
    if order == 1:  # every evaluation starts an outer step
        lam = vp_log_snr(torch.tensor([*model.times, 1e-4], dtype=torch.float64))
        torch.testing.assert_close(
            lam.diff(),
            torch.full((steps,), (lam[-1] - lam[0]).item() / steps, dtype=torch.float64),
            rtol=1e-4,
            atol=0,
        )


@pytest.mark.parametrize("steps", [7, 25])
def test_euler_maruyama_takes_n_steps_on_the_authors_grid(steps):
    """The authors' sde.euler_maruyama: timesteps = [0] + linspace(1e-3, 1, N), one evaluation at each of the N
    upper ends, fresh noise on every step but the last (the step to t = 0)."""
    model, noise = Recorder(lambda t: vp_alpha_sigma(t)[1]), CountingNoise()
    sample(model, VPSchedule(), noise, "euler_maruyama", steps)
    expected = np.linspace(1e-3, 1.0, steps)[::-1].astype(np.float32)
    np.testing.assert_array_equal(np.array(model.times, dtype=np.float32), expected)
    assert noise.draws == steps  # x_T, then steps - 1 noisy steps


def stable_sigma(n: torch.Tensor) -> torch.Tensor:
    """sigma_n = sqrt(1 - alpha_n^2), alpha_n^2 = prod_{i<=n} (1 - beta_i) for Stable Diffusion's betas, written out
    here; between integer steps log alpha is linear in n (the authors' NoiseScheduleVP 'discrete')."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2

    def log_alpha(k: int) -> torch.Tensor:
        return 0.5 * torch.log(torch.prod(1 - betas[:k]))

    def sigma(t: float) -> torch.Tensor:
        k = min(int(t), 999)
        la = log_alpha(k) + (t - k) * (log_alpha(k + 1) - log_alpha(k))
        return torch.sqrt(1 - torch.exp(2 * la))

    return torch.stack([sigma(float(t)) for t in n.flatten()])


@pytest.mark.parametrize("multistep", [True, False])
@pytest.mark.parametrize("steps", [7, 25])
def test_dpm_solver_pp_spends_its_steps_on_the_authors_grid(multistep, steps):
    """`steps` evaluations on the authors' time-uniform grid t_i = 1 - i (1 - 1/N) / steps of the discrete
    model (`dpm_solver.sample(..., eps=1/N, T=1)`, network time N t; the singlestep solver as they run it,
    2M rounded to integer steps n): from n = 1000 down, ending at n = 1 with no final denoising jump (x ends
    at sigma_1 / sigma_1000 x_T)."""
    model, noise = Recorder(stable_sigma), CountingNoise()
    x = sample(
        model, DiscreteSchedule.stable(), noise, "dpm_solver_pp_2m" if multistep else "dpm_solver_pp", steps
    )
    assert len(model.times) == steps and noise.draws == 1
    grid = 1000 - np.arange(steps) * 999 / steps
    assert (
        np.abs(np.array(model.times) - grid).max() <= (0.5 if multistep else 1e-3) and model.times[0] == 1000
    )
    ratio = (stable_sigma(torch.tensor([1.0])) / stable_sigma(torch.tensor([1000.0]))).item()
    torch.testing.assert_close(x.double(), ratio * noise.x, rtol=1e-5, atol=1e-9)
