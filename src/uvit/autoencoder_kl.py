"""The KL autoencoder of Latent Diffusion (Rombach et al. 2022, Sec. 3.1), Stable Diffusion's KL-f8 first stage,
written out with diffusers' parameter names and folder layout (config.json + diffusion_pytorch_model.safetensors),
so that a folder saved by either loads in the other.

Our own copy, not diffusers' AutoencoderKL: importing that class imports every model diffusers has (and
torch._dynamo), ~4.5 s of CPU in each job that encodes or decodes. The same modules are built in the same order
and run the same operations, so a seed gives the same weights and an input the same outputs as diffusers' class
(tests/test_autoencoder.py checks both against it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from uvit.errors import UserError

CONFIG_FILE = "config.json"
WEIGHTS_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")  # diffusers' names
EPS = 1e-6  # of every GroupNorm in the autoencoder
# The architecture this module builds, in diffusers' config keys: anything else is another network.
ONLY = {"act_fn": "silu", "down_block_types": "DownEncoderBlock2D", "up_block_types": "UpDecoderBlock2D"}


class AutoencoderError(UserError, RuntimeError):
    """An autoencoder file that cannot be used; the message names it and what was expected."""


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        if (
            self.conv_shortcut is not None
        ):  # diffusers' layouts, which decide the CPU kernels and their rounding
            x = self.conv_shortcut(x.contiguous() if self.training else x)
        return x + h


class Attention(nn.Module):
    """Single-head self-attention over the h x w positions, residual (the mid-blocks' only attention)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.group_norm(x.view(n, c, h * w)).transpose(1, 2)
        q, k, v = (
            proj(tokens).view(n, -1, 1, c).transpose(1, 2) for proj in (self.to_q, self.to_k, self.to_v)
        )
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, -1, c)
        return self.to_out[0](out).transpose(-1, -2).reshape(n, c, h, w) + x


class MidBlock(nn.Module):
    """resnet, attention, resnet at the lowest resolution."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        first = ResnetBlock(
            channels, channels, groups
        )  # built in diffusers' order: the seed gives its weights
        self.attentions = nn.ModuleList([Attention(channels, groups) if attention else None])
        self.resnets = nn.ModuleList([first, ResnetBlock(channels, channels, groups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions[0] is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # LDM pads right and bottom only


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] >= 64 or x.numel() * 2 > 2**31:  # diffusers' contiguity rule (it decides the kernels)
            x = x.contiguous()
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Module):
    """Resnets at one resolution, then a change of resolution (none after the last encoder / decoder stage)."""

    def __init__(
        self, cin: int, cout: int, layers: int, groups: int, resample: type[nn.Module] | None, name: str
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(layers)]
        )
        setattr(self, name, nn.ModuleList([resample(cout)]) if resample else None)
        self.resample = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for layer in getattr(self, self.resample) or ():
            x = layer(x)
        return x


class Encoder(nn.Module):
    def __init__(self, cin: int, channels: list[int], layers: int, groups: int, latent: int, attention: bool):
        super().__init__()
        self.conv_in = nn.Conv2d(cin, channels[0], 3, padding=1)
        last = len(channels) - 1
        self.down_blocks = nn.ModuleList(
            Stage(
                channels[max(i - 1, 0)], c, layers, groups, Downsample if i < last else None, "downsamplers"
            )
            for i, c in enumerate(channels)
        )
        self.mid_block = MidBlock(channels[-1], groups, attention)
        self.conv_norm_out = nn.GroupNorm(groups, channels[-1], eps=EPS)
        self.conv_out = nn.Conv2d(channels[-1], 2 * latent, 3, padding=1)  # mean and log-variance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    def __init__(
        self, latent: int, cout: int, channels: list[int], layers: int, groups: int, attention: bool
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(latent, channels[-1], 3, padding=1)
        self.up_blocks = nn.ModuleList()  # registered before the mid-block, built after it (diffusers' order)
        self.mid_block = MidBlock(channels[-1], groups, attention)
        up = list(reversed(channels))
        for i, c in enumerate(up):  # one resnet more per stage than the encoder has
            resample = Upsample if i < len(up) - 1 else None
            self.up_blocks.append(Stage(up[max(i - 1, 0)], c, layers + 1, groups, resample, "upsamplers"))
        self.conv_norm_out = nn.GroupNorm(groups, channels[0], eps=EPS)
        self.conv_out = nn.Conv2d(channels[0], cout, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class DiagonalGaussian:
    """The posterior N(mean, exp(logvar)) of each latent, from the encoder's 2C channels (LDM's clamp)."""

    def __init__(self, parameters: torch.Tensor):
        self.parameters = parameters
        self.mean, logvar = parameters.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std, self.var = torch.exp(0.5 * self.logvar), torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        device = self.parameters.device if generator is None else generator.device  # as diffusers draws
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.parameters.dtype)
        return self.mean + self.std * noise.to(self.parameters.device)

    def kl(self) -> torch.Tensor:
        """KL to N(0, I) per image, summed over the latent."""
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])

    def mode(self) -> torch.Tensor:
        return self.mean


@dataclass
class Encoded:
    latent_dist: DiagonalGaussian


@dataclass
class Decoded:
    sample: torch.Tensor


class AutoencoderKL(nn.Module):
    """x (N x in_channels x H x W in [-1, 1]) -> posterior over N x latent_channels x H/f x W/f, f = 2^(stages-1);
    keyword arguments as diffusers' AutoencoderKL takes them (its config.json)."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
        **config,
    ):
        super().__init__()
        channels = list(block_out_channels)
        architecture = {
            key: [value] * len(channels) if key.endswith("_types") else value for key, value in ONLY.items()
        }
        given = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            block_out_channels=channels,
            layers_per_block=layers_per_block,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_post_quant_conv,
            mid_block_add_attention=mid_block_add_attention,
        )
        self.config = architecture | config | given  # config.json as save_pretrained writes it
        check_architecture(self.config, "AutoencoderKL")
        groups, attention = norm_num_groups, mid_block_add_attention
        self.encoder = Encoder(in_channels, channels, layers_per_block, groups, latent_channels, attention)
        self.decoder = Decoder(latent_channels, out_channels, channels, layers_per_block, groups, attention)
        latent = latent_channels
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent, latent, 1) if use_post_quant_conv else None

    def encode(self, x: torch.Tensor) -> Encoded:
        moments = self.encoder(x)
        return Encoded(DiagonalGaussian(moments if self.quant_conv is None else self.quant_conv(moments)))

    def decode(self, z: torch.Tensor) -> Decoded:
        return Decoded(self.decoder(z if self.post_quant_conv is None else self.post_quant_conv(z)))

    @classmethod
    def from_state_dict(cls, config: dict, state: dict[str, torch.Tensor]) -> AutoencoderKL:
        """The network of `config` holding `state` (float32), built without drawing random initial weights."""
        with torch.device("meta"):
            model = cls(**config)
        # Copies: a file's tensors share one buffer at any offset, and a weight's alignment can change which
        # CPU kernel runs (so the rounding) - loaded weights compute what the saved ones did.
        state = {name: tensor.to(torch.float32, copy=True) for name, tensor in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        return model

    @classmethod
    def from_pretrained(cls, path: str | Path) -> AutoencoderKL:
        """A folder diffusers' save_pretrained (or ours) wrote."""
        path = Path(path)
        weights = next((path / name for name in WEIGHTS_FILES if (path / name).is_file()), None)
        if not (path / CONFIG_FILE).is_file() or weights is None:
            raise AutoencoderError(
                f"{path}: a diffusers AutoencoderKL folder needs config.json and its weights "
                f"({' or '.join(WEIGHTS_FILES)})"
            )
        config = json.loads((path / CONFIG_FILE).read_text())
        check_architecture(config, path / CONFIG_FILE)
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        model = cls.from_state_dict({k: v for k, v in config.items() if not k.startswith("_")}, state)
        return model.eval()  # as diffusers returns it

    def save_pretrained(self, out_dir: str | Path) -> None:
        """config.json and the weights as diffusers writes them (its from_pretrained reads the folder)."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": "AutoencoderKL", **self.config}
        (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        state = {name: tensor.contiguous() for name, tensor in self.state_dict().items()}
        save_file(state, str(out_dir / WEIGHTS_FILES[0]), metadata={"format": "pt"})


def check_architecture(config: dict, where: str | Path) -> None:
    """Refuse a config of another network (another class, activation or block type) in one line."""
    if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise AutoencoderError(f"{where}: _class_name is {config['_class_name']!r}, expected 'AutoencoderKL'")
    for key, expected in ONLY.items():
        values = config.get(key, expected)
        if any(value != expected for value in ([values] if isinstance(values, str) else values)):
            raise AutoencoderError(
                f"{where}: {key} {values!r} is not the KL autoencoder's (every entry {expected!r}); "
                "only Stable Diffusion's KL autoencoder family is supported"
            )
