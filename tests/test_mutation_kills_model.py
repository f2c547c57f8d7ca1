"""Model settings that mutation testing (benchmarks/mutation.py) found unchecked: the MLP ratio reaches every
block (the authors' `mlp_ratio`: hidden width = ratio x embed_dim), and the `attention` setting picks the
kernel it names (on the CPU, `auto` takes the explicit matmul for short sequences, see uvit.model.attention).
"""

from __future__ import annotations

import pytest
import torch

import uvit.model as model_module
from uvit.config import model_settings
from uvit.model import UViT, build_model

TINY = {"embed_dim": 32, "depth": 3, "num_heads": 2, "patch_size": 4}


def blocks(model) -> list:
    return [*model.in_blocks, model.mid_block, *model.out_blocks]


@pytest.mark.parametrize(("ratio", "hidden"), [(None, 128), (2, 64), (1.5, 48)])
def test_the_mlp_hidden_width_is_mlp_ratio_times_the_embedding_width(ratio, hidden, params):
    cfg = TINY | ({} if ratio is None else {"mlp_ratio": ratio})  # the authors' default ratio is 4
    model = build_model(model_settings(params, {"model": cfg}), img_size=16, in_chans=1)
    assert [
        (b.mlp.fc1.in_features, b.mlp.fc1.out_features, b.mlp.fc2.out_features) for b in blocks(model)
    ] == [(32, hidden, 32)] * 3


@pytest.mark.parametrize(("setting", "sdpa_calls"), [(None, 0), ("auto", 0), ("matmul", 0), ("sdpa", 3)])
def test_the_attention_setting_picks_the_kernel(setting, sdpa_calls, monkeypatch, params):
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def sdpa(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(model_module.F, "scaled_dot_product_attention", sdpa)
    cfg = TINY | ({} if setting is None else {"attention": setting})
    model = build_model(model_settings(params, {"model": cfg}), img_size=16, in_chans=1).eval()
    with torch.no_grad():
        model(torch.randn(2, 1, 16, 16), torch.tensor([1.0, 2.0]))
    assert len(calls) == sdpa_calls  # one call per block: 17 tokens (16 patches and the time token) each


@pytest.mark.parametrize("key", ["skip", "time_cond", "conv", "patch_embed", "pos_embed"])
def test_an_unknown_architecture_choice_is_refused_by_name(key):
    with pytest.raises(ValueError, match=rf"model\.{key}: 'bogus' is not one of"):
        UViT(16, 1, 32, 3, 2, 4, **{key: "bogus"})


def test_context_tokens_count_only_for_a_text_model():
    """Tokens: [time, (class | contexts), patches]; without a context width there are no context tokens."""
    grid = (16 // 4) ** 2
    assert UViT(16, 1, 32, 3, 2, 4, context_tokens=5).pos_embed.shape == (1, 1 + grid, 32)
    assert UViT(16, 1, 32, 3, 2, 4, context_tokens=5, context_dim=8).pos_embed.shape == (1, 1 + 5 + grid, 32)
    assert UViT(16, 1, 32, 3, 2, 4, num_classes=3).pos_embed.shape == (1, 2 + grid, 32)
