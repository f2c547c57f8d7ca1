"""scikit-learn's 8x8 digits: a tiny dataset that needs no download."""

from __future__ import annotations

import numpy as np


def load_digits(cfg: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 8x8 digits (values 0..16), scaled to 0..255 and resized (bilinear) to the resolution.

    The set has no official split: the first 1,500 images train, the remaining 297 are held out.
    """
    from PIL import Image
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    size = cfg["resolution"]
    resized = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in grey])
    images, labels = resized[..., None], digits.target.astype(np.int64)
    return {"train": (images[:1500], labels[:1500]), "test": (images[1500:], labels[1500:])}
