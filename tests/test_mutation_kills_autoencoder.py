"""The autoencoder's training objective and its held-out metrics, which mutation testing (benchmarks/mutation.py)
found reached only by the slow DAG tests.

The objective is LDM's KL autoencoder loss as the demo configures it: MSE of the reconstruction of a posterior
sample plus kl_weight * KL(q(z|x) || N(0, I)) per input element, with the KL written here in closed form,
0.5 * sum(mu^2 + var - 1 - logvar), not through diffusers' posterior.kl(). The metrics are checked with a
constructed autoencoder whose reconstruction is the image two grey levels brighter: PSNR = 10 log10(255^2 / 4)
and, with stand-in features (channel means) of equal covariance, rFID = |mu1 - mu2|^2 = 2^2 + 2^2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_mutation_kills_evaluation import ChannelMeans, save_reference

import uvit.autoencoder as autoencoder
import uvit.fid
from uvit.autoencoder import (
    build_autoencoder,
    load_autoencoder,
    reconstruction_metrics,
    to_uint8,
    to_unit_range,
    train_autoencoder,
)
from uvit.shards import in_memory, write_split

CFG = {"space_to_depth": 1, "block_channels": [4, 8], "layers_per_block": 1, "latent_channels": 2, "kl_weight": 0.5,
       "batch_size": 4, "lr": 1e-2, "steps": 2, "seed": 3, "eval_images": 6}  # fmt: skip


@pytest.fixture
def data(tmp_path, monkeypatch) -> tuple[Path, dict[str, np.ndarray]]:
    monkeypatch.setattr(uvit.fid, "InceptionFeatureExtractor", ChannelMeans)
    rng = np.random.default_rng(0)
    splits = {name: rng.integers(0, 250, (10, 8, 8, 3), dtype=np.uint8) for name in ("train", "test")}
    prepared = in_memory({name: (images, np.zeros(10, np.int64)) for name, images in splits.items()})
    for name in splits:
        write_split(tmp_path / "data" / name, prepared[name], 1000, "test")
    return tmp_path / "data", splits


class Brighter:
    """encode: the posterior N(x, 1) (its mode is x, a sample is not); decode: z + 2 grey levels."""

    def eval(self):
        return self

    def encode(self, x: torch.Tensor) -> SimpleNamespace:
        noise = torch.randn_like(x)
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: x, sample=lambda: x + noise))

    def decode(self, z: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=z + 2 / 127.5)


def test_held_out_metrics_are_psnr_and_rfid_of_the_posterior_mean_reconstructions(data):
    root, splits = data
    metrics = reconstruction_metrics(Brighter(), root / "test", 7, batch_size=3)
    assert metrics == {
        "heldout_images": 7,
        "psnr_db": round(10 * math.log10(255**2 / 4), 3),
        "rfid": pytest.approx(8.0, abs=1e-4),
    }
    assert (
        to_uint8(to_unit_range(splits["test"][:7]) + 2 / 127.5).astype(int).tolist()
        == (splits["test"][:7].astype(int) + 2).tolist()
    )  # the constructed reconstruction is exactly two levels up


def test_with_a_reference_the_same_pass_gives_the_floor_and_the_reconstructions_fid_at_the_same_count(
    data, tmp_path
):
    """The reference is made from the held-out images two levels brighter, i.e. from exactly the reconstructions:
    the originals score the reference as the reconstructions score the originals (8.0), the reconstructions 0."""
    root, splits = data
    save_reference(tmp_path / "ref.npz", splits["test"][:7] + 2)
    metrics = reconstruction_metrics(
        Brighter(), root / "test", 7, batch_size=3, reference=tmp_path / "ref.npz"
    )
    assert metrics["rfid"] == pytest.approx(8.0, abs=1e-4)
    assert metrics["floor_fid"] == pytest.approx(8.0, abs=1e-4)
    assert metrics["reconstructions_fid"] == pytest.approx(0.0, abs=1e-4)
    assert metrics["fid_protocol"] == "clean" and metrics["heldout_images"] == 7


def test_training_takes_adamw_steps_on_mse_plus_weighted_kl_per_element(data, tmp_path, monkeypatch):
    root, splits = data
    clock = iter([10.0, 12.5])  # training starts at 10 s and ends at 12.5 s
    monkeypatch.setattr(autoencoder, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    (tmp_path / "ae").mkdir()  # a folder left by an earlier run is reused
    logs = []
    metrics = train_autoencoder(CFG, root, tmp_path / "ae", log=logs.append)
    assert metrics["heldout_images"] == CFG["eval_images"] and math.isfinite(metrics["psnr_db"])
    assert logs[0] == "autoencoder: 2.5 s, 3.2 images/s"  # 2 steps x 4 images in 2.5 s
    assert logs[1] == f"autoencoder: {json.dumps(metrics)}" and len(logs) == 2

    # The recipe written out: batches drawn with a generator seeded by `seed`, a posterior sample decoded.
    torch.manual_seed(CFG["seed"])
    x_all = torch.from_numpy(splits["train"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    model = build_autoencoder(CFG, 3, 8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=CFG["lr"], weight_decay=0.0)
    generator = torch.Generator().manual_seed(CFG["seed"])
    for _ in range(CFG["steps"]):
        x = x_all[torch.randint(10, (CFG["batch_size"],), generator=generator)]
        posterior = model.encode(x).latent_dist
        mean, logvar = posterior.mean, posterior.logvar
        z = mean + posterior.std * torch.randn(mean.shape, generator=generator)
        kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum((1, 2, 3))
        loss = (model.decode(z).sample - x).pow(2).mean() + CFG["kl_weight"] * kl.mean() / x[0].numel()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained_model = load_autoencoder(tmp_path / "ae")
    assert trained_model.config["sample_size"] == 8
    assert trained_model.config["up_block_types"] == ["UpDecoderBlock2D"] * 2
    trained = trained_model.state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(trained[name], value, rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.equal(
        trained["encoder.conv_in.weight"], build_autoencoder(CFG, 3, 8).encoder.conv_in.weight
    )


def test_damaged_latents_name_the_stage_that_writes_them(tmp_path):
    from test_recipe import write_latents

    from uvit.autoencoder import load_latents
    from uvit.fileio import DataError

    write_latents(tmp_path, torch.zeros(3, 2, 4, 2, 2), torch.zeros(3, dtype=torch.long), 0.5)
    moments, labels, scale = load_latents(tmp_path)
    assert moments.shape == (3, 2, 4, 2, 2) and labels.tolist() == [0, 0, 0] and scale == 0.5
    shard = next(tmp_path.glob("moments-*.npy"))
    shard.write_bytes(shard.read_bytes()[:-4] + b"\x00\x00\x80\x3f")  # one value changed
    with pytest.raises(DataError, match=r"checksum mismatch .*; re-run encode_latents"):
        load_latents(tmp_path)
