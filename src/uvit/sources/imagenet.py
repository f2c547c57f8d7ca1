"""ImageNet (ILSVRC-2012 train): ADM's center crop (box-halving, bicubic, center crop); labels from sorted
synsets."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image

from uvit.fileio import DataError
from uvit.shards import SplitData
from uvit.sources.common import image_split, list_images, require

IMAGENET_LAYOUT = (
    "the ILSVRC-2012 training set as one folder per synset (train/n01440764/n01440764_10026.JPEG, ...) in "
    "datasets.<name>.root (the ILSVRC/Data/CLS-LOC folder of the Kaggle or image-net.org download)"
)


def adm_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM's center crop (Dhariwal & Nichol 2021), used by the authors: halve with a box filter while the short
    side is at least 2 * size, resize bicubically so the short side is `size`, then crop the center."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    array = np.asarray(image)
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return array[top : top + size, left : left + size]


def load_imagenet(cfg: dict) -> dict[str, SplitData]:
    """ImageNet train: labels index the sorted synset folders (train/<synset>/*.JPEG); file names are not read."""
    root = require(Path(cfg["root"]), "ImageNet", IMAGENET_LAYOUT)
    train = root / "train" if (root / "train").is_dir() else root
    files = list_images(train)
    if not files:
        raise DataError(f"ImageNet: no images under {train}. Expected {IMAGENET_LAYOUT}")
    outside = [f for f in files if len(f.relative_to(train).parts) != 2]
    if outside:
        raise DataError(
            f"{outside[0]}: not directly in a synset folder ({len(outside)} such files); expected "
            f"{IMAGENET_LAYOUT}. Move each image into its class's folder"
        )
    synsets = [f.parent.name for f in files]
    index = {name: i for i, name in enumerate(sorted(set(synsets)))}
    if cfg.get("classes", len(index)) != len(index):
        raise DataError(
            f"ImageNet: {train} has {len(index)} synset folders with images, datasets.<name>.classes expects "
            f"{cfg['classes']}; point root at the whole ILSVRC-2012 training set (or change classes)"
        )
    items = [(f, index[s], None) for f, s in zip(files, synsets, strict=True)]
    transform = functools.partial(adm_center_crop, size=cfg["resolution"])
    return {"train": image_split(items, transform, cfg, "ImageNet train")}
