"""Shared fixtures: the project root, its params, and a throwaway copy of the project for DAG runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# `make test` runs one pytest-xdist worker per core. Each worker and everything it starts (Snakemake jobs, `uvit`
# commands) then runs one torch thread: two 2-thread processes on 2 cores spin at torch's thread barriers and run
# several times slower than two 1-thread ones. Alone, a DAG test gives Snakemake 2 cores.
PARALLEL = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1
if PARALLEL:
    os.environ["OMP_NUM_THREADS"] = "1"
CORES = "1" if PARALLEL else "2"
BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"
COPY_IGNORE_NAMES = shutil.ignore_patterns(
    ".venv",
    ".git",
    ".snakemake",
    "data",
    "results",
    "logs",
    "metrics",
    "paper_tables",
    ".pytest_cache",
    "__pycache__",
    ".ruff_cache",
    "dvc.lock",
    "settings",
)


def copy_ignore(folder: str, names: list[str]) -> set[str]:
    """What a project copy leaves out: outputs, environments, and DVC's cache and temporary files (after `make
    demo` the cache holds every artifact: copying it cost ~7 s of each copy)."""
    ignored = set(COPY_IGNORE_NAMES(folder, names))
    if Path(folder) == ROOT / ".dvc":
        ignored |= {"cache", "tmp"} & set(names)
    return ignored


def pytest_collection_modifyitems(items):
    """The smoke DAG (the longest file) first, then the other end-to-end runs, so that the workers end together
    (`make test` hands out whole files in this order: --dist loadfile --no-loadscope-reorder)."""
    items.sort(key=lambda item: ("test_pipeline.py" not in item.nodeid, not item.get_closest_marker("slow")))


@pytest.fixture(scope="session", autouse=True)
def one_thread_per_worker():
    if PARALLEL:
        import torch

        torch.set_num_threads(1)


# The tests' own experiments (tiny models on digits and a written emoji set), merged over params.yaml.
SMOKE_PARAMS = ROOT / "tests" / "smoke.yaml"


def raw_test_params() -> dict:
    """params.yaml with the tests' experiments, as written (not validated)."""
    from uvit.config import read_params

    return read_params(ROOT / "params.yaml", (SMOKE_PARAMS,))


def load_test_params() -> dict:
    from uvit.config import load_params

    return load_params(ROOT / "params.yaml", overlays=(SMOKE_PARAMS,))


@pytest.fixture(scope="session")
def params() -> dict:
    return load_test_params()


def record(settings: dict):
    """Experiment settings edited in a test (a deep copy of a resolved one) as a record again, derived values
    worked out afresh from them (uvit.config.experiment_record)."""
    from uvit.config import experiment_record

    return experiment_record(load_test_params(), settings)


def edited(exp: dict, section: str, **values):
    """A record of `exp` with keys of one section changed (records are read-only)."""
    import copy

    settings = copy.deepcopy(exp)
    settings[section].update(values)
    return record(settings)


def make_project_copy(dest: Path, targets: list[str] | None = None, smoke: bool = True) -> Path:
    """A copy of the project (code, workflow, params) without outputs, as its own git + DVC repository; its
    params.yaml holds the tests' experiments too unless `smoke` is False (the user's params.yaml as committed).

    With `targets`, its params.yaml keeps only those experiments and ablation grids (and the grids' bases), and its
    dvc.yaml files are made anew from it: DVC loads every stage of every experiment at each step of `dvc exp run`
    (~70 s more with the paper rows there) and at each record of dvc.lock after a Snakemake run (~3 s more)."""
    shutil.copytree(ROOT, dest, ignore=copy_ignore)
    if smoke:
        (dest / "params.yaml").write_text(yaml.safe_dump(raw_test_params(), sort_keys=False))
    env = project_env()
    if targets:
        set_params(dest, lambda p: keep_only(p, targets))
        subprocess.run([BIN / "python", "workflow/scripts/export_dvc.py"], cwd=dest, check=True, env=env)
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"],
    ):
        subprocess.run(command, cwd=dest, check=True, env=env)
    return dest


def keep_only(params: dict, targets: list[str]) -> None:
    """params.yaml's targets, quick tier and experiments cut to `targets` (experiments or ablation grids), keeping
    the row that calibrates the GPU-hour estimates."""
    from uvit.plan import CALIBRATION

    grids = {name: grid for name, grid in params["ablations"].items() if name in targets}
    kept = {*targets, CALIBRATION} | {grid["base"] for grid in grids.values()}
    params.update(targets=targets, quick_targets=targets[:1], ablations=grids)
    params["experiments"] = {name: exp for name, exp in params["experiments"].items() if name in kept}


def set_params(project: Path, edit) -> None:
    """Apply edit(params_dict) to a project's params.yaml."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def project_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env['PATH']}"
    env["HF_HUB_OFFLINE"] = "1"
    return env


def run(command: list[str], cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=cwd, env=project_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def job_rules(output: str) -> set[str]:
    """The rules of the "Job stats" table Snakemake prints before running or planning (none: nothing to do)."""
    if "Job stats:" not in output:
        return set()
    table = output.split("Job stats:")[1].split("total")[0]
    return {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+$", table, re.M)}


def project_params(tmp_path: Path, sampling: dict | None = None, **training) -> Path:
    """A params.yaml (with its schema beside it) whose smoke_pixel trains and samples with these settings."""
    params = raw_test_params()
    params["experiments"]["smoke_pixel"]["training"].update({"keep_steps": []} | training)
    params["experiments"]["smoke_pixel"]["sampling"].update(sampling or {})
    (tmp_path / "workflow" / "schemas").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "workflow/schemas/params.schema.yaml", tmp_path / "workflow/schemas/")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def write_emoji_package(root: Path, count: int = 40) -> list[str]:
    """A small emoji set in the npm package emoji-datasource-google's layout (package/emoji.json,
    package/img/google/64/*.png): solid-colour RGBA squares, every fourth with two skin-tone variants.
    Returns the captions the adapter should give, in its order (sort_order, variants after their base)."""
    import json

    import numpy as np
    from PIL import Image

    images = root / "package" / "img" / "google" / "64"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    meta, captions = [], []

    def png(name: str) -> str:
        pixels = np.concatenate([rng.integers(0, 256, 3), [255]]).astype(np.uint8)
        Image.fromarray(np.tile(pixels, (64, 64, 1))).save(images / name)
        return name

    for i in reversed(range(count)):  # written out of order: the adapter sorts by sort_order
        entry = {
            "name": f"TEST EMOJI {i}",
            "image": png(f"e{i:03d}.png"),
            "sort_order": i,
            "category": ["Smileys & Emotion", "Objects"][i % 2],
            "has_img_google": True,
        }
        if i % 4 == 0:
            entry["skin_variations"] = {
                "1F3FB": {"image": png(f"e{i:03d}-1f3fb.png"), "has_img_google": True},
                "1F3FB-1F3FF": {"image": png(f"e{i:03d}-1f3fb-1f3ff.png"), "has_img_google": True},
            }
        meta.append(entry)
    meta.append({"name": "NO GOOGLE IMAGE", "image": "none.png", "sort_order": 999, "category": "Objects"})
    (root / "package" / "emoji.json").write_text(json.dumps(meta))
    for i in range(count):
        captions.append(f"test emoji {i}")
        if i % 4 == 0:
            captions += [
                f"test emoji {i}, light skin tone",
                f"test emoji {i}, light skin tone and dark skin tone",
            ]
    return captions
