"""The U-ViT network: named models, the authors' parameter layout, the forward pass and every ablation switch."""

from __future__ import annotations

import functools

import pytest
import torch
import yaml
from conftest import ROOT

from uvit.config import load_params, model_settings
from uvit.model import UViT, build_model, sincos_2d_embedding, timestep_embedding, unpatchify
from uvit.zoo import ARCHITECTURE_CHOICES, CONTEXT_TOKENS, MODEL_ZOO, PAPER_PARAMS_M

# Input size, channels, classes and text width each named model is used with in the paper.
USAGE = {
    "U-ViT-S/2": (32, 3, 0, 0),
    "U-ViT-S/4": (64, 3, 0, 0),
    "U-ViT-M/4": (64, 3, 1000, 0),
    "U-ViT-L/4": (64, 3, 1000, 0),
    "U-ViT-L/2": (32, 4, 1001, 0),
    "U-ViT-H/2": (32, 4, 1001, 0),
    "U-ViT-H/4": (64, 4, 1001, 0),
    "U-ViT-S/2-text": (32, 4, 0, 768),
    "U-ViT-S/2-Deep-text": (32, 4, 0, 768),
}


@functools.cache
def project_params() -> dict:
    return load_params(ROOT / "params.yaml")


def meta_model(name: str, **overrides) -> UViT:
    """A named model as the paper uses it; its settings resolved as an experiment's (params.yaml's defaults, then
    the zoo entry, then `overrides`), the text models with CLIP's 77 tokens."""
    img, chans, classes, context = USAGE[name]
    settings = model_settings(project_params(), {"model": {"name": name, **overrides}})
    with torch.device("meta"):
        return build_model(settings, img, chans, classes, context, CONTEXT_TOKENS if context else 0)


def test_every_named_model_has_a_usage():
    assert set(USAGE) == set(MODEL_ZOO) == set(PAPER_PARAMS_M)


@pytest.mark.parametrize("name", sorted(MODEL_ZOO))
def test_parameter_counts_match_the_paper(name):
    count = sum(p.numel() for p in meta_model(name).parameters()) / 1e6
    assert abs(count - PAPER_PARAMS_M[name]) / PAPER_PARAMS_M[name] < 0.01, count


BLOCK = [
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
]


def authors_layout(depth: int, class_model: bool, conv: bool, text_model: bool = False) -> set[str]:
    """Parameter names of the authors' released nnet_ema.pth files, written from their layout."""
    names = {"pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    names |= {"decoder_pred.weight", "decoder_pred.bias"}
    if class_model:
        names.add("label_emb.weight")
    if text_model:
        names |= {"context_embed.weight", "context_embed.bias"}
    if conv:
        names |= {"final_layer.weight", "final_layer.bias"}
    for i in range(depth // 2):
        names |= {f"in_blocks.{i}.{n}" for n in BLOCK}
        names |= {f"out_blocks.{i}.{n}" for n in [*BLOCK, "skip_linear.weight", "skip_linear.bias"]}
    names |= {f"mid_block.{n}" for n in BLOCK}
    return names


@pytest.mark.parametrize("name", ["U-ViT-S/2", "U-ViT-L/2", "U-ViT-H/2", "U-ViT-S/2-text"])
def test_parameter_names_follow_the_authors_layout(name):
    img, _, classes, context = USAGE[name]
    cfg = MODEL_ZOO[name]
    state = meta_model(name).state_dict()
    assert set(state) == authors_layout(cfg["depth"], classes > 0, cfg["conv"] == "after", context > 0)
    extras = 1 + (classes > 0) + (77 if context else 0)
    assert tuple(state["pos_embed"].shape) == (1, (img // cfg["patch_size"]) ** 2 + extras, cfg["embed_dim"])
    if context:
        assert tuple(state["context_embed.weight"].shape) == (cfg["embed_dim"], 768)


def test_class_model_with_guidance_has_a_null_class_row():
    assert meta_model("U-ViT-L/2").label_emb.weight.shape == (1001, 1024)


def test_text_model_takes_any_context_width():
    torch.manual_seed(0)
    model = tiny(context_dim=384, context_tokens=5).eval()
    x, t = torch.randn(2, 2, 16, 16), torch.tensor([10.0, 900.0])
    context = torch.randn(2, 5, 384)
    out = model(x, t, context)
    assert out.shape == x.shape and model.context_embed.in_features == 384
    assert not torch.allclose(out, model(x, t, context.flip(0)))


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


def tiny(**settings) -> UViT:
    base = dict(img_size=16, in_chans=2, embed_dim=32, depth=3, num_heads=2, patch_size=4)
    return UViT(**(base | settings))


def test_forward_shapes_and_condition_changes_output():
    torch.manual_seed(0)
    model = tiny(num_classes=5).eval()
    x, t = torch.randn(3, 2, 16, 16), torch.tensor([1.0, 500.0, 999.0])
    out_a = model(x, t, torch.tensor([0, 1, 2]))
    out_b = model(x, t, torch.tensor([3, 3, 3]))
    assert out_a.shape == x.shape
    assert not torch.allclose(out_a, out_b)


def test_token_order_is_class_time_patches():
    """The class token sits at position 0 and the time token at 1: swapping their embeddings' roles (feeding
    the time embedding where the class goes) must change the output, and the pos_embed length must fit."""
    torch.manual_seed(0)
    model = tiny(num_classes=3).eval()
    assert model.extras == 2 and model.pos_embed.shape[1] == 2 + 16
    x, t, y = torch.randn(1, 2, 16, 16), torch.tensor([7.0]), torch.tensor([1])
    captured = {}
    model.in_blocks[0].register_forward_pre_hook(lambda _m, args: captured.setdefault("x", args[0]))
    model(x, t, y)
    tokens = captured["x"] - model.pos_embed
    torch.testing.assert_close(tokens[0, 0], model.label_emb.weight[1])
    torch.testing.assert_close(tokens[0, 1], timestep_embedding(t, 32)[0])


def test_init_follows_the_authors():
    torch.manual_seed(0)
    model = UViT(img_size=32, in_chans=3, embed_dim=256, depth=5, num_heads=4, patch_size=2)
    fc = model.in_blocks[0].mlp.fc1
    assert fc.bias.abs().max() == 0 and abs(fc.weight.std().item() - 0.02) < 0.002
    assert torch.all(model.norm.weight == 1)
    assert abs(model.pos_embed.std().item() - 0.02) < 0.002  # timm-style truncation at +-2 (absolute)


# --------------------------------------------------------------------------------------------------------
# Ablation switches (paper section 3.1)
# --------------------------------------------------------------------------------------------------------

ALL_SETTINGS = [(key, value) for key, values in ARCHITECTURE_CHOICES.items() for value in values]


def test_schema_lists_the_same_choices():
    schema = yaml.safe_load((ROOT / "workflow/schemas/params.schema.yaml").read_text())
    model_schema = schema["$defs"]["experiment"]["properties"]["model"]["properties"]
    for key, values in ARCHITECTURE_CHOICES.items():
        assert tuple(model_schema[key]["enum"]) == values


@pytest.mark.parametrize(("key", "value"), ALL_SETTINGS)
def test_every_setting_runs_forward_and_backward(key, value):
    torch.manual_seed(0)
    model = tiny(num_classes=4, **{key: value})
    x, t, y = torch.randn(2, 2, 16, 16), torch.tensor([3.0, 700.0]), torch.tensor([0, 3])
    out = model(x, t, y)
    assert out.shape == x.shape
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def names(**settings) -> set[str]:
    return set(tiny(**settings).state_dict())


def test_skip_joins_have_the_right_parameters():
    default = names()
    skip_params = {n for n in default if "skip_linear" in n}
    assert skip_params == {"out_blocks.0.skip_linear.weight", "out_blocks.0.skip_linear.bias"}
    assert tiny().out_blocks[0].skip_linear.in_features == 64
    for skip in ("add", "none"):
        assert names(skip=skip) == default - skip_params
    for skip in ("add_linear_skip", "linear_of_sum"):
        assert names(skip=skip) == default
        assert tiny(skip=skip).out_blocks[0].skip_linear.in_features == 32


def test_skip_joins_compute_what_they_say():
    torch.manual_seed(0)
    block = tiny(skip="add_linear_skip").out_blocks[0]
    h_m, h_s = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    torch.testing.assert_close(block.join_skip(h_m, h_s), h_m + block.skip_linear(h_s))
    block.skip = "linear_of_sum"
    torch.testing.assert_close(block.join_skip(h_m, h_s), block.skip_linear(h_m + h_s))
    block.skip = "add"
    torch.testing.assert_close(block.join_skip(h_m, h_s), h_m + h_s)


def test_skip_none_ignores_the_in_blocks_outputs_but_add_uses_them():
    """Same weights: 'add' and 'none' differ only by the long skip, so their outputs must differ."""
    torch.manual_seed(0)
    without = tiny(skip="none").eval()
    with_add = tiny(skip="add").eval()
    with_add.load_state_dict(without.state_dict(), strict=True)
    x, t = torch.randn(2, 2, 16, 16), torch.tensor([3.0, 700.0])
    assert not torch.allclose(without(x, t), with_add(x, t))


def test_adaptive_layernorm_has_no_time_token():
    model = tiny(time_cond="adaln", num_classes=3)
    assert model.extras == 1 and model.pos_embed.shape[1] == 1 + 16
    assert "in_blocks.0.adaln_modulation.weight" in model.state_dict()
    assert not any("adaln" in n for n in names())
    torch.manual_seed(0)
    model.eval()
    x, y = torch.randn(1, 2, 16, 16), torch.tensor([2])
    assert not torch.allclose(model(x, torch.tensor([1.0]), y), model(x, torch.tensor([900.0]), y))


def test_conv_placement():
    assert "final_layer.weight" in names() and "head_conv.weight" not in names()
    before = names(conv="before")
    assert "head_conv.weight" in before and "final_layer.weight" not in before
    assert tiny(conv="before").head_conv.in_channels == 32
    none = names(conv="none")
    assert not any(n.startswith(("final_layer", "head_conv")) for n in none)


def test_conv_stack_patch_embedding():
    model = tiny(patch_embed="conv_stack")  # patch 4: two stride-2 3x3 convs, then a 1x1
    convs = [m for m in model.patch_embed.stem if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.stride) for c in convs] == [
        ((3, 3), (2, 2)),
        ((3, 3), (2, 2)),
        ((1, 1), (1, 1)),
    ]
    assert convs[-1].out_channels == 32
    assert model.patch_embed(torch.randn(1, 2, 16, 16)).shape == (1, 16, 32)
    with pytest.raises(ValueError, match="power-of-two"):
        tiny(img_size=18, patch_size=6, patch_embed="conv_stack")


def permute_patches(x: torch.Tensor, order: torch.Tensor, patch: int) -> torch.Tensor:
    b, c, h, w = x.shape
    grid = x.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    grid = grid.reshape(b, -1, c, patch, patch)[:, order]
    grid = grid.reshape(b, h // patch, w // patch, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(b, c, h, w)


@pytest.mark.parametrize(
    ("pos_embed", "equivariant"), [("none", True), ("learned", False), ("sinusoidal_2d", False)]
)
def test_position_embedding_breaks_permutation_symmetry(pos_embed, equivariant):
    """Without a position embedding (and without the final conv), attention cannot tell patches apart:
    permuting the input's patches permutes the output's patches the same way."""
    torch.manual_seed(0)
    model = tiny(pos_embed=pos_embed, conv="none").eval()
    x, t = torch.randn(1, 2, 16, 16), torch.tensor([250.0])
    order = torch.randperm(16)
    permuted_out = model(permute_patches(x, order, 4), t)
    out_permuted = permute_patches(model(x, t), order, 4)
    assert torch.allclose(permuted_out, out_permuted, atol=1e-5) == equivariant
    has_param = "pos_embed" in names(pos_embed=pos_embed)
    assert has_param == (pos_embed == "learned")


def test_sinusoidal_2d_embedding_encodes_rows_and_columns():
    emb = sincos_2d_embedding(4, 16)
    assert emb.shape == (16, 16)
    torch.testing.assert_close(emb[0, :4], torch.zeros(4))  # sin(0) at row 0 ...
    torch.testing.assert_close(emb[0, 4:8], torch.ones(4))  # ... cos(0)
    torch.testing.assert_close(emb[1, :8], emb[0, :8])  # same row, same first half
    torch.testing.assert_close(emb[4, 8:], emb[0, 8:])  # same column, same second half
    torch.testing.assert_close(emb[1, 8], torch.sin(torch.tensor(1.0)))


# --------------------------------------------------------------------------------------------------------
# Speed paths compute the same function
# --------------------------------------------------------------------------------------------------------


def test_attention_backends_agree():
    torch.manual_seed(0)
    model = tiny(num_classes=3).eval()
    x, t, y = torch.randn(2, 2, 16, 16), torch.tensor([3.0, 700.0]), torch.tensor([0, 2])
    reference = model(x, t, y)
    for backend in ("sdpa", "matmul"):
        for blk in [*model.in_blocks, model.mid_block, *model.out_blocks]:
            blk.attn.backend = backend
        torch.testing.assert_close(model(x, t, y), reference, atol=1e-5, rtol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = tiny(num_classes=3)
    checkpointed = tiny(num_classes=3, use_checkpoint=True)
    checkpointed.load_state_dict(plain.state_dict())
    x, t, y = torch.randn(2, 2, 16, 16), torch.tensor([3.0, 700.0]), torch.tensor([0, 2])
    for model in (plain, checkpointed):
        model(x, t, y).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_zoo_name_with_overrides(params):
    from uvit.config import model_settings

    ablation = model_settings(params, {"model": {"name": "U-ViT-S/2", "skip": "none"}})
    assert ablation["embed_dim"] == 512 and ablation["skip"] == "none" and ablation["conv"] == "after"
    huge = model_settings(params, {"model": {"name": "U-ViT-H/2"}})
    assert huge["conv"] == "none" and huge["depth"] == 29


# --------------------------------------------------------------------------------------------------------
# An independent, functional forward over a state_dict, written from the authors' description
# --------------------------------------------------------------------------------------------------------


def reference_forward(state: dict, x, t, y, depth: int, heads: int, conv: bool) -> torch.Tensor:
    F = torch.nn.functional
    dim = state["pos_embed"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    tokens = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    tokens = tokens.flatten(2).transpose(1, 2)
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(dim // 2) / (dim // 2))
    time = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=1)
    h = torch.cat([state["label_emb.weight"][y][:, None], time[:, None], tokens], 1) + state["pos_embed"]

    def block(prefix: str, h: torch.Tensor, skip=None) -> torch.Tensor:
        p = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if skip is not None:
            h = F.linear(torch.cat([h, skip], -1), p["skip_linear.weight"], p["skip_linear.bias"])
        a = F.layer_norm(h, (dim,), p["norm1.weight"], p["norm1.bias"], eps=1e-5)
        b, n, _ = a.shape
        q, k, v = F.linear(a, p["attn.qkv.weight"]).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1)
        a = (weights @ v).transpose(1, 2).reshape(b, n, dim)
        h = h + F.linear(a, p["attn.proj.weight"], p["attn.proj.bias"])
        m = F.layer_norm(h, (dim,), p["norm2.weight"], p["norm2.bias"], eps=1e-5)
        m = F.linear(
            F.gelu(F.linear(m, p["mlp.fc1.weight"], p["mlp.fc1.bias"])),
            p["mlp.fc2.weight"],
            p["mlp.fc2.bias"],
        )
        return h + m

    skips = []
    for i in range(depth // 2):
        h = block(f"in_blocks.{i}.", h)
        skips.append(h)
    h = block("mid_block.", h)
    for i in range(depth // 2):
        h = block(f"out_blocks.{i}.", h, skips.pop())
    h = F.layer_norm(h, (dim,), state["norm.weight"], state["norm.bias"], eps=1e-5)
    h = F.linear(h, state["decoder_pred.weight"], state["decoder_pred.bias"])[:, 2:]
    channels, side = x.shape[1], x.shape[2] // patch
    image = h.reshape(-1, side, side, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)
    image = image.reshape(x.shape)
    return (
        F.conv2d(image, state["final_layer.weight"], state["final_layer.bias"], padding=1) if conv else image
    )


@pytest.mark.parametrize("conv", ["after", "none"])
def test_forward_equals_an_independent_implementation(conv):
    torch.manual_seed(0)
    model = UViT(
        img_size=16, in_chans=3, embed_dim=48, depth=5, num_heads=3, patch_size=4, num_classes=6, conv=conv
    )
    with torch.no_grad():  # move every parameter off its init, so zero biases and unit norms hide nothing
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = {k: v.detach() for k, v in model.state_dict().items()}
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([17.0, 960.0]), torch.tensor([1, 5])
    expected = reference_forward(state, x, t, y, depth=5, heads=3, conv=conv == "after")
    torch.testing.assert_close(model.eval()(x, t, y), expected, atol=1e-5, rtol=1e-5)


def test_no_graph_breaks_under_torch_compile():
    """fullgraph=True fails on any graph break; the eager backend traces without generating code (fast)."""
    torch.manual_seed(0)
    for settings in (
        {},
        {"time_cond": "adaln", "conv": "before", "pos_embed": "sinusoidal_2d", "skip": "add"},
    ):
        model = tiny(num_classes=3, **settings)
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        x, t, y = torch.randn(2, 2, 16, 16), torch.tensor([3.0, 700.0]), torch.tensor([0, 2])
        torch.testing.assert_close(compiled(x, t, y), model(x, t, y))
