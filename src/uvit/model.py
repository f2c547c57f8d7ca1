"""The U-ViT noise-prediction network (Bao et al., CVPR 2023, section 3 and Figure 1).

Every input is a token: [class?, time, patches] for image models, [time, text tokens, patches] for text
models; pre-LayerNorm transformer blocks; long skips from each "in" block to the matching "out" block (last
in, first out), joined by Linear(Concat(h_m, h_s)); a LayerNorm and linear head, unpatchify, and an optional
3x3 conv. With the default settings parameter names and shapes are those of the authors' released
checkpoints (nnet_ema.pth), so those load with strict=True.

The design choices the paper ablates (section 3.1) are constructor settings:
  skip        concat_linear (default) | add | add_linear_skip | linear_of_sum | none
  time_cond   token (default) | adaln
  conv        after (default) | before | none
  patch_embed linear (default) | conv_stack
  pos_embed   learned (default) | sinusoidal_2d | none
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from uvit.conditioning import label_rows
from uvit.zoo import ARCHITECTURE_CHOICES

# --------------------------------------------------------------------------------------------------------
# Embeddings
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


def sincos_2d_embedding(grid_size: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sinusoidal position embedding (grid_size^2 x dim): half the channels encode the row, half
    the column, each as [sin, cos] of geometric frequencies (the 2-D variant of the paper's ablation)."""
    if dim % 4:
        raise ValueError(f"pos_embed: sinusoidal_2d needs embed_dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


class PatchEmbed(nn.Module):
    """Linear patch embedding: a p x p convolution with stride p, flattened to tokens."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ConvStemEmbed(nn.Module):
    """Convolutional patch embedding (the paper's ablation, after Xiao et al. 2021, "Early convolutions help
    transformers see better"): log2(p) stride-2 3x3 convs, each with a norm and ReLU, then a 1x1 conv to D.

    Channel widths double towards D/2. The norm is GroupNorm, not the BatchNorm of Xiao et al., since batch
    statistics would differ between training batches and sampling batches (the paper does not name one).
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        levels = int(math.log2(patch_size))
        if 2**levels != patch_size:
            raise ValueError(f"patch_embed: conv_stack needs a power-of-two patch size, got {patch_size}")
        layers: list[nn.Module] = []
        channels = in_chans
        for level in range(levels):
            width = embed_dim // 2 ** (levels - level)
            layers += [
                nn.Conv2d(channels, width, 3, stride=2, padding=1),
                nn.GroupNorm(math.gcd(32, width), width),
                nn.ReLU(),
            ]
            channels = width
        layers.append(nn.Conv2d(channels, embed_dim, 1))
        self.stem = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x).flatten(2).transpose(1, 2)


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

# Below this many tokens, attention on the CPU runs as two batched matmuls and a softmax: forward plus
# backward that is about 2x faster than SDPA's CPU kernels in fp32 and bf16 at U-ViT's lengths (65 to 1,100
# tokens; benchmarks/bench_model.py --attention measures it). Elsewhere SDPA picks a fused kernel.
CPU_MATMUL_ATTENTION_MAX_TOKENS = 2048


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over B x H x L x d tensors."""
    if backend == "matmul" or (
        backend == "auto" and q.device.type == "cpu" and q.shape[-2] <= CPU_MATMUL_ATTENTION_MAX_TOKENS
    ):
        weights = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        return weights.softmax(dim=-1) @ v
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, backend: str = "auto"):
        super().__init__()
        self.num_heads, self.backend = num_heads, backend
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = (
            self.qkv(x)
            .reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        x = attention(qkv[0], qkv[1], qkv[2], self.backend)
        return self.proj(x.transpose(1, 2).reshape(batch, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Adaptive LayerNorm's affine part: LN(h) * y_s + y_b with y_s = 1 + scale (identity at init)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Block(nn.Module):
    """Pre-LN transformer block. An out-block first joins the long skip h_s into the main branch h_m;
    with adaptive LayerNorm, both norms are modulated by a linear projection of the time embedding."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        skip: str | None = None,
        adaln: bool = False,
        attention_backend: str = "auto",
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, attention_backend)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.skip = skip if skip != "none" else None
        if self.skip == "concat_linear":
            self.skip_linear = nn.Linear(2 * dim, dim)
        elif self.skip in ("add_linear_skip", "linear_of_sum"):
            self.skip_linear = nn.Linear(dim, dim)
        self.adaln_modulation = nn.Linear(dim, 4 * dim) if adaln else None
        self.use_checkpoint = use_checkpoint

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, time_emb: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, skip, time_emb, use_reentrant=False)
        return self._forward(x, skip, time_emb)

    def join_skip(self, h_m: torch.Tensor, h_s: torch.Tensor) -> torch.Tensor:
        """The ways of section 3.1 to join the main branch h_m and the long-skip branch h_s."""
        if self.skip == "concat_linear":
            return self.skip_linear(torch.cat([h_m, h_s], dim=-1))
        if self.skip == "add":
            return h_m + h_s
        if self.skip == "add_linear_skip":
            return h_m + self.skip_linear(h_s)
        if self.skip == "linear_of_sum":
            return self.skip_linear(h_m + h_s)
        return h_m

    def _forward(
        self, x: torch.Tensor, skip: torch.Tensor | None, time_emb: torch.Tensor | None
    ) -> torch.Tensor:
        if self.skip is not None:
            x = self.join_skip(x, skip)
        h = self.norm1(x)
        if self.adaln_modulation is not None:
            shift1, scale1, shift2, scale2 = self.adaln_modulation(time_emb).chunk(4, dim=-1)
            h = modulate(h, shift1, scale1)
        x = x + self.attn(h)
        h = self.norm2(x)
        if self.adaln_modulation is not None:
            h = modulate(h, shift2, scale2)
        return x + self.mlp(h)


# --------------------------------------------------------------------------------------------------------
# U-ViT
# --------------------------------------------------------------------------------------------------------


class UViT(nn.Module):
    """U-ViT for images (pixel or latent): unconditional, class-conditional or text-conditional.

    `num_classes` counts the null class used by classifier-free guidance (ImageNet: 1000 + 1 = 1001); 0 builds
    a model without a class token. `context_dim` > 0 builds the text model: `context_tokens` tokens of width
    `context_dim` (77 x 768 for CLIP ViT-L/14) enter through a linear context embedding. Time values are fed
    as the authors do (t * 999 for continuous time, the integer step for discrete schedules).
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
        context_dim: int = 0,
        context_tokens: int = 0,
        skip: str = "concat_linear",
        time_cond: str = "token",
        conv: str = "after",
        patch_embed: str = "linear",
        pos_embed: str = "learned",
        attention: str = "auto",
        use_checkpoint: bool = False,
    ):
        super().__init__()
        for key, value in dict(
            skip=skip, time_cond=time_cond, conv=conv, patch_embed=patch_embed, pos_embed=pos_embed
        ).items():
            if value not in ARCHITECTURE_CHOICES[key]:
                raise ValueError(f"model.{key}: {value!r} is not one of {ARCHITECTURE_CHOICES[key]}")
        if num_classes and context_dim:
            raise ValueError("model: a U-ViT is conditioned on a class or on text tokens, not both")
        self.in_chans, self.embed_dim, self.time_cond = in_chans, embed_dim, time_cond
        embed = PatchEmbed if patch_embed == "linear" else ConvStemEmbed
        self.patch_embed = embed(patch_size, in_chans, embed_dim)
        grid = img_size // patch_size
        if num_classes > 0:
            self.label_emb = nn.Embedding(num_classes, embed_dim)
        if context_dim > 0:
            self.context_embed = nn.Linear(context_dim, embed_dim)
        self.extras = (time_cond == "token") + (num_classes > 0) + (context_tokens if context_dim else 0)
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + grid * grid, embed_dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        elif pos_embed == "sinusoidal_2d":
            fixed = torch.cat([torch.zeros(self.extras, embed_dim), sincos_2d_embedding(grid, embed_dim)])
            self.register_buffer("pos_embed", fixed[None], persistent=False)

        def block(skip_join: str | None = None) -> Block:
            return Block(
                embed_dim, num_heads, mlp_ratio, skip_join, time_cond == "adaln", attention, use_checkpoint
            )

        self.in_blocks = nn.ModuleList([block() for _ in range(depth // 2)])
        self.mid_block = block()
        self.out_blocks = nn.ModuleList([block(skip) for _ in range(depth // 2)])
        self.norm = nn.LayerNorm(embed_dim)
        if conv == "before":
            self.head_conv = nn.Conv2d(embed_dim, embed_dim, 3, padding=1)
        self.decoder_pred = nn.Linear(embed_dim, patch_size**2 * in_chans)
        self.final_layer = nn.Conv2d(in_chans, in_chans, 3, padding=1) if conv == "after" else nn.Identity()
        self.apply(_init_weights)

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """eps(x_t, t, c); `cond` is class indices (class models) or B x N x C text tokens (text models)."""
        x = self.patch_embed(x)
        time_emb = timestep_embedding(timesteps, self.embed_dim).to(x.dtype)
        tokens = [x]
        if hasattr(self, "context_embed"):
            tokens.insert(0, self.context_embed(cond.to(x.dtype)))
        if self.time_cond == "token":
            tokens.insert(0, time_emb.unsqueeze(1))
        if hasattr(self, "label_emb") and cond is not None:
            tokens.insert(0, self.label_emb(cond).unsqueeze(1))
        x = torch.cat(tokens, dim=1)
        if hasattr(self, "pos_embed"):  # learned or fixed; absent for pos_embed "none"
            x = x + self.pos_embed.to(x.dtype)
        adaln_emb = time_emb if self.time_cond == "adaln" else None
        skips = []
        for blk in self.in_blocks:
            x = blk(x, time_emb=adaln_emb)
            skips.append(x)
        x = self.mid_block(x, time_emb=adaln_emb)
        for blk in self.out_blocks:
            x = blk(x, skips.pop(), adaln_emb)
        x = self.norm(x)[:, self.extras :, :]
        if hasattr(self, "head_conv"):
            side = math.isqrt(x.shape[1])
            grid = x.transpose(1, 2).reshape(x.shape[0], self.embed_dim, side, side)
            x = self.head_conv(grid).flatten(2).transpose(1, 2)
        return self.final_layer(unpatchify(self.decoder_pred(x), self.in_chans))


def _init_weights(module: nn.Module) -> None:
    """Authors' init: truncated-normal (std 0.02) linear weights with zero bias; LayerNorm 1 and 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_model(
    settings: dict,
    img_size: int,
    in_chans: int,
    num_classes: int = 0,
    context_dim: int = 0,
    context_tokens: int = 0,
) -> UViT:
    """A U-ViT of a resolved `model` section (uvit.config.model_settings: every architecture setting) for inputs of
    `in_chans` x `img_size`^2. What the data decides is given here: `num_classes` rows of the class embedding (with
    the null class, if any; 0: no class token) and a text model's contexts, `context_tokens` tokens of width
    `context_dim` (0: no text)."""
    return UViT(
        img_size=img_size,
        in_chans=in_chans,
        embed_dim=settings["embed_dim"],
        depth=settings["depth"],
        num_heads=settings["num_heads"],
        patch_size=settings["patch_size"],
        mlp_ratio=settings["mlp_ratio"],
        num_classes=num_classes,
        context_dim=context_dim,
        context_tokens=context_tokens,
        skip=settings["skip"],
        time_cond=settings["time_cond"],
        conv=settings["conv"],
        patch_embed=settings["patch_embed"],
        pos_embed=settings["pos_embed"],
        attention=settings["attention"],
        use_checkpoint=settings["use_checkpoint"],
    )


def model_for(
    exp: dict, data_shape: tuple[int, ...], classes: int, context_shape: tuple[int, int] | None = None
) -> UViT:
    """The U-ViT of a resolved experiment for data of `data_shape` (channels, height, width) and `classes` classes,
    as training builds it and sampling loads it: a class model has a row per class, and the null class when it is
    trained for guidance (uvit.conditioning); a text model reads contexts of `context_shape` (tokens, width), the
    shape of its encoded captions."""
    tokens, width = context_shape if exp["condition"] == "text" else (0, 0)
    rows = label_rows(exp, classes)
    return build_model(exp["model"], data_shape[1], data_shape[0], rows, width, tokens)
