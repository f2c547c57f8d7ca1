"""The training loop: exact resume, atomic checkpoints, weights-only loading, non-finite loss guard."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from uvit.config import load_params, resolve_experiment
from uvit.data import prepare_dataset
from uvit.training import NonFiniteLossError, batch_indices, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    prepare_dataset({"source": "digits", "resolution": 16, "shard_size": 1000}, out)
    return out


def smoke_experiment(steps: int, **training) -> dict:
    exp = resolve_experiment(load_params(ROOT / "params.yaml"), "smoke_pixel")
    exp = copy.deepcopy(exp)
    exp["training"].update(steps=steps, checkpoint_every=5, keep_checkpoints=2, log_every=5, **training)
    return exp


def test_batches_cover_each_epoch_once():
    seen = torch.cat([batch_indices(step, 7, 20, seed=3) for step in range(20)])  # 140 = 7 epochs of 20
    for epoch in range(7):
        assert sorted(seen[epoch * 20 : (epoch + 1) * 20].tolist()) == list(range(20))


def test_resumed_run_is_bitwise_identical_to_an_uninterrupted_one(digits, tmp_path):
    train(smoke_experiment(15), digits, tmp_path / "straight", log=lambda m: None)
    train(smoke_experiment(10), digits, tmp_path / "resumed", log=lambda m: None)  # stops at step 10
    logs = []
    train(smoke_experiment(15), digits, tmp_path / "resumed", log=logs.append)  # resumes from step 10
    assert any("resuming from" in m and "step 10" in m for m in logs)
    for name in ("nnet.pth", "nnet_ema.pth", "loss.jsonl"):
        assert (tmp_path / "straight" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == [
        "ckpt-0000010.pt",
        "ckpt-0000015.pt",
    ]


def test_checkpoints_of_other_settings_are_not_resumed(digits, tmp_path):
    train(smoke_experiment(5), digits, tmp_path, log=lambda m: None)
    logs = []
    train(smoke_experiment(5, lr=1e-3), digits, tmp_path, log=logs.append)
    assert any("made with other training settings" in m for m in logs)


class Payload:
    """An arbitrary object: a checkpoint carrying one must not be unpickled."""


def test_a_checkpoint_carrying_a_pickled_object_is_refused(digits, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    torch.save({"step": 5, "payload": Payload()}, tmp_path / "checkpoints" / "ckpt-0000005.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        train(smoke_experiment(5), digits, tmp_path, log=lambda m: None)


def test_non_finite_loss_names_step_and_checkpoint(digits, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 1; last good checkpoint: none"):
        train(smoke_experiment(3, lr=float("inf")), digits, tmp_path, log=lambda m: None)
