"""Datasets: source adapters and the prepared-dataset format every stage reads.

Prepared format (one per dataset and split, `<dir>/<split>/`): a few shards `images-00000.npy`
(uint8, N x H x W x C) and `labels-00000.npy` (int64, N), plus `manifest.json` with the count, shape,
class counts, source, skipped files and the md5 of every shard (and `captions.json` for text datasets).
A few hundred files at ImageNet scale keeps DVC fast; reading checks every shard against the manifest, so a
changed or truncated shard stops the stage. Image-folder datasets are decoded and written shard by shard,
so preparing ImageNet needs memory for one shard, not for the dataset.

Adapters reproduce the authors' preprocessing: Fashion-MNIST (zero-padded to 32), scikit-learn digits,
CIFAR-10 (python batches, read without unpickling arbitrary objects), CelebA (128x128 crop at top 57, left 25,
resized to 64), ImageNet (ADM's center crop: box-halving, bicubic, center crop; labels from sorted synsets),
MS-COCO 2014 (center crop, Lanczos resize; every caption of each image).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import json
import os
import pickle
import tarfile
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from uvit.errors import UserError

# --------------------------------------------------------------------------------------------------------
# Errors and small helpers
# --------------------------------------------------------------------------------------------------------


class DataError(UserError, RuntimeError):
    """A dataset problem; the message names the file and how to fix it."""


def md5_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[io.BufferedWriter]:
    """A binary file that appears at `path` only when complete (temporary file, fsync, rename), so a killed
    run never leaves a partial file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as f:
        f.write(data)


def read_checked(path: Path, md5: str, manifest_dir: Path, stage: str) -> bytes:
    """A file's bytes, verified against the md5 its manifest records."""
    blob = path.read_bytes() if path.is_file() else b""
    if hashlib.md5(blob).hexdigest() != md5:
        raise checksum_mismatch(path, manifest_dir, stage)
    return blob


def check_file(path: Path, md5: str, manifest_dir: Path, stage: str) -> None:
    """read_checked without holding the file: its md5 read in chunks (shards larger than memory)."""
    if not path.is_file() or md5_file(path) != md5:
        raise checksum_mismatch(path, manifest_dir, stage)


def checksum_mismatch(path: Path, manifest_dir: Path, stage: str) -> DataError:
    return DataError(f"{path}: checksum mismatch with {manifest_dir}/manifest.json; re-run {stage}")


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------------
# Source adapters: each returns {split: (images uint8 N x H x W x C at the target resolution, labels int64)}
# --------------------------------------------------------------------------------------------------------

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# file -> (md5 of the .gz Zalando publishes, md5 of its decompressed bytes). Repackaged copies (Debian's
# dataset-fashion-mnist) recompress the same bytes, so a file passes if either checksum matches.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
    "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
    "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: unreadable IDX file ({err}); delete it and fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise DataError(f"{path}: truncated IDX file ({len(raw) - offset} of {expected} bytes)")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def ensure_fashion_mnist(root: Path, download: bool = True) -> None:
    """Check the four idx.gz files; download missing ones from the official source when possible."""
    for name, (gz_md5, raw_md5) in FASHION_MNIST_FILES.items():
        path = root / name
        if not path.exists():
            if not download:
                raise DataError(
                    f"Fashion-MNIST: {path} not found. Expected the four idx.gz files "
                    f"({', '.join(FASHION_MNIST_FILES)}) in datasets.fashion_mnist.root; install them with "
                    f"`apt-get install dataset-fashion-mnist` or download them from {FASHION_MNIST_URL}"
                )
            root.mkdir(parents=True, exist_ok=True)
            _download(FASHION_MNIST_URL + name, path)
        if md5_file(path) != gz_md5 and _gunzip_md5(path) != raw_md5:
            raise DataError(
                f"{path}: checksum differs from the published Fashion-MNIST file; delete it and fetch it again"
            )


def _gunzip_md5(path: Path) -> str | None:
    try:
        with gzip.open(path, "rb") as f:
            return hashlib.md5(f.read()).hexdigest()
    except (OSError, EOFError):
        return None


def _download(url: str, path: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            atomic_write_bytes(path, response.read())
    except OSError as err:
        raise DataError(
            f"Fashion-MNIST: {path} not found and could not download {url} ({err}). Install the Debian package "
            "dataset-fashion-mnist, or place the four idx.gz files in datasets.fashion_mnist.root"
        ) from None


def pad_to(images: np.ndarray, resolution: int) -> np.ndarray:
    """Zero-pad N x H x W x C images symmetrically to resolution x resolution."""
    pad_h, pad_w = resolution - images.shape[1], resolution - images.shape[2]
    if pad_h < 0 or pad_w < 0 or pad_h % 2 or pad_w % 2:
        raise DataError(f"cannot pad {images.shape[1]}x{images.shape[2]} images to {resolution}x{resolution}")
    return np.pad(images, ((0, 0), (pad_h // 2,) * 2, (pad_w // 2,) * 2, (0, 0)))


def load_fashion_mnist(cfg: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    root = Path(cfg.get("root", "/usr/share/datasets/fashion-mnist"))
    ensure_fashion_mnist(root)
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")[..., None]
        labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
        splits[split] = (pad_to(images, cfg["resolution"]), labels)
    return splits


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


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR-10 batches (dicts of bytes, lists and numpy arrays) and nothing else."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name} (not part of a CIFAR-10 batch)"
            )
        return super().find_class(module, name)


def _cifar_batch(blob: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(blob), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as err:
        raise DataError(f"{source}: not a CIFAR-10 python batch ({err})") from None
    return np.ascontiguousarray(data), labels


def load_cifar10(cfg: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 from the official python version: the .tar.gz or its extracted cifar-10-batches-py folder."""
    root = Path(cfg.get("root", "data/raw/cifar-10-batches-py"))
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    if root.is_file():
        with tarfile.open(root) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            return _cifar_splits(names, members, lambda name: tar.extractfile(members[name]).read(), root)
    if root.is_dir():
        members = {p.name: p for p in root.iterdir()}
        return _cifar_splits(names, members, lambda name: members[name].read_bytes(), root)
    raise DataError(
        f"CIFAR-10: {root} not found. Set datasets.cifar10.root to cifar-10-python.tar.gz or its extracted "
        "cifar-10-batches-py folder (data_batch_1..5, test_batch) from https://www.cs.toronto.edu/~kriz/cifar.html"
    )


def _cifar_splits(names: dict, members: dict, read: Callable[[str], bytes], root: Path) -> dict:
    splits = {}
    for split, batch_names in names.items():
        missing = [n for n in batch_names if n not in members]
        if missing:
            raise DataError(
                f"CIFAR-10: {root} lacks {', '.join(missing)} (expected data_batch_1..5 and test_batch)"
            )
        parts = [_cifar_batch(read(n), f"{root}/{n}") for n in batch_names]
        splits[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return splits


@dataclass
class SplitData:
    """One split from an adapter: chunks of (images N x H x W x C uint8, labels int64), lazy for image-folder
    datasets; the captions of each kept image (text datasets); the files skipped as unreadable."""

    chunks: Iterable[tuple[np.ndarray, np.ndarray]]
    captions: list[list[str]] | None = None
    skipped: list[str] = field(default_factory=list)


def in_memory(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, SplitData]:
    return {split: SplitData([(images, labels)]) for split, (images, labels) in splits.items()}


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


def _require(path: Path, dataset: str, layout: str) -> Path:
    if not path.exists():
        raise DataError(f"{dataset}: {path} not found. Expected {layout}")
    return path


# ---- CelebA -------------------------------------------------------------------------------------------

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
    root = _require(Path(cfg.get("root", "data/raw/celeba")), "CelebA", CELEBA_LAYOUT)
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


# ---- ImageNet -----------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif")
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


def list_images(folder: Path) -> list[Path]:
    """Image files under folder, recursively, in sorted order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_imagenet(cfg: dict) -> dict[str, SplitData]:
    """ImageNet train: labels index the sorted synset folders (train/<synset>/*.JPEG); file names are not read."""
    root = _require(Path(cfg.get("root", "data/raw/imagenet")), "ImageNet", IMAGENET_LAYOUT)
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


# ---- MS-COCO 2014 -------------------------------------------------------------------------------------

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
    root = _require(Path(cfg.get("root", "data/raw/coco")), "MS-COCO", COCO_LAYOUT)
    splits = {}
    for split, year_split in (("train", "train2014"), ("val", "val2014")):
        ann_path = _require(root / "annotations" / f"captions_{year_split}.json", "MS-COCO", COCO_LAYOUT)
        try:
            annotations = json.loads(ann_path.read_text())
            files = {img["id"]: img["file_name"] for img in annotations["images"]}
            captions: dict[int, list[str]] = {}
            for ann in annotations["annotations"]:
                captions.setdefault(ann["image_id"], []).append(ann["caption"].strip())
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{ann_path}: not a COCO captions file ({err})") from None
        folder = _require(root / year_split, "MS-COCO", COCO_LAYOUT)
        items = [(folder / files[key], 0, captions.get(key, [])) for key in sorted(files)]
        transform = functools.partial(coco_center_crop, size=cfg["resolution"])
        splits[split] = image_split(items, transform, cfg, f"MS-COCO {split}", with_captions=True)
    return splits


EMOJI_LAYOUT = (
    "the npm package emoji-datasource-google in datasets.<name>.root: the tarball `npm pack "
    "emoji-datasource-google@16.0.0` writes (`make data` fetches it), or its extracted package/ folder with "
    "emoji.json and img/google/64/"
)
SKIN_TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}


def emoji_entries(meta: list[dict]) -> list[tuple[str, str, str]]:
    """(image file, caption, category) of every emoji with a Google image and of each of its skin-tone
    variants, in the package's sort order. The caption is the Unicode name, lower case ("grinning face"),
    with the tones of a variant ("waving hand sign, medium skin tone")."""
    entries = []
    for emoji in sorted(meta, key=lambda e: e["sort_order"]):
        if not emoji.get("has_img_google"):
            continue
        name = emoji["name"].lower()
        entries.append((emoji["image"], name, emoji["category"]))
        for tones, variant in sorted(emoji.get("skin_variations", {}).items()):
            if variant.get("has_img_google"):
                tone_names = dict.fromkeys(SKIN_TONES.get(t, t) for t in tones.split("-"))
                entries.append((variant["image"], f"{name}, {' and '.join(tone_names)}", emoji["category"]))
    return entries


def emoji_on_white(png: bytes, resolution: int) -> np.ndarray:
    """An RGBA emoji composited on white, box-filtered to resolution x resolution RGB."""
    image = Image.open(io.BytesIO(png)).convert("RGBA")
    canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
    canvas.alpha_composite(image)
    return np.asarray(canvas.convert("RGB").resize((resolution, resolution), Image.BOX))


def _emoji_files(root: Path) -> tuple[list[dict], Callable[[str], bytes]]:
    """emoji.json and a reader of img/google/64/<file>, from the npm tarball or the extracted package."""
    if root.is_dir():
        package = root / "package" if (root / "package").is_dir() else root
        meta = json.loads(_require(package / "emoji.json", "emoji", EMOJI_LAYOUT).read_text())
        return meta, lambda name: (package / "img" / "google" / "64" / name).read_bytes()
    _require(root, "emoji", EMOJI_LAYOUT)
    with tarfile.open(root, "r:gz") as archive:  # one pass: random access into a .tgz rereads it
        members = {
            m.name: archive.extractfile(m).read()
            for m in archive
            if m.isfile() and (m.name == "package/emoji.json" or m.name.startswith("package/img/google/64/"))
        }
    if "package/emoji.json" not in members:
        raise DataError(f"{root}: no package/emoji.json inside. Expected {EMOJI_LAYOUT}")
    return json.loads(members["package/emoji.json"]), lambda name: members[f"package/img/google/64/{name}"]


def _emoji_png(read: Callable[[str], bytes], file: str) -> bytes:
    try:
        return read(file)
    except (KeyError, FileNotFoundError):
        raise DataError(
            f"emoji: image {file!r} listed in emoji.json is missing. Expected {EMOJI_LAYOUT}"
        ) from None


def load_emoji(cfg: dict) -> dict[str, SplitData]:
    """Noto emoji (Google's set, 64x64 RGBA) with their names as captions: a small text-to-image dataset.
    Every tenth emoji in sort order is held out as `test`; labels index the sorted categories."""
    meta, read = _emoji_files(Path(cfg.get("root", "data/raw/emoji-datasource-google-16.0.0.tgz")))
    entries = emoji_entries(meta)
    categories = sorted({category for _, _, category in entries})
    splits = {}
    for split, keep in (("train", lambda i: i % 10 != 9), ("test", lambda i: i % 10 == 9)):
        chosen = [e for i, e in enumerate(entries) if keep(i)]
        images = np.stack(
            [emoji_on_white(_emoji_png(read, file), cfg["resolution"]) for file, _, _ in chosen]
        )
        labels = np.array([categories.index(c) for _, _, c in chosen], dtype=np.int64)
        splits[split] = SplitData([(images, labels)], captions=[[caption] for _, caption, _ in chosen])
    return splits


ADAPTERS: dict[str, Callable[[dict], dict[str, SplitData]]] = {
    "fashion_mnist": lambda cfg: in_memory(load_fashion_mnist(cfg)),
    "digits": lambda cfg: in_memory(load_digits(cfg)),
    "cifar10": lambda cfg: in_memory(load_cifar10(cfg)),
    "celeba": load_celeba,
    "imagenet": load_imagenet,
    "mscoco": load_mscoco,
    "emoji": load_emoji,
}


# --------------------------------------------------------------------------------------------------------
# Prepared format: write and read
# --------------------------------------------------------------------------------------------------------


def write_shards(
    out_dir: Path, arrays: dict[str, np.ndarray], shard_size: int, first_index: int = 0
) -> list[dict]:
    """Write row-aligned arrays as `<kind>-<index>.npy` shards; return their manifest entries (with md5)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    rows = len(next(iter(arrays.values())))
    for index, start in enumerate(range(0, rows, shard_size), start=first_index):
        for kind, array in arrays.items():
            name = f"{kind}-{index:05d}.npy"
            blob = npy_bytes(np.ascontiguousarray(array[start : start + shard_size]))
            atomic_write_bytes(out_dir / name, blob)
            shards.append(
                {
                    "file": name,
                    "count": len(array[start : start + shard_size]),
                    "md5": hashlib.md5(blob).hexdigest(),
                }
            )
    return shards


def write_manifest(out_dir: Path, manifest: dict) -> None:
    atomic_write_bytes(
        out_dir / "manifest.json", (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    )


def read_shards(
    directory: Path, manifest: dict, stage: str, limit: int | None = None
) -> dict[str, np.ndarray]:
    """Concatenate the shards of each kind, md5-checked against the manifest; at least `limit` rows if given."""
    arrays: dict[str, list[np.ndarray]] = {}
    loaded: dict[str, int] = {}
    for shard in manifest["shards"]:
        kind = shard["file"].split("-")[0]
        if limit is not None and loaded.get(kind, 0) >= limit:
            continue
        blob = read_checked(directory / shard["file"], shard["md5"], directory, stage)
        arrays.setdefault(kind, []).append(np.load(io.BytesIO(blob), allow_pickle=False))
        loaded[kind] = loaded.get(kind, 0) + shard["count"]
    return {kind: np.concatenate(parts) for kind, parts in arrays.items()}


class ShardRows:
    """The rows of one kind of shard (`images`, `moments`, ...) read from disk on demand, not loaded: a batch
    costs the reads of its rows, and a training process's memory does not grow with the dataset (ImageNet-256
    latents are ~84 GB as float32). Read with pread, not memory-mapped: a mapping counts every page-cache
    folio it touches (up to 2 MB each on current kernels) in the process's resident memory, 123 MB for one
    batch of 64 rows here. Pickles without its open files (DataLoader workers open their own)."""

    def __init__(self, directory: Path, manifest: dict, kind: str, stage: str, verify: bool = True):
        self._files: list[int] | None = None
        entries = [s for s in manifest["shards"] if s["file"].split("-")[0] == kind]
        if not entries:
            raise DataError(f"{directory}/manifest.json: no {kind} shards; re-run {stage}")
        if verify:
            for entry in entries:
                check_file(directory / entry["file"], entry["md5"], directory, stage)
        self.paths = [directory / entry["file"] for entry in entries]
        self.stage = stage
        headers = [npy_header(path, stage) for path in self.paths]
        (self.row_shape, self.dtype), self.offsets = headers[0][1:], [offset for offset, *_ in headers]
        if any(header[1:] != (self.row_shape, self.dtype) for header in headers):
            raise DataError(f"{directory}: {kind} shards of different row shapes or types; re-run {stage}")
        counts = np.array([entry["count"] for entry in entries], dtype=np.int64)
        self.starts, self.ends = np.cumsum(counts) - counts, np.cumsum(counts)
        # Bytes between consecutive rows, and between consecutive entries of each dimension within a row.
        self.strides = np.cumprod([1, *self.row_shape[::-1]])[::-1] * self.dtype.itemsize

    @property
    def files(self) -> list[int]:
        if self._files is None:
            self._files = [os.open(path, os.O_RDONLY) for path in self.paths]
        return self._files

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_files": None}

    def __del__(self) -> None:
        for fd in self._files or []:
            os.close(fd)

    def __len__(self) -> int:
        return int(self.ends[-1])

    def take(self, rows: np.ndarray, *inner: np.ndarray) -> np.ndarray:
        """Rows `rows` in that order (a copy); `inner` index arrays pick within each row (numpy's `a[rows, i]`)."""
        rows = np.asarray(rows, dtype=np.int64)
        shard = np.searchsorted(self.ends, rows, side="right")
        out = np.empty((len(rows), *self.row_shape[len(inner) :]), self.dtype)
        nbytes = self.strides[len(inner)]
        offsets = (rows - self.starts[shard]) * self.strides[0]
        for depth, index in enumerate(inner, start=1):
            offsets = offsets + np.asarray(index, dtype=np.int64) * self.strides[depth]
        buffers = out.reshape(len(rows), -1).view(np.uint8)
        for i, (s, offset) in enumerate(zip(shard.tolist(), offsets.tolist(), strict=True)):
            if os.preadv(self.files[s], [buffers[i]], self.offsets[s] + offset) != nbytes:
                raise DataError(f"{self.paths[s]}: shorter than its manifest says; re-run {self.stage}")
        return out

    def all(self) -> np.ndarray:
        return self.take(np.arange(len(self)))


def labelled_rows(
    directory: Path, kind: str, stage: str, verify: bool = True
) -> tuple[ShardRows, np.ndarray, dict]:
    """A prepared or encoded split's rows of `kind` (read on demand), its labels (loaded) and its manifest."""
    manifest = read_manifest(directory)
    rows = ShardRows(directory, manifest, kind, stage, verify)
    return rows, ShardRows(directory, manifest, "labels", stage, verify).all(), manifest


def npy_header(path: Path, stage: str) -> tuple[int, tuple[int, ...], np.dtype]:
    """(data offset, row shape, dtype) of a C-ordered .npy file."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }
            if version not in read_header:
                raise ValueError(f"format version {version}")
            shape, fortran_order, dtype = read_header[version](f)
        except ValueError as err:
            raise DataError(f"{path}: not a .npy array ({err}); re-run {stage}") from None
        if fortran_order or dtype.hasobject:
            raise DataError(f"{path}: expected a C-ordered array of numbers; re-run {stage}")
        return f.tell(), tuple(shape[1:]), dtype


def rechunk(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]], size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Regroup (images, labels) chunks of any length into blocks of exactly `size` rows (the last shorter)."""
    images, labels, held = [], [], 0
    for x, y in chunks:
        images.append(x)
        labels.append(y)
        held += len(x)
        while held >= size:
            x_all, y_all = np.concatenate(images), np.concatenate(labels)
            yield x_all[:size], y_all[:size]
            images, labels, held = [x_all[size:]], [y_all[size:]], held - size
    if held:
        yield np.concatenate(images), np.concatenate(labels)


def write_split(out_dir: Path, split: SplitData, shard_size: int, source: str) -> dict:
    """Write one split as uint8 shards plus a manifest, shard by shard; byte-identical for identical input."""
    shards, class_counts, count, shape = [], Counter(), 0, None
    for index, (images, labels) in enumerate(rechunk(split.chunks, shard_size)):
        shards += write_shards(out_dir, {"images": images, "labels": labels}, shard_size, first_index=index)
        class_counts.update(labels.tolist())
        count, shape = count + len(images), list(images.shape[1:])
    if count == 0:
        raise DataError(
            f"{source}: no readable images for {out_dir}; check the dataset's root in params.yaml"
        )
    manifest = {
        "source": source,
        "count": count,
        "shape": shape,
        "dtype": "uint8",
        "class_counts": {int(c): int(n) for c, n in sorted(class_counts.items())},
        "skipped": {"count": len(split.skipped), "files": split.skipped},
        "shards": shards,
    }
    if split.captions is not None:
        blob = (json.dumps(split.captions, ensure_ascii=False) + "\n").encode()
        atomic_write_bytes(out_dir / "captions.json", blob)
        manifest["captions"] = {"file": "captions.json", "md5": hashlib.md5(blob).hexdigest()}
    write_manifest(out_dir, manifest)
    return manifest


def read_manifest(split_dir: Path) -> dict:
    path = Path(split_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}: missing; run the prepare_data stage for this dataset")
    return read_json(path, f"delete {split_dir} and run the stage that wrote it again")


def read_json(path: Path, fix: str) -> dict:
    """A JSON object from a file a stage wrote; an unreadable or truncated one is a DataError saying `fix`."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable JSON file ({err}); {fix}") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(value).__name__}; {fix}")
    return value


def check_prepared(split_dir: str | Path, name: str, cfg: dict) -> None:
    """Refuse a prepared split made from another dataset than `name` (its manifest's source and image size)."""
    manifest = read_manifest(split_dir)
    made_from = (manifest.get("source"), manifest.get("shape", [None])[0])
    if made_from != (cfg["source"], cfg["resolution"]):
        raise DataError(
            f"{Path(split_dir) / 'manifest.json'}: prepared from source {made_from[0]!r} at {made_from[1]} px, "
            f"expected dataset {name!r} (source {cfg['source']!r} at {cfg['resolution']} px); pass the folder "
            f"`uvit prepare-data --dataset {name}` wrote"
        )


def load_split(split_dir: str | Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a prepared split (images N x H x W x C uint8, labels), verifying every shard's md5."""
    split_dir = Path(split_dir)
    arrays = read_shards(split_dir, read_manifest(split_dir), "prepare_data", limit)
    images, labels = arrays["images"], arrays["labels"]
    if limit is not None:
        if limit > len(images):
            raise DataError(f"{split_dir}: asked for {limit} images, the split has {len(images)}")
        images, labels = images[:limit], labels[:limit]
    return images, labels


def prepare_dataset(cfg: dict, out_dir: str | Path) -> dict[str, dict]:
    """Run the dataset's adapter and write every split in the prepared format."""
    splits = ADAPTERS[cfg["source"]](cfg)
    return {
        name: write_split(Path(out_dir) / name, split, cfg["shard_size"], cfg["source"])
        for name, split in splits.items()
    }


def load_captions(split_dir: str | Path) -> list[list[str]]:
    """The captions of a prepared text dataset, one list per image, md5-checked against the manifest."""
    split_dir = Path(split_dir)
    entry = read_manifest(split_dir).get("captions")
    if entry is None:
        raise DataError(f"{split_dir}: this dataset has no captions (text models need source: mscoco)")
    return json.loads(read_checked(split_dir / entry["file"], entry["md5"], split_dir, "prepare_data"))


def num_classes(split_dir: str | Path) -> int:
    return len(read_manifest(split_dir)["class_counts"])
