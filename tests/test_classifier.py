"""The classifier that scores class-conditional samples, and the guidance scale of a guidance point reaching the
sampler: accuracy in closed form, a real classifier on real digits, the scoring of a sample folder, and eps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import record as experiment_record

from uvit.classifier import accuracy_of_samples, label_accuracy, load_classifier, predict, train_classifier
from uvit.conditioning import sample_classes
from uvit.config import ConfigError, deep_merge, evaluation_point, resolve_experiment
from uvit.data import prepare_dataset
from uvit.provenance import write_json
from uvit.sampling import ImageSampler, sample_name, write_png
from uvit.shards import load_split


def test_accuracy_is_the_share_labelled_as_the_class_drawn_for():
    """30 samples of 3 classes drawn as index mod 3; every fifth labelled as the next class: 24 of 30 right,
    8 of 10 in each class (indices 0, 15 of class 0; 10, 25 of class 1; 5, 20 of class 2); no sample of class 3."""
    intended = sample_classes(list(range(30)), 3).numpy()
    assert intended.tolist() == [i % 3 for i in range(30)]
    predicted = intended.copy()
    predicted[::5] = (predicted[::5] + 1) % 3
    scores = label_accuracy(predicted, intended, 4)
    assert (scores["correct"], scores["count"], scores["accuracy"]) == (24, 30, 24 / 30)
    assert scores["per_class"] == [0.8, 0.8, 0.8, None]
    assert label_accuracy((intended + 1) % 3, intended, 3)["accuracy"] == 0.0


@pytest.fixture(scope="module")
def digits(tmp_path_factory, params):
    """Prepared digits and the smoke classifier trained on their training split (its params.yaml settings)."""
    root = tmp_path_factory.mktemp("classifier")
    prepare_dataset({"source": "digits", "resolution": 16, "shard_size": 1000}, root / "data")
    cfg = params["classifiers"]["digits_cnn"]
    metrics = train_classifier(cfg, root / "data", root / "digits_cnn.pth", log=lambda m: None)
    return root, cfg, metrics


def test_the_classifier_learns_digits_in_a_few_steps_and_deterministically(digits, tmp_path):
    """Held-out accuracy at least five times chance (10 classes) after the smoke setting's few steps; the same
    settings give the same weights, byte for byte."""
    root, cfg, metrics = digits
    assert cfg["steps"] <= 200 and metrics["steps"] == cfg["steps"]
    assert (
        metrics["test_images"] == 297 and metrics["train_images"] == 1500 and metrics["test_split"] == "test"
    )
    assert metrics["test_accuracy"] >= 0.5, metrics
    again = train_classifier(cfg, root / "data", tmp_path / "again.pth", log=lambda m: None)
    assert again == metrics
    assert (tmp_path / "again.pth").read_bytes() == (root / "digits_cnn.pth").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["again.pth"]  # written atomically: no temporary left


def test_a_sample_folder_is_scored_by_the_class_each_index_was_drawn_for(digits, params, tmp_path):
    """A "sample" folder of real held-out digits, sample i showing a digit of class i mod 10: the accuracy stage
    gives exactly the classifier's accuracy on those images under their true labels; the same images one class
    off (sample i showing class i + 1 mod 10) score as what the classifier calls class i + 1 mod 10 there."""
    root, cfg, metrics = digits
    images, labels = load_split(root / "data" / "test")
    count = 40
    write_json(root / "digits_cnn.json", metrics)
    model = load_classifier(root / "digits_cnn.pth", "digits_cnn", cfg, root / "data")
    exp = experiment_record(
        deep_merge(resolve_experiment(params, "smoke_latent"), {"sampling": {"num_samples": count}})
    )
    for shift in (0, 1):
        folder = tmp_path / f"shift{shift}"
        folder.mkdir()
        chosen = [int(np.flatnonzero(labels == (i + shift) % 10)[i // 10]) for i in range(count)]
        for i, index in enumerate(chosen):
            write_png(folder / sample_name(i), images[index])
        inputs = {
            "dataset": str(root / "data"),
            "samples": str(folder),
            "classifier": str(root / "digits_cnn.pth"),
            "classifier_metrics": str(root / "digits_cnn.json"),
        }
        out = tmp_path / f"accuracy{shift}.json"
        record = accuracy_of_samples(params, exp, inputs, out, log=lambda m: None)
        drawn_for = np.arange(count) % 10
        expected = label_accuracy(predict(model, images[chosen]), drawn_for, 10)
        assert record["classifier_accuracy"] == round(expected["accuracy"], 6)
        assert record["correct"] == expected["correct"] and record["num_samples"] == count
        assert record["classifier_test_accuracy"] == metrics["test_accuracy"]
        assert json.loads(out.read_text())["provenance"]["inputs"]["samples"]["path"] == str(folder)
        if shift == 0:
            assert expected == label_accuracy(predict(model, images[chosen]), labels[chosen], 10)


class EpsByClass(torch.nn.Module):
    """A stand-in U-ViT whose noise prediction is (label + 1) * x: eps_c and eps_u tell their labels apart."""

    def __init__(self):
        super().__init__()
        self.labels: list[torch.Tensor] = []

    def forward(self, x, t, y):
        self.labels.append(y.clone())
        return (y.float() + 1)[:, None, None, None] * x


@pytest.mark.parametrize("scale", [0.0, 0.4, 3.0])
def test_a_guidance_point_samples_with_its_scale(params, monkeypatch, scale):
    """The scale of a guidance point (evaluation_point, as `uvit sample --guidance-scale` builds it) reaches the
    sampler as eps = eps_c + s (eps_c - eps_u), the null class in eps_u, sample i conditioned on class i mod 10."""
    import uvit.sampling

    exp = experiment_record(
        deep_merge(
            resolve_experiment(params, "smoke_pixel"),
            {"condition": "class", "training": {"cond_drop_prob": 0.15}},
        )
    )
    point = evaluation_point(exp, guidance_scale=scale)
    assert point["sampling"]["guidance_scale"] == scale and exp["sampling"]["guidance_scale"] == 0.0
    sampler = ImageSampler(point, None, weights_geometry=(10, (1, 16, 16)))
    captured = {}

    def fake_sample(eps_fn, schedule, noise, *args):
        captured["eps"] = eps_fn
        return noise.draw()

    monkeypatch.setattr(uvit.sampling, "sample", fake_sample)
    model, indices = EpsByClass(), [3, 14, 25]
    sampler.images(model, indices)
    x, t = torch.randn(3, 1, 16, 16), torch.tensor(0.5)
    eps = captured["eps"](x, t)
    cond = torch.tensor([3.0, 4.0, 5.0])[:, None, None, None] + 1  # classes 3, 14 mod 10, 25 mod 10
    uncond = 10.0 + 1  # the null class is the 11th
    assert torch.allclose(eps, cond * x + scale * (cond * x - uncond * x))
    seen = torch.cat(model.labels).tolist()
    assert seen == (
        [3, 4, 5] if scale == 0 else [3, 4, 5, 10, 10, 10]
    )  # scale 0: the conditional model alone


def test_guidance_on_a_model_not_trained_for_it_is_refused(params):
    exp = resolve_experiment(params, "smoke_pixel")
    assert evaluation_point(exp, guidance_scale=0)["sampling"]["guidance_scale"] == 0
    with pytest.raises(ConfigError, match=r"experiments\.smoke_pixel: guidance scale 1\.0 needs condition"):
        evaluation_point(exp, guidance_scale=1.0)
