"""What the source adapters share: image files decoded lazily in chunks (an unreadable one named or skipped),
image folders listed, a documented layout required, images zero-padded."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from uvit.fileio import DataError
from uvit.shards import SplitData

# A readable image: a path, or a member of an archive (zip file, member name).
ImageRef = Path | tuple[zipfile.ZipFile, str]


def _read_image(ref: ImageRef) -> Image.Image:
    if isinstance(ref, tuple):
        archive, name = ref
        image = Image.open(io.BytesIO(archive.read(name)))
    else:
        image = Image.open(ref)
    image.load()  # decodes now, so a truncated file fails here and is named
    return image.convert("RGB")


def _ref_name(ref: ImageRef) -> str:
    return f"{ref[0].filename}:{ref[1]}" if isinstance(ref, tuple) else str(ref)


def decode_images(
    items: list[tuple[ImageRef, int, list[str] | None]],
    transform: Callable[[Image.Image], np.ndarray],
    split: SplitData,
    cfg: dict,
    desc: str,
    chunk: int = 1024,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Decode and transform (image, label, captions) items in chunks, with a progress bar (images/s).

    An unreadable image stops preparation naming the file, unless `skip_corrupt` is set: then it is
    skipped and listed in the manifest.
    """
    images, labels = [], []
    for ref, label, captions in tqdm(items, desc=desc, unit="img", mininterval=5):
        try:
            array = transform(_read_image(ref))
        except (OSError, SyntaxError, ValueError, zipfile.BadZipFile) as err:
            if not cfg.get("skip_corrupt", False):
                raise DataError(
                    f"{_ref_name(ref)}: unreadable image ({err}). Replace or delete it, or set "
                    "skip_corrupt: true for this dataset in params.yaml to skip such files "
                    "(the manifest records which)"
                ) from None
            split.skipped.append(_ref_name(ref))
            continue
        images.append(array)
        labels.append(label)
        if split.captions is not None:
            split.captions.append(captions)
        if len(images) == chunk:
            yield np.stack(images), np.asarray(labels, dtype=np.int64)
            images, labels = [], []
    if images:
        yield np.stack(images), np.asarray(labels, dtype=np.int64)


def image_split(
    items: list[tuple[ImageRef, int, list[str] | None]],
    transform: Callable[[Image.Image], np.ndarray],
    cfg: dict,
    desc: str,
    with_captions: bool = False,
) -> SplitData:
    """A split whose chunks are decoded lazily from image files (see decode_images)."""
    split = SplitData([], captions=[] if with_captions else None)
    split.chunks = decode_images(items, transform, split, cfg, desc)
    return split


def require(path: Path, dataset: str, layout: str) -> Path:
    """`path`, which must exist: else a DataError naming the dataset's documented `layout`."""
    if not path.exists():
        raise DataError(f"{dataset}: {path} not found. Expected {layout}")
    return path


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif")


def list_images(folder: Path) -> list[Path]:
    """Image files under folder, recursively, in sorted order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def pad_to(images: np.ndarray, resolution: int) -> np.ndarray:
    """Zero-pad N x H x W x C images symmetrically to resolution x resolution."""
    pad_h, pad_w = resolution - images.shape[1], resolution - images.shape[2]
    if pad_h < 0 or pad_w < 0 or pad_h % 2 or pad_w % 2:
        raise DataError(f"cannot pad {images.shape[1]}x{images.shape[2]} images to {resolution}x{resolution}")
    return np.pad(images, ((0, 0), (pad_h // 2,) * 2, (pad_w // 2,) * 2, (0, 0)))
