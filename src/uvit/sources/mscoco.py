"""MS-COCO 2014: center crop, Lanczos resize; every caption of each image."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
from PIL import Image

from uvit.fileio import DataError
from uvit.shards import SplitData
from uvit.sources.common import image_split, require

COCO_LAYOUT = (
    "MS-COCO 2014 in datasets.<name>.root: train2014/ and val2014/ image folders and "
    "annotations/captions_train2014.json, annotations/captions_val2014.json (https://cocodataset.org)"
)


def coco_center_crop(image: Image.Image, size: int = 256) -> np.ndarray:
    """The authors' COCO preprocessing: crop the central square, Lanczos-resize it to size x size."""
    array = np.asarray(image)
    side = min(array.shape[:2])
    top, left = (array.shape[0] - side) // 2, (array.shape[1] - side) // 2
    square = Image.fromarray(array[top : top + side, left : left + side])
    return np.asarray(square.resize((size, size), Image.LANCZOS))


def load_mscoco(cfg: dict) -> dict[str, SplitData]:
    """COCO 2014 train (82,783) and val (40,504) images in image-id order, each with all its captions."""
    root = require(Path(cfg["root"]), "MS-COCO", COCO_LAYOUT)
    splits = {}
    for split, year_split in (("train", "train2014"), ("val", "val2014")):
        ann_path = require(root / "annotations" / f"captions_{year_split}.json", "MS-COCO", COCO_LAYOUT)
        try:
            annotations = json.loads(ann_path.read_text())
            files = {img["id"]: img["file_name"] for img in annotations["images"]}
            captions: dict[int, list[str]] = {}
            for ann in annotations["annotations"]:
                captions.setdefault(ann["image_id"], []).append(ann["caption"].strip())
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{ann_path}: not a COCO captions file ({err})") from None
        folder = require(root / year_split, "MS-COCO", COCO_LAYOUT)
        items = [(folder / files[key], 0, captions.get(key, [])) for key in sorted(files)]
        transform = functools.partial(coco_center_crop, size=cfg["resolution"])
        splits[split] = image_split(items, transform, cfg, f"MS-COCO {split}", with_captions=True)
    return splits
