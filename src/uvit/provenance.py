"""Provenance: what made a number. Git commit, resolved settings and DVC content hashes of the inputs.

Content hashes use DVC's own definition (DVC 3 "md5"), so they can be checked against dvc.lock: a file's md5,
or for a directory the md5 of the sorted JSON list of {"md5", "relpath"} entries, suffixed ".dir".
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from uvit import layout
from uvit.fileio import atomic_write_bytes, md5_file

# Paths the pipeline itself rewrites; changes there do not make the code or settings "dirty".
GENERATED_PATHS = (layout.METRICS_DIR, layout.PAPER_TABLES, "dvc.lock")


# Files DVC does not hash inside a directory output (.dvcignore): the marker Snakemake leaves in each directory
# output it made, so both engines give a directory the same hash.
DVC_IGNORED = {".snakemake_timestamp"}


def dvc_md5(path: str | Path) -> str:
    """DVC's content hash of a file or directory (files named in .dvcignore left out, as DVC leaves them)."""
    path = Path(path)
    if path.is_file():
        return md5_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: cannot hash a missing input")
    entries = sorted(
        (
            {"md5": md5_file(p), "relpath": p.relative_to(path).as_posix()}
            for p in path.rglob("*")
            if p.is_file() and p.name not in DVC_IGNORED
        ),
        key=lambda e: e["relpath"],
    )
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def git_state(root: str | Path = ".") -> dict:
    """The commit of the code and whether tracked files other than generated outputs differ from it."""
    try:
        commit = _git(root, "rev-parse", "HEAD")
        excludes = [f":(exclude){p}" for p in GENERATED_PATHS]
        status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", *excludes)
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status)}


def _git(root: str | Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def record(settings: dict, inputs: dict[str, str | Path], settings_hash: str) -> dict:
    """The provenance block stored in every metrics file."""
    return {
        **git_state(),
        "settings_hash": settings_hash,
        "settings": settings,
        "inputs": {name: {"path": str(p), "md5": dvc_md5(p)} for name, p in sorted(inputs.items())},
    }


def scores(record: dict) -> dict:
    """The numbers of a metrics record a person compares across runs: its numeric top-level values (FID,
    floor, counts, steps; any score added to the record joins them), without the provenance around them."""
    return {
        key: value
        for key, value in sorted(record.items())
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def write_json(path: str | Path, payload: dict) -> None:
    """Atomically write a JSON metrics file (sorted keys, trailing newline)."""
    path = Path(path)
    os.makedirs(path.parent, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())
