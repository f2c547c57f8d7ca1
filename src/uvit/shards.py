"""The prepared-dataset format every stage reads, and the shards of encoded datasets (latents, text contexts).

Prepared format (one per dataset and split, `<dir>/<split>/`): a few shards `images-00000.npy`
(uint8, N x H x W x C) and `labels-00000.npy` (int64, N), plus `manifest.json` with the count, shape,
class counts, source, skipped files and the md5 of every shard (and `captions.json` for text datasets).
A few hundred files at ImageNet scale keeps DVC fast; reading checks every shard against the manifest, so a
changed or truncated shard stops the stage. Image-folder datasets are decoded and written shard by shard,
so preparing ImageNet needs memory for one shard, not for the dataset.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from uvit.fileio import DataError, atomic_write_bytes, check_file, npy_bytes, read_checked, read_json


@dataclass
class SplitData:
    """One split from an adapter: chunks of (images N x H x W x C uint8, labels int64), lazy for image-folder
    datasets; the captions of each kept image (text datasets); the files skipped as unreadable."""

    chunks: Iterable[tuple[np.ndarray, np.ndarray]]
    captions: list[list[str]] | None = None
    skipped: list[str] = field(default_factory=list)


def in_memory(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, SplitData]:
    return {split: SplitData([(images, labels)]) for split, (images, labels) in splits.items()}


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


def load_captions(split_dir: str | Path) -> list[list[str]]:
    """The captions of a prepared text dataset, one list per image, md5-checked against the manifest."""
    split_dir = Path(split_dir)
    entry = read_manifest(split_dir).get("captions")
    if entry is None:
        raise DataError(f"{split_dir}: this dataset has no captions (text models need source: mscoco)")
    return json.loads(read_checked(split_dir / entry["file"], entry["md5"], split_dir, "prepare_data"))


def num_classes(split_dir: str | Path) -> int:
    return len(read_manifest(split_dir)["class_counts"])
