"""Fashion-MNIST: the four IDX files, checked against the published md5s (downloaded when missing), zero-padded
to 32 as the authors did."""

from __future__ import annotations

import gzip
import hashlib
import urllib.request
from pathlib import Path

import numpy as np

from uvit.fileio import DataError, atomic_write_bytes, md5_file
from uvit.sources.common import pad_to

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


def load_fashion_mnist(cfg: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    root = Path(cfg["root"])
    ensure_fashion_mnist(root)
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")[..., None]
        labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
        splits[split] = (pad_to(images, cfg["resolution"]), labels)
    return splits
