"""The evaluation-only target: the authors' released EMA weights -> the paper's sampler -> FID, no training.

The test writes a small U-ViT's weights in the authors' nnet_ema.pth layout (a plain state_dict with their
parameter names) and runs `metrics/<experiment>/pretrained_fid.json` through the DAG in a project copy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import CORES, job_rules, load_test_params, make_project_copy, run, set_params

from uvit.checkpoints import CheckpointError
from uvit.config import load_params, resolve_experiment
from uvit.model import model_for

pytestmark = pytest.mark.slow

AUTHORS_KEYS = ("patch_embed.proj.weight", "pos_embed", "in_blocks.0.attn.qkv.weight", "mid_block.mlp.fc1.weight",
                "out_blocks.0.skip_linear.weight", "norm.weight", "decoder_pred.weight", "final_layer.weight")  # fmt: skip


def test_authors_weights_evaluate_without_training_or_the_dataset(tmp_path):
    """With the reference statistics given (as ADM's are for the ImageNet rows), nothing is prepared: classes
    and image shape are read off the weights, and there is no floor (it needs held-out real images)."""
    project = make_project_copy(tmp_path / "project", targets=["smoke_pixel"])
    weights = project / "weights" / "nnet_ema.pth"
    weights.parent.mkdir()
    exp = resolve_experiment(load_params(project / "params.yaml"), "smoke_pixel")
    torch.manual_seed(0)
    state = model_for(exp, (1, 16, 16), classes=10).state_dict()
    assert set(AUTHORS_KEYS) <= set(state)
    torch.save(state, weights)
    rng = np.random.default_rng(0)
    np.savez(weights.parent / "given_ref.npz", mu=rng.normal(size=2048), sigma=np.eye(2048))
    # Like the authors' fid_stats: mu and sigma only, so FID alone (no sFID, precision, recall or KID).
    given = {
        "pretrained_weights": "weights/nnet_ema.pth",
        "reference_npz": "weights/given_ref.npz",
        "metrics": [],
    }
    few = {"num_samples": 8, "batch_size": 8}  # few images through Inception: the test is about the plan

    def evaluate_only(p):
        p["experiments"]["smoke_pixel"]["evaluation"].update(given)
        p["experiments"]["smoke_pixel"]["sampling"].update(few)

    set_params(project, evaluate_only)
    out = run(
        ["snakemake", "--cores", CORES, "metrics/smoke_pixel/pretrained_fid.json"], project, timeout=900
    )
    ran = job_rules(out.stdout + out.stderr)
    assert "prepare_data" not in ran and "fid_floor" not in ran and "import_reference" in ran
    metrics = json.loads((project / "metrics/smoke_pixel/pretrained_fid.json").read_text())
    assert metrics["weights"] == "authors' release (evaluation only)" and metrics["fid"] > 0
    assert metrics["fid_protocol"] == "clean" and "sfid" not in metrics
    assert metrics["num_samples"] == 8 and metrics["sampler"] == exp["sampling"]["sampler"]
    assert metrics["provenance"]["inputs"]["checkpoint"]["path"] == "data/external/weights/smoke_pixel.pth"
    assert (project / "data/external/weights/smoke_pixel.pth").read_bytes() == weights.read_bytes()
    assert not (project / "results/smoke_pixel/nnet_ema.pth").exists()  # nothing was trained
    assert len(list((project / "results/smoke_pixel/pretrained_samples").glob("*.png"))) == 8
    assert not (project / "data/prepared").exists() and metrics["fid_floor"] is None
    assert "dataset" not in metrics["provenance"]["inputs"] and "floor" not in metrics["provenance"]["inputs"]


class Payload:
    """An arbitrary pickled object: weights-only loading must refuse it."""


def test_weights_carrying_objects_are_refused(tmp_path):
    from uvit.sampling import import_weights

    params = load_test_params()
    exp = resolve_experiment(params, "smoke_pixel")
    bad = tmp_path / "nnet_ema.pth"
    torch.save({"w": torch.zeros(1), "note": Payload()}, bad)
    with pytest.raises(CheckpointError, match=r"nnet_ema.pth: refused by the weights-only loader"):
        import_weights(bad, tmp_path / "out.pth", params, exp)
    with pytest.raises(FileNotFoundError, match=r"evaluation\.pretrained_weights"):
        import_weights(tmp_path / "missing.pth", tmp_path / "out.pth", params, exp)
    assert not (tmp_path / "out.pth").exists()
