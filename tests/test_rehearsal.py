"""`uvit rehearse`: a paper row's DAG on synthetic data in the row's raw layout (ImageNet's 1,000 synset folders,
the CIFAR-10 tarball, CelebA's zip and partition file, COCO's caption JSON), through the real command."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import CORES, project_env

from uvit.config import load_params, resolve_experiment
from uvit.errors import UserError
from uvit.fileio import DataError
from uvit.rehearsal import CUTS, RAW_WRITERS, paper_rows, rehearsal_params
from uvit.sources import ADAPTERS

ROOT = Path(__file__).resolve().parents[1]


def written_params() -> dict:
    """params.yaml as written (ablation grids not expanded), a fresh copy each time."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_every_paper_row_has_a_synthetic_layout_and_keeps_its_shapes_with_counts_cut():
    params = load_params(ROOT / "params.yaml")
    rows = paper_rows(written_params())
    assert len(rows) == 11 and rows[-1] == "cifar10_ablation"  # the ten table rows and the ablations' base
    for row in rows:
        paper = resolve_experiment(params, row)
        cut = rehearsal_params(written_params(), row, tiny=False)
        rehearsed = resolve_experiment(cut, row)
        assert cut["datasets"][paper["dataset"]]["source"] in RAW_WRITERS
        assert rehearsed["model"] == paper["model"]  # the row's own network without --tiny
        for key in ("dataset", "space", "autoencoder", "condition", "diffusion"):
            assert rehearsed[key] == paper[key], (row, key)
        assert rehearsed["sampling"]["sampler"] == paper["sampling"]["sampler"]
        assert rehearsed["training"]["lr"] == paper["training"]["lr"]
        for section, cuts in CUTS.items():
            assert {k: rehearsed[section][k] for k in cuts} == cuts
        assert rehearsed["scale"] == "rehearsal" and rehearsed["resources"]["gpus"] == 0
        tiny = resolve_experiment(rehearsal_params(written_params(), row, tiny=True), row)
        assert (
            tiny["model"]["patch_size"] == paper["model"]["patch_size"] and tiny["model"]["embed_dim"] == 32
        )
    with pytest.raises(
        UserError, match=r"^rehearse: 'fmnist_pixel' is not a paper row; choose one of cifar10_uvit_s2"
    ):
        rehearsal_params(written_params(), "fmnist_pixel", tiny=True)


@pytest.mark.parametrize("source", ["cifar10", "celeba", "mscoco"])
def test_synthetic_raw_data_is_read_by_the_sources_adapter(tmp_path, source):
    """The synthetic CIFAR-10 tarball, CelebA zip and COCO folders are read by the same adapters as the real
    downloads, each split large enough for the rehearsal's floor at one image per class (ImageNet's 1,000
    folders run end to end below)."""
    writer, raw = RAW_WRITERS[source]
    root = writer(tmp_path / raw, 32, 1)
    cfg = {"source": source, "root": str(root), "resolution": 32, "shard_size": 100}
    splits = ADAPTERS[source](cfg)
    assert "train" in splits
    for split in splits.values():
        images = np.concatenate([x for x, _ in split.chunks])
        assert images.shape[1:3] == (32, 32) and images.dtype == np.uint8
        assert len(images) >= CUTS["sampling"]["num_samples"]  # the floor scores as many held-out images


def test_an_imagenet_folder_without_all_its_classes_is_refused(tmp_path):
    writer, raw = RAW_WRITERS["imagenet"]
    root = writer(tmp_path / raw, 16, 1, classes=3)
    cfg = {"source": "imagenet", "root": str(root), "resolution": 16, "shard_size": 100, "classes": 1000}
    pattern = (
        r"ImageNet: \S+/train has 3 synset folders with images, datasets.<name>.classes expects 1000; point"
    )
    with pytest.raises(DataError, match=pattern):
        ADAPTERS["imagenet"](cfg)


@pytest.mark.slow
def test_rehearsal_runs_a_1000_class_row_through_its_dag(tmp_path):
    """`uvit rehearse imagenet64_uvit_m4`: 1,000 synset folders of JPEGs larger than 64 px, the row's DAG through
    Snakemake in a project copy, and an FID record that says it is a rehearsal at the row's 64 x 64."""
    out = tmp_path / "rehearsal"
    command = ["uvit", "rehearse", "imagenet64_uvit_m4", "--out", str(out), "--per-class", "1", "--tiny"]
    result = subprocess.run(
        [*command, "--cores", CORES], cwd=ROOT, env=project_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((out / "data/raw/imagenet/train").iterdir())) == 1000
    manifest = json.loads((out / "data/prepared/imagenet64/train/manifest.json").read_text())
    assert (
        manifest["count"] == 1000
        and len(manifest["class_counts"]) == 1000
        and manifest["shape"] == [64, 64, 3]
    )
    fid = json.loads((out / "metrics/imagenet64_uvit_m4/fid.json").read_text())
    assert fid["scale"] == "rehearsal" and fid["resolution"] == 64 and np.isfinite(fid["fid"])
    summary = json.loads((out / "rehearsal.json").read_text())
    jobs = {job["job"].split("/")[0] for job in summary["jobs"]}
    assert jobs == {"prepare_data", "train", "sample", "reference_stats", "fid_floor", "fid"}
    assert "the DAG ran in" in result.stderr + result.stdout
    assert yaml.safe_load((out / "params.yaml").read_text())["targets"] == ["imagenet64_uvit_m4"]
    again = subprocess.run(command, cwd=ROOT, env=project_env(), capture_output=True, text=True)
    assert again.returncode == 2 and "is not empty; give a new --out folder" in again.stderr
