"""Seeded randomness that does not depend on batching, processes or resumption.

Every random stream is keyed by (run seed, index): sample i of a sampling run (uvit.diffusion.SeededNoise), step k
of a training run (uvit.training), and the data order, consecutive slices of one permutation per epoch, so the
images of step k are a function of k alone. U-ViT training and the sample classifier (uvit.classifier) read their
batches in this order.
"""

from __future__ import annotations

import torch


def mix_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample `index` of run `seed` (distinct runs do not share sample streams)."""
    return (seed * 1_000_003 + index) % (2**63 - 1)


def batch_indices(step: int, batch_size: int, size: int, seed: int) -> torch.Tensor:
    """Indices of step k's batch: consecutive slices of a per-epoch permutation (data position = step)."""
    first, last = step * batch_size, (step + 1) * batch_size
    indices = []
    for epoch in range(first // size, (last - 1) // size + 1):
        perm = torch.randperm(size, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))
        lo, hi = max(first - epoch * size, 0), min(last - epoch * size, size)
        indices.append(perm[lo:hi])
    return torch.cat(indices)
