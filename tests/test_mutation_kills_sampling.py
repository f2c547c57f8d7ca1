"""Sampling-stage bookkeeping that mutation testing (benchmarks/mutation.py) found unchecked by the fast tests:
PNG files and their settings chunk, the sampling record, which leftover samples are redrawn, and released
weights read without the prepared dataset (sizes taken off the weights, checked key by key).

Expected values come from the files' definitions (PIL's modes, the md5 of the weights file, the authors'
parameter names and shapes), never from our output. Tiny models and images: seconds in all.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_test_params
from PIL import Image

from uvit.checkpoints import CheckpointError
from uvit.config import experiment_record, resolve_experiment
from uvit.model import model_for
from uvit.sampling import (
    RECORD,
    SETTINGS_CHUNK,
    clear_stale_samples,
    import_weights,
    model_for_weights,
    sample_is_current,
    sampling_record,
    weights_geometry,
    write_png,
)


@pytest.fixture(scope="module")
def params() -> dict:
    return load_test_params()


def experiment(params: dict, name: str, **edits) -> dict:
    """A resolved experiment with top-level keys replaced and sections updated (`training={...}`), as a record."""
    exp = copy.deepcopy(resolve_experiment(params, name))
    for key, value in edits.items():
        exp[key] = exp[key] | value if isinstance(value, dict) else value
    return experiment_record(params, exp)


def test_png_files_keep_the_image_its_mode_and_the_settings_chunk(tmp_path):
    rng = np.random.default_rng(0)
    grey, rgb = (
        rng.integers(0, 256, (5, 7, 1), dtype=np.uint8),
        rng.integers(0, 256, (5, 7, 3), dtype=np.uint8),
    )
    write_png(tmp_path / "g.png", grey, "abc")
    write_png(tmp_path / "c.png", rgb)
    with Image.open(tmp_path / "g.png") as image:
        assert image.mode == "L" and image.text == {SETTINGS_CHUNK: "abc"}
        np.testing.assert_array_equal(np.asarray(image), grey[..., 0])
    with Image.open(tmp_path / "c.png") as image:
        assert image.mode == "RGB" and SETTINGS_CHUNK not in getattr(image, "text", {})
        np.testing.assert_array_equal(np.asarray(image), rgb)
    assert sample_is_current(tmp_path / "g.png", "abc")
    assert not sample_is_current(tmp_path / "g.png", "abd")
    assert not sample_is_current(tmp_path / "c.png", "abc")
    blob = (tmp_path / "g.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(blob[: len(blob) // 2])
    assert not sample_is_current(tmp_path / "cut.png", "abc")
    assert not sample_is_current(tmp_path / "missing.png", "abc")


def test_the_sampling_record_names_the_weights_by_content_and_the_steps_run(params, tmp_path):
    exp = experiment(params, "smoke_latent")
    (tmp_path / "nnet_ema.pth").write_bytes(b"weights")
    record = sampling_record(exp, tmp_path / "nnet_ema.pth", None, "fp32")
    cfg = exp["sampling"]
    assert record == {
        "experiment": "smoke_latent",
        "model_md5": hashlib.md5(b"weights").hexdigest(),
        "sampler": cfg["sampler"],
        "order": cfg["order"],
        "steps": cfg["steps"],
        "guidance_scale": cfg["guidance_scale"],
        "seed": cfg["seed"],
        "precision": "fp32",
    }
    assert sampling_record(exp, tmp_path / "nnet_ema.pth", 17, "bf16") | {"steps": 0, "precision": ""} == (
        record | {"steps": 0, "precision": ""}
    )
    assert sampling_record(exp, tmp_path / "nnet_ema.pth", 17, "bf16")["steps"] == 17


def test_only_this_ranks_stale_or_unreadable_samples_are_redrawn(tmp_path):
    """Rank 0 of 2 owns the even indices: its samples of other settings or unreadable are removed, with the
    changed settings named; odd ones (rank 1's) are never touched."""
    from uvit.config import settings_hash

    old, new = {"steps": 2, "seed": 0}, {"steps": 3, "seed": 0}
    image = np.zeros((2, 2, 3), np.uint8)
    for index in range(6):
        write_png(tmp_path / f"{index:06d}.png", image, settings_hash(new if index in (0, 3) else old))
    (tmp_path / "000004.png").write_bytes(b"not a png")
    (tmp_path / RECORD).write_text(json.dumps(old))
    logs = []
    clear_stale_samples(tmp_path, new, rank=0, world=2, log=logs.append)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "000000.png",
        "000001.png",
        "000003.png",
        "000005.png",
    ]
    assert logs == [
        f"{tmp_path}: samples drawn with other settings (steps 2 -> 3); drawing them again",
        f"{tmp_path}: removed 2 samples drawn with other settings or unreadable",
    ]
    assert json.loads((tmp_path / RECORD).read_text()) == new

    logs.clear()
    clear_stale_samples(tmp_path, new, rank=0, world=2, log=logs.append)  # nothing stale left: silent
    assert logs == [] and len(list(tmp_path.glob("*.png"))) == 4
    clear_stale_samples(tmp_path, new, rank=1, world=2, log=logs.append)  # rank 1: 000001 and 000005 are old
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["000000.png", "000003.png"]
    assert logs == [f"{tmp_path}: removed 2 samples drawn with other settings or unreadable"]

    (tmp_path / RECORD).write_text("{not json")
    logs.clear()
    clear_stale_samples(tmp_path, new, rank=0, world=1, log=logs.append)
    assert logs == [
        f"{tmp_path}: samples drawn with other settings ({RECORD} unreadable); drawing them again"
    ]
    assert len(list(tmp_path.glob("*.png"))) == 2


def released(tmp_path: Path, exp: dict, data_shape: tuple[int, ...], classes: int, context=None) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "nnet_ema.pth"
    torch.save(model_for(exp, data_shape, classes, context).state_dict(), path)
    return path


def test_released_class_weights_give_their_classes_and_image_shape(params, tmp_path):
    """A guided class model has K + 1 label embeddings (the null class) and a decoder of p^2 C outputs."""
    exp = experiment(params, "smoke_pixel", condition="class", training={"cond_drop_prob": 0.1})
    path = released(tmp_path, exp, (3, 16, 16), classes=7)
    assert weights_geometry(params, exp, path) == (7, (3, 16, 16))
    state = torch.load(path, weights_only=True)
    model = model_for_weights(params, exp, state)
    assert model.label_emb.num_embeddings == 8 and model.in_chans == 3
    import_weights(path, tmp_path / "copy.pth", params, exp)
    assert (tmp_path / "copy.pth").read_bytes() == path.read_bytes()

    exp = experiment(
        params, "smoke_pixel", condition="class", training={"cond_drop_prob": 0.0}
    )  # no null class:
    assert weights_geometry(params, exp, path)[0] == 8  # all 8 embeddings are classes


def test_released_latent_and_text_weights_take_channels_from_params_and_width_from_the_weights(
    params, tmp_path
):
    latent = experiment(params, "smoke_latent")
    side = 16 // 2  # digits at 16 px through digits_kl's two blocks (one downsampling)
    channels = params["autoencoders"]["digits_kl"]["latent_channels"]
    path = released(tmp_path, latent, (channels, side, side), classes=10)
    assert weights_geometry(params, latent, path) == (10, (channels, side, side))

    text = experiment(params, "smoke_text")
    tokens = params["datasets"]["emoji_mini"]["text_tokens"]
    path = released(tmp_path, text, (3, 16, 16), classes=1, context=(tokens, 24))
    model = model_for_weights(params, text, torch.load(path, weights_only=True))
    assert model.context_embed.in_features == 24 and model.in_chans == 3
    assert (
        model.pos_embed.shape[1] == 1 + tokens + (16 // 4) ** 2
    )  # time, the dataset's caption tokens, patches
    import_weights(path, tmp_path / "text.pth", params, text)
    assert weights_geometry(params, text, path) == (1, (3, 16, 16))

    grey = experiment(params, "smoke_pixel")  # unconditional, one channel: decoder of p^2 outputs
    assert weights_geometry(params, grey, released(tmp_path, grey, (1, 16, 16), classes=1)) == (
        1,
        (1, 16, 16),
    )


def test_released_weights_of_another_shape_are_refused_and_not_copied(params, tmp_path):
    exp = experiment(params, "smoke_pixel")
    other = experiment(params, "smoke_pixel", model={"embed_dim": 48})
    path = released(tmp_path, other, (1, 16, 16), classes=1)
    state = torch.load(path, weights_only=True)
    exp_state = model_for(exp, (1, 16, 16), 1).state_dict()
    assert (
        state["pos_embed"].shape != exp_state["pos_embed"].shape
    )  # 16 patches + the time token, D = 48 vs 32
    with pytest.raises(
        CheckpointError,
        match=rf"^{re.escape(str(path))}: pos_embed has shape \[1, 17, 48\], the model of smoke_pixel expects \[1, 17, 32\]",
    ):
        import_weights(path, tmp_path / "copy.pth", params, exp)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a state_dict"):
        import_weights(tmp_path / "list.pth", tmp_path / "copy.pth", params, exp)
    with pytest.raises(
        FileNotFoundError, match=r"missing.pth: no such file \(evaluation.pretrained_weights: the"
    ):
        import_weights(tmp_path / "missing.pth", tmp_path / "copy.pth", params, exp)
    rgb = experiment(params, "smoke_pixel")
    state = model_for(rgb, (3, 16, 16), 1).state_dict()
    del state["decoder_pred.weight"]  # without the decoder, an RGB model is assumed and the key is named
    torch.save(state, tmp_path / "no_decoder.pth")
    with pytest.raises(
        CheckpointError, match=r"no_decoder.pth: no 'decoder_pred.weight', which the model of"
    ):
        import_weights(tmp_path / "no_decoder.pth", tmp_path / "copy.pth", params, exp)
    assert not (tmp_path / "copy.pth").exists()


def test_a_sampler_without_the_dataset_takes_its_geometry_as_given_and_logs_the_precision(
    params, monkeypatch
):
    """Released weights evaluated without prepared data: classes and shape from the weights, a pretrained
    autoencoder's latent shape and scale factor from params (no encoded latents)."""
    import uvit.sampling as sampling

    monkeypatch.setattr(sampling, "load_autoencoder", lambda path: torch.nn.Identity())
    logs = []
    latent = experiment(params, "smoke_latent", sampling={"precision": "auto"})
    sampler = sampling.ImageSampler(
        latent, None, ae_dir=Path("ae"), latent_geometry=((4, 8, 8), 0.3), log=logs.append,
        weights_geometry=(10, (3, 64, 64)),
    )  # fmt: skip
    assert (sampler.data_shape, sampler.scale, sampler.classes, sampler.conditions.null) == (
        (4, 8, 8),
        0.3,
        10,
        10,
    )
    assert len(logs) == 1 and logs[0].startswith("sampling.precision: auto -> ")
    pixel = experiment(params, "smoke_pixel")
    sampler = sampling.ImageSampler(pixel, None, log=logs.append, weights_geometry=(1, (1, 16, 16)))
    assert (sampler.data_shape, sampler.scale, sampler.decoder, sampler.conditions.null) == (
        (1, 16, 16),
        1.0,
        None,
        None,
    )
