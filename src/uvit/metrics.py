"""The paper's other sample metrics, from the Inception features of one pass (`uvit.fid`), as ADM defines them
(Dhariwal & Nichol 2021, guided-diffusion evaluations/evaluator.py):

- sFID: the Fréchet distance of the spatial features (mixed_6/conv, first 7 channels, 2023-d);
- precision and recall (Kynkäänniemi et al. 2019, k = 3): the fraction of samples inside the reference
  manifold (the union of balls around each reference feature reaching its 3rd nearest neighbour), and of
  reference features inside the sample manifold;
- Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) || p(y)) per split of 5,000, averaged;
- KID (Bińkowski et al. 2018): the unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, averaged over
  random subsets (clean-fid's 100 subsets of at most 1,000), seeded.
"""

from __future__ import annotations

import numpy as np
import torch

K_NEAREST = 3  # ADM's nhood_sizes=(3,)
IS_SPLIT = 5000  # ADM's split_size
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # clean-fid's kernel_distance defaults
_BLOCK = 2048  # rows of a distance block
_WHOLE_KERNEL_LIMIT = 5000  # KID: whole kernel matrices up to this many features per set


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ADM's _batch_pairwise_distances: max(|u|^2 - 2 u.v + |v|^2, 0)."""
    return (a.pow(2).sum(1)[:, None] - 2 * a @ b.T + b.pow(2).sum(1)[None]).clamp_min_(0)


def manifold_radii(features: np.ndarray, k: int = K_NEAREST) -> np.ndarray:
    """Squared distance of each feature to its k-th nearest neighbour in the same set (itself excluded: ADM takes
    the k-th smallest of a row that holds its own 0)."""
    x = torch.as_tensor(features, dtype=torch.float64)
    radii = torch.empty(len(x), dtype=torch.float64)
    for start in range(0, len(x), _BLOCK):
        d = _squared_distances(x[start : start + _BLOCK], x)
        radii[start : start + _BLOCK] = d.kthvalue(k + 1, dim=1).values
    return radii.numpy()


def _covered(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Whether each point lies in some ball (centre, squared radius): ADM's `distance <= radii`."""
    p, c = torch.as_tensor(points, dtype=torch.float64), torch.as_tensor(centres, dtype=torch.float64)
    r = torch.as_tensor(radii, dtype=torch.float64)
    inside = torch.zeros(len(p), dtype=torch.bool)
    for start in range(0, len(p), _BLOCK):
        inside[start : start + _BLOCK] = (_squared_distances(p[start : start + _BLOCK], c) <= r[None]).any(1)
    return inside.numpy()


def precision_recall(reference: np.ndarray, samples: np.ndarray, k: int = K_NEAREST) -> tuple[float, float]:
    """ADM's compute_prec_recall: precision = share of samples in the reference manifold, recall = share of the
    reference in the samples' manifold (manifolds of k-th nearest neighbour balls)."""
    precision = _covered(samples, reference, manifold_radii(reference, k)).mean()
    recall = _covered(reference, samples, manifold_radii(samples, k)).mean()
    return float(precision), float(recall)


def kernel_inception_distance(
    reference: np.ndarray,
    samples: np.ndarray,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> float:
    """KID: mean over subsets of the unbiased MMD^2 (Bińkowski et al. 2018, eq. 3) with k(x, y) = (x.y/d + 1)^3,
    subsets of m = min(n_ref, n_samples, subset_size) drawn without replacement."""
    x_all, y_all = np.asarray(reference, np.float64), np.asarray(samples, np.float64)
    d = x_all.shape[1]
    m = min(len(x_all), len(y_all), subset_size)
    rng = np.random.default_rng(seed)
    # Small sets (the demo's): the three kernel matrices once, subsets read off them (one pass of matmuls).
    whole = max(len(x_all), len(y_all)) <= _WHOLE_KERNEL_LIMIT
    if whole:
        kxx, kyy, kxy = _kernel(x_all, x_all, d), _kernel(y_all, y_all, d), _kernel(x_all, y_all, d)
    total = 0.0
    for _ in range(subsets):
        i, j = rng.choice(len(x_all), m, replace=False), rng.choice(len(y_all), m, replace=False)
        if whole:  # a subset's kernel sums as u^T K v with indicator vectors: no submatrix copies
            u, v = np.bincount(i, minlength=len(x_all)), np.bincount(j, minlength=len(y_all))
            xx, yy = u @ kxx @ u - kxx.diagonal()[i].sum(), v @ kyy @ v - kyy.diagonal()[j].sum()
            xy = u @ kxy @ v
        else:
            x, y = x_all[i], y_all[j]
            sxx, syy = _kernel(x, x, d), _kernel(y, y, d)
            xx, yy, xy = sxx.sum() - np.trace(sxx), syy.sum() - np.trace(syy), _kernel(x, y, d).sum()
        total += (xx + yy) / (m * (m - 1)) - 2 * xy / m**2
    return float(total / subsets)


def _kernel(x: np.ndarray, y: np.ndarray, d: int) -> np.ndarray:
    """KID's polynomial kernel (x.y / d + 1)^3."""
    return (x @ y.T / d + 1) ** 3


def inception_score(logits: np.ndarray, split_size: int = IS_SPLIT) -> float:
    """ADM's compute_inception_score: softmax of the 1008 logits, exp(mean_x KL(p(y|x) || p(y))) per split, mean."""
    logits = np.asarray(logits, np.float64)
    log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    scores = []
    for start in range(0, len(log_p), split_size):
        part = log_p[start : start + split_size]
        log_marginal = np.log(np.exp(part).mean(0))
        scores.append(np.exp((np.exp(part) * (part - log_marginal)).sum(1).mean()))
    return float(np.mean(scores))
