"""Evaluation stages: reference statistics, the small-sample FID floor, and the FID of an experiment.

FID follows clean-fid's "clean" mode with the Inception network of pytorch-fid/ADM (see `uvit.fid`).
FID is biased upward at small sample counts, so every FID we report sits next to its floor: the FID of the
same number of held-out real images against the same reference statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from uvit.config import settings_hash, stage_settings
from uvit.data import DataError, load_split, read_json
from uvit.fid import (
    InceptionFeatureExtractor,
    feature_statistics,
    frechet_distance,
    load_statistics,
    read_image_folder,
    save_statistics,
)
from uvit.provenance import dvc_md5, record, write_json

FEATURE_NETWORK = "Inception-v3 pool3 (inception-2015-12-05), clean-fid 'clean' resize"


def reference_statistics(
    data_dir: Path, split: str, count: int, out: Path, precision: str = "fp32", log=print
) -> None:
    """mu and sigma of the first `count` prepared images of a split (the FID reference, computed once)."""
    images, _ = load_split(data_dir / split, limit=count)
    features = InceptionFeatureExtractor(precision=precision).features(
        images, progress=True, desc="reference"
    )
    mu, sigma = feature_statistics(features)
    save_statistics(out, mu, sigma, count=np.int64(count))
    log(f"reference statistics of {count} {split} images -> {out}")


def fid_floor(
    data_dir: Path, split: str, count: int, reference: Path, out: Path, precision: str = "fp32", log=print
) -> None:
    """FID of `count` held-out real images against the reference: what a perfect model would score."""
    images, _ = load_split(data_dir / split, limit=count)
    features = InceptionFeatureExtractor(precision=precision).features(images, progress=True, desc="floor")
    fid = frechet_distance(*feature_statistics(features), *load_statistics(reference))
    write_json(
        out,
        {
            "fid_floor": round(fid, 4),
            "count": count,
            "split": split,
            "inputs": {
                "dataset": {"path": str(data_dir), "md5": dvc_md5(data_dir)},
                "reference": {"path": str(reference), "md5": dvc_md5(reference)},
            },
        },
    )
    log(f"FID floor ({count} {split} images): {fid:.3f}")


def reference_label(ev: dict) -> str:
    """The reference statistics as the tables name them."""
    if ev["reference_npz"]:
        return f"{Path(ev['reference_npz']).name} (given; its resize protocol may differ from clean-fid's)"
    return f"{ev['reference_images']} {ev['reference_split']}"


def fid_of_samples(
    exp: dict,
    inputs: dict[str, str],
    floor_path: Path | None,
    metrics_path: Path,
    pretrained: bool = False,
    log=print,
) -> dict:
    """FID of the experiment's sample folder, with its floor, protocol and provenance."""

    images = read_image_folder(inputs["samples"])
    expected = exp["sampling"]["num_samples"]
    if len(images) != expected:
        raise DataError(
            f"{inputs['samples']}: {len(images)} images, sampling.num_samples says {expected}; re-run sample"
        )
    extractor = InceptionFeatureExtractor(precision=exp["evaluation"]["feature_precision"])
    features = extractor.features(images, progress=True, desc=f"FID {exp['name']}")
    fid = frechet_distance(*feature_statistics(features), *load_statistics(inputs["reference"]))
    # Released weights scored against a given reference have no floor: it needs held-out real images.
    floor = read_json(Path(floor_path), "run `uvit fid-floor` again") if floor_path else {"fid_floor": None}
    settings = stage_settings(exp, "fid")
    metrics = {
        "experiment": exp["name"],
        "paper_row": exp["paper_row"],
        "scale": exp["scale"],
        "fid": round(fid, 4),
        "fid_floor": floor["fid_floor"],
        "num_samples": expected,
        "reference_images": exp["evaluation"]["reference_images"],
        "reference_split": exp["evaluation"]["reference_split"],
        "reference": reference_label(exp["evaluation"]),
        "feature_network": FEATURE_NETWORK,
        "feature_precision": exp["evaluation"]["feature_precision"],
        "resolution": int(images.shape[1]),
        "sampler": exp["sampling"]["sampler"],
        "sampler_steps": exp["sampling"]["steps"],
        "guidance_scale": exp["sampling"]["guidance_scale"],
        "training_steps": exp["training"]["steps"],
        "weights": "authors' release (evaluation only)" if pretrained else "trained by this pipeline",
        "model": exp["model"]["name"]
        or f"U-ViT (D={exp['model']['embed_dim']}, depth={exp['model']['depth']}, p={exp['model']['patch_size']})",
        "provenance": record(
            settings,
            {**inputs, **({"floor": str(floor_path)} if floor_path else {})},
            settings_hash(settings),
        ),
    }
    write_json(metrics_path, metrics)
    floor_text = "no floor" if floor["fid_floor"] is None else f"floor {floor['fid_floor']:.3f}"
    log(f"{exp['name']}: FID {fid:.3f} ({floor_text}, {expected} samples)")
    return metrics
