"""GPU-hour estimates for an experiment, before running it (`uvit plan`, and the train rule's dry run).

Training FLOPs are counted analytically from the model settings (paper section 3: a transformer over
L = extras + (H/p)(W/p) tokens): per token and block, 12 D^2 multiply-adds for qkv, projection and the 4x MLP,
2 L D for attention scores and weighted sum, and 2 D^2 for each out-block's long-skip linear; a training step
costs three forward passes (forward + backward) per image. Sampling costs one forward pass per image and sampler
step, two with classifier-free guidance.

FLOPs become A100-hours at the effective rate of the authors' one reported large run: U-ViT-H/2 on ImageNet 256,
500K steps at batch 1024, 208 hours on 8 A100s (reference "Cost"). Where the authors report a row's own cost, that
number is shown beside the estimate. Both are estimates, not measurements: throughput depends on the GPU, the
attention kernel, precision and data loading.
"""

from __future__ import annotations

from uvit.config import resolve_experiment, text_tokens

# The authors' reported training costs (reference "Cost"), by experiment: (GPU-hours, GPU model).
AUTHORS_COST = {
    "cifar10_uvit_s2": (24 * 4, "2080Ti"),
    "imagenet256_uvit_h2": (208 * 8, "A100"),
}
CALIBRATION = "imagenet256_uvit_h2"


def forward_flops(params: dict, exp: dict) -> float:
    """FLOPs of one forward pass of the experiment's U-ViT on one image."""
    m = exp["model"]
    side = exp["derived"]["input_size"]
    channels = (
        exp["derived"]["latent_shape"][0] if exp["space"] == "latent" else 3
    )  # the paper's pixel rows: RGB
    patches = (side // m["patch_size"]) ** 2
    context = text_tokens(params["datasets"][exp["dataset"]]) if exp["condition"] == "text" else 0
    extras = 1 + (1 if exp["condition"] == "class" else 0) + context
    tokens, dim, depth = patches + extras, m["embed_dim"], m["depth"]
    # multiply-adds: qkv 3 D^2 + projection D^2 + MLP 2 r D^2 per token, attention 2 L D per token
    per_block = tokens * ((4 + 2 * m["mlp_ratio"]) * dim**2 + 2 * tokens * dim)
    skips = (depth // 2) * tokens * 2 * dim**2  # Linear(2D -> D) in each out-block
    embed_and_head = 2 * patches * dim * m["patch_size"] ** 2 * channels
    return 2.0 * (depth * per_block + skips + embed_and_head)  # 2 FLOPs per multiply-add


def training_flops(params: dict, exp: dict) -> float:
    cfg = exp["training"]
    return 3.0 * forward_flops(params, exp) * cfg["batch_size"] * cfg["steps"]


def sampling_flops(params: dict, exp: dict) -> float:
    cfg = exp["sampling"]
    guided = 2 if cfg["guidance_scale"] > 0 else 1
    return forward_flops(params, exp) * cfg["steps"] * cfg["num_samples"] * guided


def a100_rate(params: dict) -> float:
    """Effective training FLOP/s of one A100, from the authors' U-ViT-H/2 cost."""
    hours, _ = AUTHORS_COST[CALIBRATION]
    return training_flops(params, resolve_experiment(params, CALIBRATION)) / (hours * 3600)


def estimate(params: dict, name: str) -> dict:
    """A100-hours to train and to sample an experiment, and the authors' reported cost where there is one."""
    exp = resolve_experiment(params, name)
    rate = a100_rate(params)
    authors = AUTHORS_COST.get(name)
    return {
        "experiment": name,
        "train_a100_hours": training_flops(params, exp) / rate / 3600,
        "sample_a100_hours": sampling_flops(params, exp) / rate / 3600,
        "authors": f"{authors[0]} {authors[1]} GPU-hours" if authors else None,
        "gpus": exp["resources"]["gpus"],
    }


def describe(params: dict, name: str) -> str:
    e = estimate(params, name)
    gpus = max(e["gpus"], 1)
    text = (
        f"{name}: ~{e['train_a100_hours']:.3g} A100-hours to train ({e['train_a100_hours'] / gpus:.1f} h on {gpus}),"
        f" ~{e['sample_a100_hours']:.1f} to sample (estimate, calibrated on the authors' U-ViT-H/2 cost)"
    )
    return text + (f"; the authors report {e['authors']}" if e["authors"] else "")
