"""A small CNN image classifier, trained in the pipeline on a dataset's prepared training split, that scores a
class-conditional experiment's samples: the share it labels as the class each sample was drawn for
(`uvit.conditioning.sample_classes`) says whether guidance steers samples to their class, beside FID; its own
accuracy on the held-out split says how far its labels can be trusted.

Three stride-2 3x3 convolutions (width, 2 x width, 4 x width channels; BatchNorm, ReLU), then one linear layer:
on Fashion-MNIST 32x32, width 16 and 1,000 steps of 128 images reach about 90% held-out accuracy in about half a
minute on 2 CPU cores (fp32). Adam, the learning rate decayed to 0 along a cosine; batches from the per-epoch
permutations of U-ViT training (`uvit.seeds.batch_indices`) and weights initialised from the seed, so the
weights are a function of the settings. They are written atomically as a plain state_dict.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from uvit.autoencoder import to_unit_range
from uvit.checkpoints import CheckpointError, read_torch_file, save_checkpoint
from uvit.conditioning import sample_classes
from uvit.config import accuracy_settings, settings_hash
from uvit.fileio import DataError, read_json
from uvit.provenance import record, write_json
from uvit.sampling import read_samples
from uvit.seeds import batch_indices
from uvit.shards import load_split, num_classes, read_manifest

STRIDES = 3  # stride-2 convolutions: 32 -> 4, 16 -> 2 pixels before the linear layer


def build_classifier(channels: int, resolution: int, classes: int, width: int) -> nn.Sequential:
    """The CNN for images of `channels` x `resolution`^2 in [-1, 1] and `classes` classes."""
    layers, side, c_in = [], resolution, channels
    for i in range(STRIDES):
        c_out = width * 2**i
        layers += [
            nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
        side, c_in = (side + 1) // 2, c_out
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * side * side, classes))


def classifier_for(cfg: dict, data_dir: Path) -> nn.Sequential:
    """The classifier of these settings for a prepared dataset (image shape and classes from its manifest)."""
    height, _, channels = read_manifest(data_dir / "train")["shape"]
    return build_classifier(channels, height, num_classes(data_dir / "train"), cfg["width"])


def cosine_decay(steps: int):
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * step / steps))


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """The class the model gives each uint8 N x H x W x C image."""
    model.eval()
    return np.concatenate(
        [
            model(to_unit_range(images[i : i + batch_size])).argmax(1).numpy()
            for i in range(0, len(images), batch_size)
        ]
    )


def label_accuracy(predicted: np.ndarray, intended: np.ndarray, classes: int) -> dict:
    """The share of images labelled as intended, overall and per intended class (None: no image of that class)."""
    predicted, intended = np.asarray(predicted), np.asarray(intended)
    correct = predicted == intended
    per_class = [
        float(correct[intended == c].mean()) if (intended == c).any() else None for c in range(classes)
    ]
    return {
        "accuracy": float(correct.mean()),
        "correct": int(correct.sum()),
        "count": len(correct),
        "per_class": per_class,
    }


def train_classifier(cfg: dict, data_dir: Path, out: Path, log=print) -> dict:
    """Train on the prepared training split, measure accuracy on the held-out `test_split`, write the weights."""
    torch.manual_seed(cfg["seed"])
    images, labels = load_split(data_dir / "train")
    x, y = to_unit_range(images), torch.from_numpy(labels)
    model = classifier_for(cfg, data_dir).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_decay(cfg["steps"]))
    start = time.perf_counter()
    for step in range(cfg["steps"]):
        index = batch_indices(step, cfg["batch_size"], len(x), cfg["seed"])
        loss = nn.functional.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - start
    test_images, test_labels = load_split(data_dir / cfg["test_split"])
    test = label_accuracy(predict(model, test_images), test_labels, num_classes(data_dir / "train"))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, model.state_dict())
    log(
        f"classifier: {test['accuracy']:.2%} of {test['count']} {cfg['test_split']} images after {cfg['steps']} "
        f"steps ({seconds:.1f} s, final batch loss {loss.item():.3f})"
    )
    return {
        "test_accuracy": round(test["accuracy"], 6),
        "test_correct": test["correct"],
        "test_images": test["count"],
        "test_split": cfg["test_split"],
        "train_images": len(x),
        "steps": cfg["steps"],
        "batch_size": cfg["batch_size"],
        "seed": cfg["seed"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": round(loss.item(), 6),
    }


def load_classifier(path: Path, name: str, cfg: dict, data_dir: Path) -> nn.Sequential:
    """The trained classifier (a plain state_dict, loaded weights-only and strict)."""
    model = classifier_for(cfg, data_dir)
    fix = f"run `uvit train-classifier --classifier {name}` again"
    state = read_torch_file(path, f"the weights of classifier {name}; {fix}")
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[-1].strip() if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: does not fit classifier {name} of params.yaml ({first}); {fix}"
        ) from None
    return model.eval()


def accuracy_of_samples(
    params: dict, exp: dict, inputs: dict[str, str], metrics_path: Path, log=print
) -> dict:
    """The share of the experiment's samples its classifier labels as the class each was drawn for, beside the
    classifier's own held-out accuracy, with provenance."""
    name = exp["evaluation"]["classifier"]
    cfg, data_dir = params["classifiers"][name], Path(inputs["dataset"])
    shape = read_manifest(data_dir / "train")["shape"]
    indices, images = read_samples(Path(inputs["samples"]), shape[-1])
    expected = exp["sampling"]["num_samples"]
    if indices != list(range(expected)):
        raise DataError(
            f"{inputs['samples']}: {len(indices)} samples, sampling.num_samples says {expected} (0..{expected - 1}); "
            "re-run sample"
        )
    if list(images.shape[1:]) != list(shape):
        raise DataError(
            f"{inputs['samples']}: samples of shape {list(images.shape[1:])}, the classifier reads {name}'s "
            f"{list(shape)}; sample the experiment the classifier was trained for"
        )
    classes = num_classes(data_dir / "train")
    model = load_classifier(Path(inputs["classifier"]), name, cfg, data_dir)
    scores = label_accuracy(predict(model, images), sample_classes(indices, classes).numpy(), classes)
    own = read_json(Path(inputs["classifier_metrics"]), "run `uvit train-classifier` again")
    settings = accuracy_settings(params, exp)
    metrics = {
        "experiment": exp["name"],
        "paper_row": exp["paper_row"],
        "scale": exp["scale"],
        "classifier": name,
        "classifier_accuracy": round(scores["accuracy"], 6),
        "correct": scores["correct"],
        "num_samples": expected,
        "classes": classes,
        "per_class_accuracy": [None if a is None else round(a, 6) for a in scores["per_class"]],
        "classifier_test_accuracy": own["test_accuracy"],
        "classifier_test_images": own["test_images"],
        "classifier_test_split": own["test_split"],
        "sampler": exp["sampling"]["sampler"],
        "sampler_steps": exp["sampling"]["steps"],
        "guidance_scale": exp["sampling"]["guidance_scale"],
        "training_steps": exp["training"]["steps"],
        "provenance": record(settings, inputs, settings_hash(settings)),
    }
    write_json(metrics_path, metrics)
    log(
        f"{exp['name']}, guidance {exp['sampling']['guidance_scale']}: {scores['accuracy']:.2%} of {expected} samples "
        f"labelled as their class by {name} (its own held-out accuracy {own['test_accuracy']:.2%})"
    )
    return metrics
