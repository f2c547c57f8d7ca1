"""`uvit prepare-data`: a dataset's source adapter (uvit.sources) run, its splits written in the prepared format
(uvit.shards)."""

from __future__ import annotations

from pathlib import Path

from uvit.shards import write_split
from uvit.sources import ADAPTERS


def prepare_dataset(cfg: dict, out_dir: str | Path) -> dict[str, dict]:
    """Run the dataset's adapter and write every split in the prepared format."""
    splits = ADAPTERS[cfg["source"]](cfg)
    return {
        name: write_split(Path(out_dir) / name, split, cfg["shard_size"], cfg["source"])
        for name, split in splits.items()
    }
