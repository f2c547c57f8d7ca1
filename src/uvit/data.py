"""Datasets: source adapters and the prepared-dataset format every stage reads.

Prepared format (one per dataset and split, `<dir>/<split>/`): a few shards `images-00000.npy`
(uint8, N x H x W x C) and `labels-00000.npy` (int64, N), plus `manifest.json` with the count, shape,
class counts, source and the md5 of every shard. A few hundred files at ImageNet scale keeps DVC fast;
reading checks every shard against the manifest, so a changed or truncated shard stops the stage.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import tarfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np

# --------------------------------------------------------------------------------------------------------
# Errors and small helpers
# --------------------------------------------------------------------------------------------------------


class DataError(RuntimeError):
    """A dataset problem; the message names the file and how to fix it."""


def md5_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a killed run never leaves a partial file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _npy_bytes(array: np.ndarray) -> bytes:
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


ADAPTERS: dict[str, Callable[[dict], dict[str, tuple[np.ndarray, np.ndarray]]]] = {
    "fashion_mnist": load_fashion_mnist,
    "digits": load_digits,
    "cifar10": load_cifar10,
}


# --------------------------------------------------------------------------------------------------------
# Prepared format: write and read
# --------------------------------------------------------------------------------------------------------


def write_shards(out_dir: Path, arrays: dict[str, np.ndarray], shard_size: int) -> list[dict]:
    """Write row-aligned arrays as `<kind>-<index>.npy` shards; return their manifest entries (with md5)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    rows = len(next(iter(arrays.values())))
    for index, start in enumerate(range(0, rows, shard_size)):
        for kind, array in arrays.items():
            name = f"{kind}-{index:05d}.npy"
            blob = _npy_bytes(np.ascontiguousarray(array[start : start + shard_size]))
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
        path = directory / shard["file"]
        blob = path.read_bytes() if path.is_file() else b""
        if hashlib.md5(blob).hexdigest() != shard["md5"]:
            raise DataError(f"{path}: checksum mismatch with {directory}/manifest.json; re-run {stage}")
        arrays.setdefault(kind, []).append(np.load(io.BytesIO(blob), allow_pickle=False))
        loaded[kind] = loaded.get(kind, 0) + shard["count"]
    return {kind: np.concatenate(parts) for kind, parts in arrays.items()}


def write_split(out_dir: Path, images: np.ndarray, labels: np.ndarray, shard_size: int, source: str) -> dict:
    """Write one split as uint8 shards plus a manifest; byte-identical for identical input."""
    shards = write_shards(out_dir, {"images": images, "labels": labels}, shard_size)
    classes, counts = np.unique(labels, return_counts=True)
    manifest = {
        "source": source,
        "count": len(images),
        "shape": list(images.shape[1:]),
        "dtype": "uint8",
        "class_counts": {int(c): int(n) for c, n in zip(classes, counts, strict=True)},
        "shards": shards,
    }
    write_manifest(out_dir, manifest)
    return manifest


def read_manifest(split_dir: Path) -> dict:
    path = Path(split_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}: missing; run the prepare_data stage for this dataset")
    return json.loads(path.read_text())


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
        split: write_split(Path(out_dir) / split, images, labels, cfg["shard_size"], cfg["source"])
        for split, (images, labels) in splits.items()
    }


def num_classes(split_dir: str | Path) -> int:
    return len(read_manifest(split_dir)["class_counts"])
