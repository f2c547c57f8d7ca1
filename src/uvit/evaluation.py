"""Evaluation stages: reference statistics, the small-sample FID floor, and the FID of an experiment.

FID follows clean-fid's "clean" mode with the Inception network of pytorch-fid/ADM (see `uvit.fid`).
FID is biased upward at small sample counts, so every FID we report sits next to its floor: the FID of the
same number of held-out real images against the same reference statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from uvit.config import settings_hash, stage_settings
from uvit.fid import (
    INCEPTION_SHA256,
    PROTOCOL_NAMES,
    InceptionFeatureExtractor,
    frechet_distance_to_features,
    load_reference,
    read_image_folder,
    recorded_protocol,
    reference_arrays,
    save_statistics,
)
from uvit.fileio import DataError, read_json
from uvit.metrics import kernel_inception_distance, precision_recall
from uvit.provenance import dvc_md5, record, write_json
from uvit.shards import load_split

FEATURE_NETWORK = "Inception-v3 (inception-2015-12-05, sha256 " + INCEPTION_SHA256[:12] + ")"
# Inception Score needs the network's 1008-way output layer, which the offline weights file does not ship.
IS_NOT_COMPUTED = "not computed: the offline Inception weights have no 1008-way output layer"


def feature_network(protocol_name: str) -> str:
    return f"{FEATURE_NETWORK}, {PROTOCOL_NAMES[protocol_name]} resize"


def reference_statistics(
    data_dir: Path,
    split: str,
    count: int,
    out: Path,
    precision: str = "fp32",
    protocol_name: str = "clean",
    log=print,
) -> None:
    """The FID reference of the first `count` prepared images of a split, computed once per protocol: mu and
    sigma, ADM's spatial mu_s and sigma_s, and the pool features (precision, recall, KID)."""
    images, _ = load_split(data_dir / split, limit=count)
    extractor = InceptionFeatureExtractor(precision=precision, protocol_name=protocol_name)
    arrays = reference_arrays(extractor.all_features(images, progress=True, desc="reference"), protocol_name)
    save_statistics(out, count=np.int64(count), **arrays)
    log(f"reference statistics of {count} {split} images ({protocol_name}) -> {out}")


def sample_metrics(features: dict, reference: dict, metrics: list[str]) -> dict[str, float]:
    """FID and the requested other metrics of one feature pass against a reference's arrays (ADM's definitions,
    `uvit.metrics`), as plain numbers."""
    out = {"fid": frechet_distance_to_features(features["pool"], reference["mu"], reference["sigma"])}
    if "sfid" in metrics:
        out["sfid"] = frechet_distance_to_features(
            features["spatial"], reference["mu_s"], reference["sigma_s"]
        )
    if "precision" in metrics or "recall" in metrics:
        out["precision"], out["recall"] = precision_recall(reference["features"], features["pool"])
    if "kid" in metrics:
        out["kid"] = kernel_inception_distance(reference["features"], features["pool"])
    return {
        k: round(v, 4 if k in ("fid", "sfid") else 6) for k, v in out.items() if k == "fid" or k in metrics
    }


def fid_floor(
    data_dir: Path, split: str, count: int, reference: Path, out: Path, precision: str = "fp32", log=print
) -> None:
    """FID of `count` held-out real images against the reference (with its protocol): what a perfect model would
    score."""
    images, _ = load_split(data_dir / split, limit=count)
    protocol_name = recorded_protocol(reference) or "clean"
    ref = load_reference(reference, ("fid",), protocol_name=protocol_name)
    extractor = InceptionFeatureExtractor(precision=precision, protocol_name=protocol_name)
    features = extractor.all_features(images, progress=True, desc="floor")
    fid = sample_metrics(features, ref, [])["fid"]
    write_json(
        out,
        {
            "fid_floor": round(fid, 4),
            "fid_protocol": protocol_name,
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
        return f"{Path(ev['reference_npz']).name} (given, {ev['fid_protocol']})"
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
    ev = exp["evaluation"]
    reference = load_reference(inputs["reference"], ["fid", *ev["metrics"]], protocol_name=ev["fid_protocol"])
    extractor = InceptionFeatureExtractor(precision=ev["feature_precision"], protocol_name=ev["fid_protocol"])
    features = extractor.all_features(images, progress=True, desc=f"FID {exp['name']}")
    scores = sample_metrics(features, reference, ev["metrics"])
    fid = scores["fid"]
    # Released weights scored against a given reference have no floor: it needs held-out real images.
    floor = read_json(Path(floor_path), "run `uvit fid-floor` again") if floor_path else {"fid_floor": None}
    settings = stage_settings(exp, "fid")
    metrics = {
        "experiment": exp["name"],
        "paper_row": exp["paper_row"],
        "scale": exp["scale"],
        "fid": round(fid, 4),
        **{k: v for k, v in scores.items() if k != "fid"},
        "inception_score": None,
        "inception_score_note": IS_NOT_COMPUTED,
        "fid_protocol": ev["fid_protocol"],
        "fid_floor": floor["fid_floor"],
        "num_samples": expected,
        "reference_images": exp["evaluation"]["reference_images"],
        "reference_split": exp["evaluation"]["reference_split"],
        "reference": reference_label(exp["evaluation"]),
        "feature_network": feature_network(ev["fid_protocol"]),
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
    others = ", ".join(f"{k} {v}" for k, v in scores.items() if k != "fid")
    log(
        f"{exp['name']}: FID {fid:.3f} ({floor_text}, {expected} samples, {ev['fid_protocol']}){', ' + others if others else ''}"
    )
    return metrics
