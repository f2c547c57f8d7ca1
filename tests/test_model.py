"""The U-ViT network: named models, the authors' parameter layout, and the forward pass."""

from __future__ import annotations

import pytest
import torch

from uvit.model import UViT, build_model, timestep_embedding, unpatchify
from uvit.zoo import MODEL_ZOO, PAPER_PARAMS_M

# Input size, channels and classes each named model is used with in the paper.
USAGE = {
    "U-ViT-S/2": (32, 3, 0),
    "U-ViT-S/4": (64, 3, 0),
    "U-ViT-M/4": (64, 3, 1000),
    "U-ViT-L/4": (64, 3, 1000),
    "U-ViT-L/2": (32, 4, 1001),
    "U-ViT-H/2": (32, 4, 1001),
    "U-ViT-H/4": (64, 4, 1001),
}


@pytest.mark.parametrize("name", sorted(MODEL_ZOO))
def test_parameter_counts_match_the_paper(name):
    img, chans, classes = USAGE[name]
    with torch.device("meta"):
        model = build_model({"name": name}, img, chans, classes)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - PAPER_PARAMS_M[name]) / PAPER_PARAMS_M[name] < 0.01


def authors_layout(depth: int, class_model: bool, conv: bool) -> set[str]:
    """Parameter names of the authors' released nnet_ema.pth files, written from their layout."""
    names = {"pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    names |= {"decoder_pred.weight", "decoder_pred.bias"}
    if class_model:
        names.add("label_emb.weight")
    if conv:
        names |= {"final_layer.weight", "final_layer.bias"}
    block = [
        "norm1.weight",
        "norm1.bias",
        "attn.qkv.weight",
        "attn.proj.weight",
        "attn.proj.bias",
        "norm2.weight",
        "norm2.bias",
    ]
    block += ["mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    for i in range(depth // 2):
        names |= {f"in_blocks.{i}.{n}" for n in block}
        names |= {f"out_blocks.{i}.{n}" for n in [*block, "skip_linear.weight", "skip_linear.bias"]}
    names |= {f"mid_block.{n}" for n in block}
    return names


@pytest.mark.parametrize(("name", "classes"), [("U-ViT-S/2", 0), ("U-ViT-L/2", 1001), ("U-ViT-H/2", 1001)])
def test_parameter_names_follow_the_authors_layout(name, classes):
    img, chans, _ = USAGE[name]
    with torch.device("meta"):
        model = build_model({"name": name}, img, chans, classes)
    expected = authors_layout(MODEL_ZOO[name]["depth"], classes > 0, MODEL_ZOO[name]["conv"])
    assert set(model.state_dict()) == expected
    assert tuple(model.state_dict()["pos_embed"].shape) == (
        1,
        (img // MODEL_ZOO[name]["patch_size"]) ** 2 + 1 + (classes > 0),
        MODEL_ZOO[name]["embed_dim"],
    )


def test_timestep_embedding_is_cos_then_sin():
    t = torch.tensor([0.0, 5.0])
    emb = timestep_embedding(t, 8)
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    expected = torch.cat([torch.cos(5.0 * freqs), torch.sin(5.0 * freqs)])
    torch.testing.assert_close(emb[1], expected)
    torch.testing.assert_close(emb[0], torch.cat([torch.ones(4), torch.zeros(4)]))


def test_unpatchify_inverts_patch_order():
    image = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    p = 4
    tokens = image.reshape(2, 3, 2, p, 2, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 4, p * p * 3)
    torch.testing.assert_close(unpatchify(tokens, 3), image)


def test_forward_shapes_and_condition_changes_output():
    torch.manual_seed(0)
    model = UViT(
        img_size=16, in_chans=2, embed_dim=32, depth=3, num_heads=2, patch_size=4, num_classes=5
    ).eval()
    x, t = torch.randn(3, 2, 16, 16), torch.tensor([1.0, 500.0, 999.0])
    out_a = model(x, t, torch.tensor([0, 1, 2]))
    out_b = model(x, t, torch.tensor([3, 3, 3]))
    assert out_a.shape == x.shape
    assert not torch.allclose(out_a, out_b)


def test_init_follows_the_authors():
    torch.manual_seed(0)
    model = UViT(img_size=32, in_chans=3, embed_dim=256, depth=5, num_heads=4, patch_size=2)
    fc = model.in_blocks[0].mlp.fc1
    assert fc.bias.abs().max() == 0 and abs(fc.weight.std().item() - 0.02) < 0.002
    assert torch.all(model.norm.weight == 1)
