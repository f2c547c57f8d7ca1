"""The U-ViT noise-prediction network (Bao et al., CVPR 2023, section 3 and Figure 1).

Every input is a token: [class?, time, patches] (text models: [time, text tokens, patches]); pre-LayerNorm
transformer blocks; long skips from each "in" block to the matching "out" block (last in, first out), joined
by Linear(Concat(h_m, h_s)); a linear head, unpatchify, and an optional 3x3 conv. Parameter names and shapes
follow the authors' released checkpoints (nnet_ema.pth), so those load with strict=True.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from uvit.zoo import MODEL_ZOO

# --------------------------------------------------------------------------------------------------------
# Embedding layers
# --------------------------------------------------------------------------------------------------------


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) time values, [cos, sin] order as in the authors' code."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class PatchEmbed(nn.Module):
    """Linear patch embedding: a p x p convolution with stride p, flattened to tokens."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def unpatchify(x: torch.Tensor, channels: int) -> torch.Tensor:
    """B x L x (p*p*C) tokens back to a B x C x H x W image (tokens in row-major patch order)."""
    batch, length, patch_dim = x.shape
    patch = math.isqrt(patch_dim // channels)
    side = math.isqrt(length)
    x = x.reshape(batch, side, side, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, side * patch, side * patch)


# --------------------------------------------------------------------------------------------------------
# Transformer block with an optional long-skip input
# --------------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = (
            self.qkv(x)
            .reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(batch, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block; out-blocks first join the long skip: x = Linear(Concat(x, skip))."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, skip: bool = False, use_checkpoint: bool = False
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.use_checkpoint and self.training:
            return torch.utils.checkpoint.checkpoint(self._forward, x, skip, use_reentrant=False)
        return self._forward(x, skip)

    def _forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# --------------------------------------------------------------------------------------------------------
# U-ViT
# --------------------------------------------------------------------------------------------------------


class UViT(nn.Module):
    """U-ViT for images (pixel or latent), unconditional or class-conditional.

    `num_classes` counts the null class used by classifier-free guidance (ImageNet: 1000 + 1 = 1001);
    0 builds an unconditional model. Time values are fed as the authors do (t * 999 for continuous time).
    """

    def __init__(
        self,
        img_size: int,
        in_chans: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        patch_size: int,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        conv: bool = True,
        skip: bool = True,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        num_patches = (img_size // patch_size) ** 2
        if num_classes > 0:
            self.label_emb = nn.Embedding(num_classes, embed_dim)
        self.extras = 2 if num_classes > 0 else 1
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + num_patches, embed_dim))

        def block(skip_in: bool) -> Block:
            return Block(embed_dim, num_heads, mlp_ratio, skip=skip_in, use_checkpoint=use_checkpoint)

        self.in_blocks = nn.ModuleList([block(False) for _ in range(depth // 2)])
        self.mid_block = block(False)
        self.out_blocks = nn.ModuleList([block(skip) for _ in range(depth // 2)])
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder_pred = nn.Linear(embed_dim, patch_size**2 * in_chans)
        self.final_layer = nn.Conv2d(in_chans, in_chans, 3, padding=1) if conv else nn.Identity()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_weights)

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.patch_embed(x)
        time_token = timestep_embedding(timesteps, self.embed_dim).to(x.dtype).unsqueeze(1)
        tokens = [time_token, x]
        if y is not None:
            tokens.insert(0, self.label_emb(y).unsqueeze(1))
        x = torch.cat(tokens, dim=1) + self.pos_embed
        skips = []
        for blk in self.in_blocks:
            x = blk(x)
            skips.append(x)
        x = self.mid_block(x)
        for blk in self.out_blocks:
            x = blk(x, skips.pop())
        x = self.decoder_pred(self.norm(x))[:, self.extras :, :]
        return self.final_layer(unpatchify(x, self.in_chans))


def _init_weights(module: nn.Module) -> None:
    """Authors' init: truncated-normal (std 0.02) linear weights with zero bias; LayerNorm 1 and 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_model(model_cfg: dict, img_size: int, in_chans: int, num_classes: int = 0) -> UViT:
    """Build a U-ViT from a params.yaml `model` section (a zoo name or free settings)."""
    settings = {**model_cfg, **MODEL_ZOO.get(model_cfg.get("name") or "", {})}
    return UViT(
        img_size=img_size,
        in_chans=in_chans,
        embed_dim=settings["embed_dim"],
        depth=settings["depth"],
        num_heads=settings["num_heads"],
        patch_size=settings["patch_size"],
        mlp_ratio=settings.get("mlp_ratio", 4.0),
        num_classes=num_classes,
        conv=settings.get("conv", True),
        use_checkpoint=settings.get("use_checkpoint", False),
    )
