"""Stable Diffusion's KL-f8 autoencoder in its three published forms, on a randomly initialised model, and our
AutoencoderKL against diffusers' class."""

from __future__ import annotations

import re

import pytest
import torch

from uvit.autoencoder import SD_VAE_CONFIG, AutoencoderError, load_autoencoder


def to_ldm_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL names -> the original LDM / Stable Diffusion names, written from the LDM layout
    (independently of diffusers' converter, which the loader uses in the other direction)."""
    levels = len(SD_VAE_CONFIG["block_out_channels"])
    rules = [
        (r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out."),
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.", r"encoder.down.\1.downsample.conv."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.group_norm\.", r"\1.mid.attn_1.norm."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_(q|k|v)\.", r"\1.mid.attn_1.\2."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_out\.0\.", r"\1.mid.attn_1.proj_out."),
        (
            r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
            lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.",
        ),
        (
            r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.",
            lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.",
        ),
    ]
    out = {}
    for name, tensor in state.items():
        for pattern, replacement in rules:
            name = re.sub(pattern, replacement, name)
        name = name.replace("conv_shortcut", "nin_shortcut")
        if ".mid.attn_1." in name and name.endswith("weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        out[name] = tensor.clone()
    return out


@pytest.fixture(scope="module")
def sd_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(**SD_VAE_CONFIG).eval()


def test_inverse_mapping_covers_the_ldm_layout(sd_vae):
    names = set(to_ldm_names(sd_vae.state_dict()))
    assert "encoder.down.0.block.0.conv1.weight" in names and "decoder.up.3.block.2.norm2.bias" in names
    assert "encoder.mid.attn_1.q.weight" in names and "decoder.up.1.upsample.conv.weight" in names
    assert not any("down_blocks" in n or "up_blocks" in n or "mid_block" in n for n in names)


@pytest.mark.parametrize("form", ["diffusers", "sd_checkpoint", "sd_safetensors", "authors_pth"])
def test_sd_autoencoder_loads_from_every_published_form(sd_vae, tmp_path, form):
    from safetensors.torch import save_file

    ldm = to_ldm_names(sd_vae.state_dict())
    if form == "diffusers":
        sd_vae.save_pretrained(tmp_path / "vae")
        path = tmp_path / "vae"
    elif form == "sd_checkpoint":  # a whole Stable Diffusion checkpoint: the VAE under first_stage_model.
        other = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(3)}
        path = tmp_path / "sd.ckpt"
        torch.save({"state_dict": {f"first_stage_model.{k}": v for k, v in ldm.items()} | other}, path)
    elif form == "sd_safetensors":
        path = tmp_path / "sd.safetensors"
        save_file({f"first_stage_model.{k}": v.contiguous() for k, v in ldm.items()}, str(path))
    else:  # the authors' assets/stable-diffusion/autoencoder_kl.pth: LDM names, no prefix
        path = tmp_path / "autoencoder_kl.pth"
        torch.save(ldm, path)
    loaded = load_autoencoder(path)
    for name, tensor in sd_vae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = sd_vae.encode(x).latent_dist.mean
        torch.testing.assert_close(loaded.encode(x).latent_dist.mean, expected)
        assert expected.shape == (1, 4, 8, 8)


def test_bad_autoencoder_paths_are_named(tmp_path):
    with pytest.raises(AutoencoderError, match=r"missing.ckpt: not found or not an autoencoder"):
        load_autoencoder(tmp_path / "missing.ckpt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(AutoencoderError, match=r"folder: a diffusers AutoencoderKL folder needs config.json"):
        load_autoencoder(tmp_path / "folder")
    torch.save({"state_dict": {"model.weight": torch.zeros(2)}}, tmp_path / "unet.ckpt")
    with pytest.raises(AutoencoderError, match=r"unet.ckpt: no KL-f8 autoencoder weights"):
        load_autoencoder(tmp_path / "unet.ckpt")


class TrainerCallback:
    """Stands for the PyTorch Lightning objects pickled into original SD .ckpt files."""


def test_checkpoints_carrying_python_objects_are_refused(tmp_path):
    torch.save({"state_dict": {}, "callbacks": TrainerCallback()}, tmp_path / "lightning.ckpt")
    with pytest.raises(AutoencoderError, match=r"lightning.ckpt: refused to unpickle.*safetensors"):
        load_autoencoder(tmp_path / "lightning.ckpt")


def test_latent_scale_factor_is_measured_or_taken_from_the_config(tmp_path):
    from uvit.autoencoder import build_autoencoder, encode_dataset, load_latents
    from uvit.data import prepare_dataset

    prepare_dataset({"source": "digits", "resolution": 16, "shard_size": 1000}, tmp_path / "data")
    torch.manual_seed(0)
    cfg = {"space_to_depth": 1, "block_channels": [8, 16], "layers_per_block": 1, "latent_channels": 4}
    build_autoencoder(cfg, 1, 16).save_pretrained(tmp_path / "ae")
    measured = encode_dataset(tmp_path / "ae", tmp_path / "data", tmp_path / "z1", log=lambda m: None)
    moments, labels, scale = load_latents(tmp_path / "z1")
    assert moments.shape == (1500, 2, 8, 8, 8) and len(labels) == 1500  # image and its flip, mean and logvar
    assert scale == pytest.approx(1 / moments[:, :, :4].std().item(), rel=1e-4)
    assert measured["scale_factor_source"].startswith("measured")
    fixed = encode_dataset(
        tmp_path / "ae", tmp_path / "data", tmp_path / "z2", scale_factor=0.18215, log=lambda m: None
    )
    assert fixed["scale_factor"] == 0.18215 and fixed["scale_factor_source"] == "config"
    assert fixed["measured_scale_factor"] == pytest.approx(measured["scale_factor"])


def test_encoding_streams_batches_into_shards_equal_to_encoding_at_once(tmp_path):
    """The encode stage reads the split batch by batch and writes shard by shard (memory flat in the dataset's
    size): 7-image batches into 10-row shards hold the moments of encoding every image and its flip in one
    call, with their labels, and the measured scale factor is 1 / std of all posterior means."""
    from uvit.autoencoder import (
        build_autoencoder,
        encode_dataset,
        load_autoencoder,
        load_latents,
        to_unit_range,
    )
    from uvit.data import prepare_dataset
    from uvit.shards import load_split, read_manifest

    prepare_dataset({"source": "digits", "resolution": 16, "shard_size": 16}, tmp_path / "data")
    torch.manual_seed(0)
    cfg = {"space_to_depth": 1, "block_channels": [8], "layers_per_block": 1, "latent_channels": 2}
    build_autoencoder(cfg, 1, 16).save_pretrained(tmp_path / "ae")
    manifest = encode_dataset(tmp_path / "ae", tmp_path / "data", tmp_path / "z", 7, 10, log=lambda m: None)
    images, labels = load_split(tmp_path / "data" / "train")
    model = load_autoencoder(tmp_path / "ae")
    with torch.no_grad():
        x = to_unit_range(images)
        whole = torch.stack(
            [model.encode(x).latent_dist.parameters, model.encode(x.flip(3)).latent_dist.parameters], 1
        )
    moments, stored_labels, scale = load_latents(tmp_path / "z")
    torch.testing.assert_close(moments, whole, rtol=1e-5, atol=1e-6)  # batch size changes only float rounding
    assert stored_labels.tolist() == labels.tolist()
    assert [s["count"] for s in read_manifest(tmp_path / "z")["shards"]][::2] == [10] * 150
    assert scale == pytest.approx(1 / whole[:, :, :2].double().std(unbiased=False).item(), rel=1e-6)

    # encode_flips: false (`--no-flips`): each image's moments alone, the scale over their means only.
    encode_dataset(
        tmp_path / "ae", tmp_path / "data", tmp_path / "z1", 7, 10, flips=False, log=lambda m: None
    )
    alone, _, scale = load_latents(tmp_path / "z1")
    assert alone.shape == (len(images), 1, 4, 16, 16)
    torch.testing.assert_close(alone, whole[:, :1], rtol=1e-5, atol=1e-6)
    assert scale == pytest.approx(1 / whole[:, :1, :2].double().std(unbiased=False).item(), rel=1e-6)
    from uvit.errors import UserError
    from uvit.training import LatentData

    assert LatentData(tmp_path / "z1", hflip=False).shape == (2, 16, 16)
    with pytest.raises(
        UserError, match=r"z1: encoded without flips \(encode_flips: false\), but training.hflip"
    ):
        LatentData(tmp_path / "z1", hflip=True)
    assert manifest["moments_shape"] == [2, 4, 16, 16]


def test_running_moments_equal_numpy_over_the_concatenation():
    import numpy as np

    from uvit.autoencoder import RunningMoments

    rng = np.random.default_rng(0)
    parts = [rng.normal(1e3, 2.0, size).astype(np.float32) for size in (1, 7, 1000, 3, 250)]
    running = RunningMoments()
    for part in parts:
        running.add(part.reshape(-1, 1))
    assert running.std() == pytest.approx(np.concatenate(parts).astype(np.float64).std(), rel=1e-12)


def test_a_checkpoint_missing_a_weight_is_refused_not_filled_at_random(sd_vae, tmp_path):
    """Loading is strict: a KL-f8 file without one of its weights must not load with that layer left at its
    random initialisation (found by mutation testing: strict=False passed the other tests)."""
    ldm = to_ldm_names(sd_vae.state_dict())
    del ldm["encoder.down.0.block.0.conv1.weight"]
    torch.save(ldm, tmp_path / "autoencoder_kl.pth")
    with pytest.raises(
        RuntimeError, match=r"Missing key\(s\).*encoder\.down_blocks\.0\.resnets\.0\.conv1\.weight"
    ):
        load_autoencoder(tmp_path / "autoencoder_kl.pth")
    with pytest.raises(
        AutoencoderError, match=r"a checkpoint file \(\.ckpt, \.pt, \.pth, \.bin, \.safetensors\)"
    ):
        load_autoencoder(tmp_path / "weights.npz")


def test_space_to_depth_autoencoder_downsamples_by_its_factor_and_survives_a_save(tmp_path):
    """space_to_depth 2 with blocks [8, 16]: 1x16x16 -> 2x2 blocks as 4 channels at 8x8 -> latents at 4x4 (factor 4,
    as config.autoencoder_downsampling says), layers_per_block resnets per encoder block (diffusers' decoder: one
    more); saved, loaded frozen and imported, it decodes the same images."""
    import torch

    from uvit.autoencoder import SpaceToDepth, build_autoencoder, import_autoencoder, load_autoencoder
    from uvit.config import autoencoder_downsampling

    cfg = {"space_to_depth": 2, "block_channels": [8, 16], "layers_per_block": 2, "latent_channels": 2}
    torch.manual_seed(0)
    model = build_autoencoder(cfg, 1, 16).eval()
    assert [len(b.resnets) for b in model.inner.encoder.down_blocks] == [2, 2]
    assert [len(b.resnets) for b in model.inner.decoder.up_blocks] == [3, 3]
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        z = model.encode(x).latent_dist.mode()
        assert z.shape == (3, 2, 16 // autoencoder_downsampling(cfg), 16 // 4)
        out = model.decode(z).sample
        assert out.shape == x.shape
        model.save_pretrained(tmp_path / "ae")
        loaded = load_autoencoder(tmp_path / "ae")
        assert isinstance(loaded, SpaceToDepth) and loaded.factor == 2
        assert not any(p.requires_grad for p in loaded.parameters())  # frozen, as the stages use it
        assert torch.equal(loaded.decode(loaded.encode(x).latent_dist.mode()).sample, out)
        import_autoencoder(tmp_path / "ae", tmp_path / "imported")
        imported = load_autoencoder(tmp_path / "imported")
        assert isinstance(imported, SpaceToDepth) and imported.factor == 2
        assert torch.equal(imported.decode(imported.encode(x).latent_dist.mode()).sample, out)


# --------------------------------------------------------------------------------------------------------
# uvit.autoencoder_kl against diffusers' AutoencoderKL (the independent implementation)
# --------------------------------------------------------------------------------------------------------
OURS_AND_DIFFUSERS = [
    dict(
        in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=2, latent_channels=4
    ),
    dict(
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=2,
        norm_num_groups=8,
        mid_block_add_attention=False,
        use_quant_conv=False,
    ),
]


@pytest.mark.parametrize("config", OURS_AND_DIFFUSERS, ids=["attention", "no_attention"])
def test_our_autoencoder_is_diffusers_autoencoder_kl(config, tmp_path):
    """The same seed gives the same parameters (names, order, values); the same input the same posterior, sample,
    KL, reconstruction and gradients, in training and evaluation mode and under bf16 autocast, bit for bit; and a
    folder either one saves loads in the other."""
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL

    from uvit.autoencoder_kl import AutoencoderKL

    blocks = len(config["block_out_channels"])
    types = dict(
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks
    )
    torch.manual_seed(0)
    theirs = DiffusersAutoencoderKL(**config, **types)
    torch.manual_seed(0)
    ours = AutoencoderKL(**config)
    assert [(n, p.shape) for n, p in theirs.named_parameters()] == [
        (n, p.shape) for n, p in ours.named_parameters()
    ]
    for (name, a), b in zip(theirs.state_dict().items(), ours.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

    # 64 images: diffusers makes the input of each upsampling contiguous from a batch of 64 (another CPU kernel)
    x = torch.rand(64, theirs.config.in_channels, 8, 8) * 2 - 1
    for training in (True, False):
        outputs = []
        for model in (theirs, ours):
            model.train(training).zero_grad()
            posterior = model.encode(x).latent_dist
            z = posterior.sample(generator=torch.Generator().manual_seed(1))
            reconstruction = model.decode(z).sample
            ((reconstruction - x).pow(2).mean() + posterior.kl().mean()).backward()
            grads = [p.grad for p in model.parameters()]
            outputs.append(
                [posterior.parameters, posterior.mode(), z, posterior.kl(), reconstruction, *grads]
            )
        for a, b in zip(*outputs, strict=True):
            assert torch.equal(a, b)
    latents = torch.randn(3, config["latent_channels"], 4, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(theirs.decode(latents).sample, ours.decode(latents).sample)
        assert torch.equal(theirs.encode(x).latent_dist.mean, ours.encode(x).latent_dist.mean)

    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    with torch.no_grad():
        expected = ours.decode(latents).sample
        assert torch.equal(
            DiffusersAutoencoderKL.from_pretrained(tmp_path / "ours").decode(latents).sample, expected
        )
        assert torch.equal(
            AutoencoderKL.from_pretrained(tmp_path / "theirs").decode(latents).sample, expected
        )


def test_configs_of_other_networks_are_refused_in_one_line(tmp_path):
    from uvit.autoencoder_kl import AutoencoderKL

    with pytest.raises(
        AutoencoderError, match=r"act_fn 'gelu' is not the KL autoencoder's \(every entry 'silu'\)"
    ):
        AutoencoderKL(act_fn="gelu")
    AutoencoderKL(block_out_channels=(8,), norm_num_groups=8).save_pretrained(tmp_path / "ae")
    config = tmp_path / "ae" / "config.json"
    config.write_text(config.read_text().replace('"UpDecoderBlock2D"', '"AttnUpDecoderBlock2D"'))
    with pytest.raises(
        AutoencoderError, match=r"ae/config.json: up_block_types \['AttnUpDecoderBlock2D'\] is not"
    ):
        load_autoencoder(tmp_path / "ae")
