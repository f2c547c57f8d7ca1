"""Files every stage writes and checks: atomic writes, md5 checksums, .npy bytes, JSON records, and DataError,
the error for a missing, changed or unreadable input file."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from uvit.errors import UserError


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


def read_json(path: Path, fix: str) -> dict:
    """A JSON object from a file a stage wrote; an unreadable or truncated one is a DataError saying `fix`."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable JSON file ({err}); {fix}") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(value).__name__}; {fix}")
    return value
