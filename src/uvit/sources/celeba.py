"""CelebA: the authors' 128x128 crop at top 57, left 25, resized to 64, from the folder or the zip."""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from uvit.fileio import DataError
from uvit.shards import SplitData
from uvit.sources.common import image_split, require

CELEBA_LAYOUT = (
    "the aligned CelebA images (img_align_celeba/ with 000001.jpg ... or img_align_celeba.zip) and "
    "list_eval_partition.txt (or .csv) in datasets.<name>.root; download them from "
    "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
)


def celeba_crop(image: Image.Image, resolution: int = 64) -> np.ndarray:
    """The authors' CelebA crop: 128x128 at top 57, left 25 (centred on (121, 89)), resized bilinearly."""
    return np.asarray(image.crop((25, 57, 25 + 128, 57 + 128)).resize((resolution,) * 2, Image.BILINEAR))


def _celeba_partitions(root: Path) -> dict[str, int]:
    for name in ("list_eval_partition.txt", "list_eval_partition.csv"):
        path = root / name
        if path.is_file():
            rows = [line.replace(",", " ").split() for line in path.read_text().splitlines()]
            return {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[1].isdigit()}
    raise DataError(f"CelebA: {root}/list_eval_partition.txt not found. Expected {CELEBA_LAYOUT}")


def load_celeba(cfg: dict) -> dict[str, SplitData]:
    """CelebA train (162,770), val and test splits from list_eval_partition; unlabeled (label 0)."""
    root = require(Path(cfg["root"]), "CelebA", CELEBA_LAYOUT)
    partitions = _celeba_partitions(root)
    folder, archive = root / "img_align_celeba", root / "img_align_celeba.zip"
    if folder.is_dir():
        refs = {name: folder / name for name in partitions}
    elif archive.is_file():
        zf = zipfile.ZipFile(archive)
        members = {Path(m).name: m for m in zf.namelist() if not m.endswith("/")}
        refs = {name: (zf, members[name]) for name in partitions if name in members}
    else:
        raise DataError(f"CelebA: neither {folder} nor {archive} exists. Expected {CELEBA_LAYOUT}")
    splits = {}
    for split, code in (("train", 0), ("val", 1), ("test", 2)):
        names = sorted(n for n, c in partitions.items() if c == code)
        missing = [n for n in names if n not in refs or (isinstance(refs[n], Path) and not refs[n].is_file())]
        if missing:
            raise DataError(
                f"CelebA: {len(missing)} images of list_eval_partition missing, e.g. {missing[0]}"
            )
        items = [(refs[n], 0, None) for n in names]
        transform = functools.partial(celeba_crop, resolution=cfg["resolution"])
        splits[split] = image_split(items, transform, cfg, f"CelebA {split}")
    return splits
