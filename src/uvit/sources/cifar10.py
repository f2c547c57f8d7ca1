"""CIFAR-10 from the official python batches, read without unpickling arbitrary objects."""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np

from uvit.fileio import DataError


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
    root = Path(cfg["root"])
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
