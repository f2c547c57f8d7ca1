"""The evaluation stages (uvit.evaluation) without the Inception network: reference statistics, the FID floor
and the FID of a sample folder, with a stand-in feature extractor whose 2-d features (the mean of the red and
of the green channel) make every number a closed form. Only the slow DAG tests reached this module before
mutation testing (benchmarks/mutation.py) showed it.

For 2 x 2 covariances, tr((S1 S2)^(1/2)) = sqrt(tr(S1 S2) + 2 sqrt(det(S1 S2))) (the square root of a 2 x 2
matrix with positive eigenvalues), so FID = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 sqrt(tr(S1 S2) + 2 sqrt(det S1
det S2)), computed here independently of uvit.fid's eigendecompositions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from conftest import edited
from test_recipe import experiment

import uvit.evaluation as evaluation
from uvit.config import EVALUATION_ADDITIONS, evaluation_point
from uvit.fid import load_statistics, save_statistics
from uvit.fileio import DataError
from uvit.provenance import dvc_md5
from uvit.sampling import write_png
from uvit.shards import in_memory, write_split

COUNT, SIZE = 40, 6


class ChannelMeans:
    """Stands in for InceptionFeatureExtractor: features are each image's red and green channel means."""

    made: ClassVar[list[str]] = []  # the precisions it was built with (reset per test)

    def __init__(self, precision: str = "fp32", protocol_name: str = "clean"):
        ChannelMeans.made.append(precision)

    def features(self, images: np.ndarray, progress: bool = False, desc: str = "") -> np.ndarray:
        assert images.dtype == np.uint8 and images.ndim == 4
        return images[..., :2].astype(np.float64).mean((1, 2))

    def all_features(
        self, images: np.ndarray, progress: bool = False, desc: str = ""
    ) -> dict[str, np.ndarray]:
        """One pass: the pool features and (here the same numbers) ADM's spatial features."""
        pool = self.features(images, progress, desc)
        return {"pool": pool, "spatial": pool.copy()}


def save_reference(path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A reference as the FID stage writes one (clean protocol; the stand-in's spatial features equal its pool
    features); returns its (mu, sigma)."""
    features = images[..., :2].astype(np.float64).mean((1, 2))
    reference = moments(images)
    save_statistics(path, *reference, mu_s=reference[0], sigma_s=reference[1], features=features,
                    protocol=np.array("clean"))  # fmt: skip
    return reference


def moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (clean-fid: np.mean, np.cov(rowvar=False)) of the channel means."""
    f = images[..., :2].astype(np.float64).mean((1, 2))
    centred = f - f.mean(0)
    return f.mean(0), centred.T @ centred / (len(f) - 1)


def closed_form_fid(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    (mu1, s1), (mu2, s2) = a, b
    product = s1 @ s2
    trace_sqrt = math.sqrt(np.trace(product) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


@pytest.fixture
def data(tmp_path, monkeypatch) -> tuple[Path, dict[str, np.ndarray]]:
    """A prepared dataset (train and test splits of random images, the test split brighter)."""
    monkeypatch.setattr(evaluation, "InceptionFeatureExtractor", ChannelMeans)
    ChannelMeans.made = []
    rng = np.random.default_rng(0)
    splits = {
        "train": rng.integers(0, 256, (COUNT, SIZE, SIZE, 3), dtype=np.uint8),
        "test": rng.integers(60, 256, (COUNT, SIZE, SIZE, 3), dtype=np.uint8),
    }
    labels = np.zeros(COUNT, dtype=np.int64)
    prepared = in_memory({name: (images, labels) for name, images in splits.items()})
    for name in splits:
        write_split(tmp_path / "data" / name, prepared[name], 1000, "test")
    return tmp_path / "data", splits


def test_reference_statistics_are_the_moments_of_the_first_count_images(data, tmp_path):
    root, splits = data
    logs = []
    evaluation.reference_statistics(
        root, "train", 25, tmp_path / "ref.npz", precision="bf16", log=logs.append
    )
    mu, sigma = load_statistics(tmp_path / "ref.npz")
    expected_mu, expected_sigma = moments(splits["train"][:25])
    np.testing.assert_allclose(mu, expected_mu, rtol=1e-12)
    np.testing.assert_allclose(sigma, expected_sigma, rtol=1e-12)
    with np.load(tmp_path / "ref.npz") as npz:
        assert int(npz["count"]) == 25
    assert ChannelMeans.made == ["bf16"]
    evaluation.reference_statistics(root, "train", 5, tmp_path / "ref5.npz", log=logs.append)
    assert ChannelMeans.made == ["bf16", "fp32"]  # fp32 features unless asked: published FIDs are fp32
    assert logs[0] == f"reference statistics of 25 train images (clean) -> {tmp_path / 'ref.npz'}"


def test_the_floor_is_the_fid_of_held_out_images_against_the_reference(data, tmp_path):
    root, splits = data
    reference = save_reference(tmp_path / "ref.npz", splits["train"])
    logs = []
    evaluation.fid_floor(root, "test", 30, tmp_path / "ref.npz", tmp_path / "floor.json", "fp32", logs.append)
    floor = json.loads((tmp_path / "floor.json").read_text())
    expected = closed_form_fid(moments(splits["test"][:30]), reference)
    assert expected > 100  # the test split is brighter: far from the reference
    assert floor["fid_floor"] == pytest.approx(round(expected, 4), abs=1e-4)
    assert floor["count"] == 30 and floor["split"] == "test"
    assert floor["inputs"] == {
        "dataset": {"path": str(root), "md5": dvc_md5(root)},
        "reference": {"path": str(tmp_path / "ref.npz"), "md5": dvc_md5(tmp_path / "ref.npz")},
    }
    assert logs == [f"FID floor (30 test images): {expected:.3f}"]
    assert ChannelMeans.made == ["fp32"]


def test_reference_label_and_evaluation_points():
    exp = experiment("smoke_pixel")
    count = exp["evaluation"]["reference_images"]
    assert evaluation.reference_label(exp["evaluation"]) == f"{count} train"
    given = exp["evaluation"] | {"reference_npz": "/x/fid_stats_cifar10.npz"}
    assert (
        evaluation.reference_label(given)
        == f"fid_stats_cifar10.npz (given, {exp['evaluation']['fid_protocol']})"
    )
    before = json.dumps(exp, sort_keys=True)
    point = evaluation_point(exp, training_step=7, sampler_steps=3)
    assert point["training"]["steps"] == 7 and point["sampling"]["steps"] == 3
    assert json.dumps(exp, sort_keys=True) == before  # a new record: the experiment itself is unchanged
    assert point["derived"] == exp["derived"]
    assert evaluation_point(exp) == exp
    assert evaluation_point(exp, sampler_steps=4)["training"]["steps"] == exp["training"]["steps"]


@pytest.mark.parametrize("pretrained", [False, True])
def test_fid_of_samples_records_the_fid_its_floor_and_what_made_it(pretrained, data, tmp_path):
    _, splits = data
    (tmp_path / "samples").mkdir()
    samples = np.random.default_rng(1).integers(0, 200, (12, SIZE, SIZE, 3), dtype=np.uint8)
    for i, image in enumerate(samples):
        write_png(tmp_path / "samples" / f"{i:06d}.png", image)
    reference = save_reference(tmp_path / "ref.npz", splits["train"])
    exp = experiment(
        "smoke_pixel",
        sampling={"num_samples": 12, "guidance_scale": 0.7},
        training={"steps": 11},
    )
    exp = edited(exp, "evaluation", feature_precision="bf16")
    inputs = {"samples": str(tmp_path / "samples"), "reference": str(tmp_path / "ref.npz")}
    floor_path = None
    if not pretrained:
        floor_path = tmp_path / "floor.json"
        floor_path.write_text(json.dumps({"fid_floor": 1.25}))
    logs = []
    metrics = evaluation.fid_of_samples(
        exp, inputs, floor_path, tmp_path / "fid.json", pretrained, logs.append
    )
    assert json.loads((tmp_path / "fid.json").read_text()) == metrics
    expected = closed_form_fid(moments(samples), reference)
    assert metrics["fid"] == pytest.approx(round(expected, 4), abs=1e-4)
    assert metrics["fid_floor"] == (None if pretrained else 1.25)
    assert ChannelMeans.made == ["bf16"] and metrics["feature_precision"] == "bf16"
    assert {k: metrics[k] for k in ("experiment", "paper_row", "scale", "num_samples", "resolution")} == {
        "experiment": "smoke_pixel", "paper_row": "cifar10_uvit_s2", "scale": exp["scale"], "num_samples": 12,
        "resolution": SIZE,
    }  # fmt: skip
    assert (metrics["sampler"], metrics["sampler_steps"], metrics["guidance_scale"]) == (
        exp["sampling"]["sampler"], exp["sampling"]["steps"], 0.7,
    )  # fmt: skip
    assert metrics["training_steps"] == 11
    count = exp["evaluation"]["reference_images"]
    assert (metrics["reference_images"], metrics["reference_split"], metrics["reference"]) == (
        count,
        "train",
        f"{count} train",
    )
    assert (
        metrics["feature_network"] == evaluation.feature_network("clean")
        and metrics["fid_protocol"] == "clean"
    )
    assert metrics["weights"] == (
        "authors' release (evaluation only)" if pretrained else "trained by this pipeline"
    )
    assert metrics["model"] == "U-ViT (D=32, depth=3, p=4)"
    provenance = metrics["provenance"]
    # the keys that add evaluations of their own (curve and guidance points, classifier accuracy) are not the FID's
    recorded = {k: v for k, v in exp["evaluation"].items() if k not in EVALUATION_ADDITIONS}
    assert set(EVALUATION_ADDITIONS) == {"sampler_steps", "guidance_scales", "classifier"}
    assert provenance["settings"] == {"evaluation": recorded, "sampling": exp["sampling"]}
    assert sorted(provenance["inputs"]) == (
        ["reference", "samples"] if pretrained else ["floor", "reference", "samples"]
    )
    assert provenance["inputs"]["samples"]["md5"] == dvc_md5(tmp_path / "samples")
    floor_text = "no floor" if pretrained else "floor 1.250"
    others = ", ".join(f"{k} {metrics[k]}" for k in ("sfid", "precision", "recall", "kid"))
    assert logs == [f"smoke_pixel: FID {expected:.3f} ({floor_text}, 12 samples, clean), {others}"]

    exp = edited(exp, "sampling", num_samples=13)
    with pytest.raises(DataError, match=r"samples: 12 images, sampling.num_samples says 13; re-run sample"):
        evaluation.fid_of_samples(exp, inputs, floor_path, tmp_path / "fid.json", pretrained, logs.append)
