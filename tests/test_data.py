"""Dataset adapters and the prepared format, on real files and on files written in the real formats."""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from uvit.data import (
    DataError,
    load_cifar10,
    load_digits,
    load_fashion_mnist,
    load_split,
    pad_to,
    prepare_dataset,
    read_idx,
    write_split,
)

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_round_trip_and_truncation(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "x.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), images)
    with gzip.open(tmp_path / "cut.gz", "wb") as f:
        f.write(gzip.decompress((tmp_path / "x.gz").read_bytes())[:-10])
    with pytest.raises(DataError, match=r"cut.gz: truncated IDX file"):
        read_idx(tmp_path / "cut.gz")


@pytest.mark.skipif(
    not FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed (make data)"
)
def test_real_fashion_mnist_is_padded_to_32():
    splits = load_fashion_mnist({"root": str(FASHION_MNIST), "resolution": 32})
    images, labels = splits["train"]
    assert images.shape == (60000, 32, 32, 1) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [6000] * 10
    assert images[:, :2].max() == 0 and images[:, :, -2:].max() == 0  # zero border
    assert splits["test"][0].shape == (10000, 32, 32, 1)


def test_missing_fashion_mnist_names_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "uvit.data._download",
        lambda url, path: (_ for _ in ()).throw(DataError(f"{path}: not found and could not download {url}")),
    )
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz"):
        load_fashion_mnist({"root": str(tmp_path / "nowhere"), "resolution": 32})


def test_wrong_checksum_stops(tmp_path):
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        write_idx(tmp_path / name, np.zeros((2, 28, 28) if "images" in name else (2,), dtype=np.uint8))
    with pytest.raises(DataError, match="checksum differs from the published Fashion-MNIST file"):
        load_fashion_mnist({"root": str(tmp_path), "resolution": 32})


def test_digits_split_and_range():
    splits = load_digits({"resolution": 16})
    assert splits["train"][0].shape == (1500, 16, 16, 1)
    assert splits["test"][0].shape == (297, 16, 16, 1)
    assert splits["train"][0].max() == 255


def cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"x",
        b"labels": rng.integers(0, 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"f"] * n,
    }


def test_cifar10_from_the_official_tarball_layout(tmp_path):
    batches = {f"data_batch_{i}": cifar_batch(4, i) for i in range(1, 6)} | {"test_batch": cifar_batch(3, 9)}
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, batch in batches.items():
            blob = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    splits = load_cifar10({"root": str(tmp_path / "cifar-10-python.tar.gz")})
    assert splits["train"][0].shape == (20, 32, 32, 3) and splits["test"][0].shape == (3, 32, 32, 3)
    first = batches["data_batch_1"][b"data"][0]
    np.testing.assert_array_equal(splits["train"][0][0, :, :, 0].ravel(), first[:1024])  # channel-major rows


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar10_refuses_arbitrary_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(DataError, match=r"refusing to unpickle builtins\.print"):
        load_cifar10({"root": str(folder)})
    with pytest.raises(DataError, match=r"CIFAR-10: .* not found"):
        load_cifar10({"root": str(tmp_path / "missing")})


def test_prepared_shards_are_byte_identical_and_checked(tmp_path):
    cfg = {"source": "digits", "resolution": 16, "shard_size": 400}
    prepare_dataset(cfg, tmp_path / "a")
    prepare_dataset(cfg, tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 * 4 + 2 * 1 + 2  # train: 4 shards of images and labels, test: 1, two manifests
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    images, labels = load_split(tmp_path / "a" / "train")
    assert images.shape == (1500, 16, 16, 1) and labels.shape == (1500,)
    assert load_split(tmp_path / "a" / "train", limit=10)[0].shape[0] == 10
    shard = tmp_path / "a" / "train" / "images-00001.npy"
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x01")
    with pytest.raises(DataError, match=r"images-00001.npy: checksum mismatch"):
        load_split(tmp_path / "a" / "train")


def test_pad_and_manifest(tmp_path):
    images = np.ones((3, 28, 28, 1), dtype=np.uint8)
    padded = pad_to(images, 32)
    assert padded.shape == (3, 32, 32, 1) and padded.sum() == 3 * 28 * 28
    manifest = write_split(tmp_path, padded, np.array([0, 1, 1]), 2, "test")
    assert manifest["class_counts"] == {0: 1, 1: 2} and manifest["count"] == 3
    with pytest.raises(DataError, match="cannot pad"):
        pad_to(images, 27)
