"""Training-loop behaviour that mutation testing (benchmarks/mutation.py) found unchecked: a latent experiment
trained through train(), the logged loss, text conditions, the batch's dependence on the step's generator, and
the multi-process bookkeeping (rank share, process group, all-reduce mean, barriers, rank-0-only writes),
checked in one process with the collective operations replaced by those of two ranks holding equal values.

Expected values come from the definitions (the global batch split in equal consecutive shares, the mean of
the micro-batch losses, the authors' scaled posterior samples), never from our output. Tiny tensors: each test
takes seconds on two CPU cores.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import test_recipe
import torch
from conftest import edited
from test_recipe import CLASSES, COUNT, experiment, flipped_rows, write_latents

import uvit.training as training
from uvit.conditioning import Conditions
from uvit.errors import UserError
from uvit.fileio import atomic_write_bytes
from uvit.seeds import batch_indices
from uvit.shards import load_split, write_manifest, write_shards
from uvit.training import LatentData, PixelData, Processes, train

SCALE = 0.25


split = test_recipe.split  # the fixture: test_recipe's prepared split (random 8x8 RGB images, labels i mod 5)


def latent_dataset(out: Path, count: int = COUNT, channels: int = 2, size: int = 4) -> None:
    """Posterior moments whose mean codes (image i, version v) as 2 i + v + 1 and whose std is ~0."""
    code = torch.arange(2 * count, dtype=torch.float64).view(count, 2) + 1
    mean = code.view(count, 2, 1, 1, 1).expand(count, 2, channels, size, size)
    write_latents(
        out, torch.cat([mean, torch.full_like(mean, -100.0)], 2), torch.arange(count) % CLASSES, SCALE
    )


def recording_loss(monkeypatch) -> list[dict]:
    """Replace the loss of train() by the real one, recording its inputs and value per call."""
    seen = []
    real = training.noise_prediction_loss

    def record(net, schedule, x0, **kwargs):
        loss = real(net, schedule, x0, **kwargs)
        seen.append({"x0": x0.clone(), "cond": kwargs.get("cond"), "loss": loss.item()})
        return loss

    monkeypatch.setattr(training, "noise_prediction_loss", record)
    return seen


LOOP = {"checkpoint_every": 1, "keep_checkpoints": 5, "log_every": 1, "keep_steps": [], "sample_every": 0}


def test_a_latent_experiment_trains_on_scaled_posterior_samples_and_logs_the_mean_micro_batch_loss(
    split, tmp_path, monkeypatch
):
    """train() of a latent experiment reads the stored moments (not the pixels): every x0 is scale * the mean of
    image i or of its flip, for the step's batch indices; the logged loss of a step is the mean of its
    micro-batch losses (grad_accumulation regroups one batch), rounded to 6 decimals."""
    latent_dataset(tmp_path / "z")
    steps, batch = 3, 8
    exp = experiment(
        "smoke_latent",
        training={"steps": steps, "batch_size": batch, "grad_accumulation": 2, "hflip": True,
                  "precision": "fp32", "cond_drop_prob": 0.0} | LOOP,
    )  # fmt: skip
    seen = recording_loss(monkeypatch)
    metrics = train(exp, split, tmp_path / "run", latent_dir=tmp_path / "z", log=lambda m: None)
    assert len(seen) == 2 * steps
    history = [json.loads(line) for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3]
    for step in range(steps):
        first, second = seen[2 * step], seen[2 * step + 1]
        index = batch_indices(step, batch, COUNT, exp["training"]["seed"])
        x0 = torch.cat([first["x0"], second["x0"]])
        assert x0.shape == (batch, 2, 4, 4)
        code = (x0.double() / SCALE).round().long()
        assert (code == code[:, :1, :1, :1]).all()
        version = code[:, 0, 0, 0] - 1 - 2 * index
        assert set(version.tolist()) <= {0, 1}
        assert torch.equal(torch.cat([first["cond"], second["cond"]]), index % CLASSES)
        assert history[step]["loss"] == pytest.approx((first["loss"] + second["loss"]) / 2, abs=1e-6)
        assert history[step]["loss"] > 0
    assert metrics["final_loss"] == history[-1]["loss"]


def test_latent_and_pixel_batches_depend_on_the_steps_generator_only(split, tmp_path):
    """Resume determinism: the flips and posterior noise of a batch come from the step's generator."""
    latent_dataset(tmp_path, channels=2, size=2)
    write_latents(
        tmp_path / "noisy",
        torch.cat([torch.zeros(COUNT, 2, 2, 2, 2), torch.zeros(COUNT, 2, 2, 2, 2)], 2),  # std 1
        torch.zeros(COUNT, dtype=torch.long),
        SCALE,
    )
    index = torch.arange(COUNT)
    for data in (LatentData(tmp_path, True), LatentData(tmp_path / "noisy", True), PixelData(split, True)):
        a = data.batch(index, torch.Generator().manual_seed(3))[0]
        torch.manual_seed(123)  # the global generator must not matter
        b = data.batch(index, torch.Generator().manual_seed(3))[0]
        assert torch.equal(a, b)
        assert not torch.equal(a, data.batch(index, torch.Generator().manual_seed(4))[0])


# --------------------------------------------------------------------------------------------------------
# Two ranks, simulated in one process
# --------------------------------------------------------------------------------------------------------


class FakeDDP(torch.nn.Module):
    """DistributedDataParallel's interface without a process group; records how it was built."""

    built: ClassVar[list[dict]] = []

    def __init__(self, module, **kwargs):
        super().__init__()
        self.module = module
        FakeDDP.built.append(kwargs)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        yield


def two_ranks(monkeypatch, rank: int, world: int = 2) -> dict:
    """Rank `rank` of `world` on the CPU; all_reduce sums `world` equal values; calls are counted."""
    calls = {"init": [], "barrier": 0, "all_reduce": 0}
    monkeypatch.setattr(training, "placement", lambda: (rank, world, torch.device("cpu")))
    monkeypatch.setattr(training.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(training.dist, "init_process_group", lambda backend: calls["init"].append(backend))

    def barrier():
        calls["barrier"] += 1

    def all_reduce(value):
        calls["all_reduce"] += 1
        value.mul_(world)

    monkeypatch.setattr(training.dist, "barrier", barrier)
    monkeypatch.setattr(training.dist, "all_reduce", all_reduce)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", FakeDDP)
    FakeDDP.built = []
    return calls


def test_processes_join_a_gloo_group_share_the_batch_and_average(monkeypatch):
    calls = two_ranks(monkeypatch, rank=1, world=3)
    processes = Processes()
    assert calls["init"] == ["gloo"] and not processes.main
    assert processes.share(12) == slice(4, 8)
    with pytest.raises(UserError, match=r"training.batch_size: 10 is not divisible by 3 processes"):
        processes.share(10)
    assert processes.mean(torch.tensor(1.5)).item() == 1.5  # three ranks of 1.5
    processes.barrier()
    assert calls["barrier"] == 1 and calls["all_reduce"] == 1

    monkeypatch.setattr(training, "placement", lambda: (0, 1, torch.device("cpu")))
    single = Processes()
    assert single.main and single.share(10) == slice(0, 10)
    single.barrier()
    assert single.mean(torch.tensor(2.0)).item() == 2.0
    assert calls == {"init": ["gloo"], "barrier": 1, "all_reduce": 1}  # one process: no collectives


@pytest.mark.parametrize("rank", [0, 1])
def test_each_rank_trains_on_its_half_of_the_global_batch_and_only_rank_0_writes(
    rank, split, tmp_path, monkeypatch
):
    steps, batch = 2, 8
    calls = two_ranks(monkeypatch, rank)
    exp = experiment(
        "smoke_pixel",
        training={"steps": steps, "batch_size": batch, "hflip": True, "precision": "fp32"} | LOOP,
    )
    seen = recording_loss(monkeypatch)
    logs = []
    metrics = train(exp, split, tmp_path, log=logs.append)
    assert FakeDDP.built == [{"device_ids": None}]  # CPU: no device ids
    assert calls["init"] == ["gloo"] and metrics["processes"] == 2
    assert calls["barrier"] == steps + 1  # after each checkpoint, and at the end
    assert calls["all_reduce"] == steps
    images, _ = load_split(split / "train")
    half = slice(rank * batch // 2, (rank + 1) * batch // 2)
    for step, record in enumerate(seen):
        index = batch_indices(step, batch, COUNT, exp["training"]["seed"])[half].numpy()
        flipped_rows(record["x0"], images[index])  # each row is its image or the image's mirror
    assert len(seen) == steps
    written = (tmp_path / "nnet.pth").exists(), (tmp_path / "loss.jsonl").exists()
    assert written == ((True, True) if rank == 0 else (False, False))
    assert bool(logs) == (rank == 0)
    if rank == 0:
        history = [json.loads(line) for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
        assert [h["loss"] for h in history] == pytest.approx([s["loss"] for s in seen], abs=1e-6)


# --------------------------------------------------------------------------------------------------------
# Text conditions
# --------------------------------------------------------------------------------------------------------


def text_contexts(out: Path, captions_per_image: list[int], tokens: int = 3, width: int = 4) -> None:
    """An encoded caption set in encode_caption_dataset's layout: caption row r is the constant r + 1."""
    rows = sum(captions_per_image)
    contexts = (np.arange(rows, dtype=np.float32) + 1).reshape(rows, 1, 1) * np.ones(
        (1, tokens, width), np.float32
    )
    image_index = np.repeat(np.arange(len(captions_per_image)), captions_per_image).astype(np.int64)
    shards = write_shards(out, {"contexts": contexts, "image_index": image_index}, 1000)
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((tokens, width), np.float32))
    null = buffer.getvalue()
    atomic_write_bytes(out / "null_context.npy", null)
    manifest = {
        "null_context": {"file": "null_context.npy", "md5": hashlib.md5(null).hexdigest()},
        "context_shape": [tokens, width],
        "captions": rows,
        "images": len(captions_per_image),
        "shards": shards,
    }
    write_manifest(out, manifest)


def test_text_conditions_are_captions_of_the_batch_images_or_the_null_context(tmp_path):
    per_image = [3, 1, 2, 4]
    text_contexts(tmp_path, per_image)
    first = np.cumsum([0, *per_image])
    exp = experiment("smoke_text", training={"cond_drop_prob": 0.0})
    with pytest.raises(UserError, match="encoded captions"):
        Conditions(exp, classes=1)
    conditions = Conditions(exp, classes=1, text_dir=tmp_path)
    assert torch.equal(conditions.null, torch.zeros(3, 4))
    index = torch.tensor([3, 0, 2, 1] * 50)
    cond = conditions.draw(index, torch.zeros(len(index), dtype=torch.long), torch.Generator().manual_seed(0))
    assert cond.shape == (len(index), 3, 4)
    row = cond[:, 0, 0].long() - 1
    for image in range(4):
        drawn = set(row[index == image].tolist())
        assert drawn == set(range(first[image], first[image + 1]))  # its own captions, each of them

    exp = edited(exp, "training", cond_drop_prob=0.5)
    cond = Conditions(exp, 1, tmp_path).draw(index, torch.zeros(len(index)), torch.Generator().manual_seed(1))
    dropped = (cond == 0).flatten(1).all(1)
    assert 50 < int(dropped.sum()) < 150  # 100 expected, 5 standard deviations ~ 35


# --------------------------------------------------------------------------------------------------------
# Weights files: each refusal says which file and why
# --------------------------------------------------------------------------------------------------------


def test_weights_files_are_refused_with_the_file_and_the_reason(tmp_path):
    from uvit.checkpoints import CheckpointError, check_state_dict, read_torch_file

    (tmp_path / "noise.pth").write_bytes(b"\x80\x02}q\x00." + bytes(range(64)))
    with pytest.raises(CheckpointError, match=r"noise\.pth: not a torch file; expected the weights"):
        read_torch_file(tmp_path / "noise.pth", "the weights")
    model = torch.nn.Linear(2, 3)
    state = model.state_dict() | {"extra.weight": torch.zeros(1)}
    with pytest.raises(
        CheckpointError, match=r"^w\.pth: 'extra\.weight' is not in the model of smoke_pixel; give"
    ):
        check_state_dict(Path("w.pth"), state, model, "smoke_pixel")
    with pytest.raises(CheckpointError, match=r"^w\.pth: not a state_dict of tensors; give the EMA weights"):
        check_state_dict(Path("w.pth"), {"weight": [1.0]}, model, "smoke_pixel")


def test_resume_takes_the_newest_checkpoint_at_or_before_the_last_step(tmp_path):
    """A run asked for fewer steps than an earlier one resumes from the newest checkpoint it can use."""
    from uvit.checkpoints import save_checkpoint
    from uvit.training import CHECKPOINT_KEYS, scan_checkpoints

    paths = [tmp_path / f"ckpt-{step:07d}.pt" for step in (5, 10, 15)]
    for step, path in zip((5, 10, 15), paths, strict=True):
        state = dict.fromkeys(CHECKPOINT_KEYS, torch.zeros(1)) | {"step": step, "trajectory_hash": "h"}
        save_checkpoint(path, state)
    (tmp_path / "ckpt-latest.pt").write_bytes(b"")  # not a step: ignored
    logs = []
    state, foreign = scan_checkpoints(tmp_path, "h", 12, logs.append)
    assert state["step"] == 10 and foreign == ()
    assert logs == [f"resuming from {paths[1]} (step 10)"]
    assert scan_checkpoints(tmp_path, "h", 15, logs.append)[0]["step"] == 15
    logs = []
    assert scan_checkpoints(tmp_path, "other", 15, logs.append) == (None, tuple(reversed(paths)))
    assert logs == [f"ignoring {path}: made with other training settings" for path in reversed(paths)]


def test_an_fp16_run_resumes_with_its_gradient_scaler_state(split, tmp_path):
    """fp16 training (pre-Ampere GPUs) keeps the gradient scaler's scale in each checkpoint and loads it back."""
    exp = experiment("smoke_pixel", training={"steps": 2, "batch_size": 8, "precision": "fp16"} | LOOP)
    train(exp, split, tmp_path, log=lambda m: None)
    exp = edited(exp, "training", steps=3)
    logs = []
    train(exp, split, tmp_path, log=logs.append)
    assert any("resuming from" in m and "(step 2)" in m for m in logs)
    state = torch.load(tmp_path / "checkpoints" / "ckpt-0000003.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0 and state["step"] == 3


def test_checkpoints_of_other_settings_never_displace_the_new_runs(split, tmp_path):
    """A run of new settings beside an older, longer run's checkpoints (steps 2, 4, 6) keeps its own: the older
    ones go at its first checkpoint and never count towards keep_checkpoints (counted by step number, they would
    delete each new checkpoint as it is written, and a kill would lose the new run's progress). Its checkpoint
    of step 2 replaces the old one of that name and stays."""
    old = experiment("smoke_pixel", training={"steps": 6, "batch_size": 8} | LOOP | {"checkpoint_every": 2})
    train(old, split, tmp_path, log=lambda m: None)
    ckpt_dir = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [f"ckpt-000000{s}.pt" for s in (2, 4, 6)]
    new = edited(old, "training", lr=old["training"]["lr"] / 2, steps=2, keep_checkpoints=2)
    logs = []
    train(new, split, tmp_path, log=logs.append)
    assert f"3 checkpoint(s) of other training settings in {ckpt_dir}: removed at this run's first" in logs
    assert [p.name for p in ckpt_dir.iterdir()] == ["ckpt-0000002.pt"]
    state = torch.load(ckpt_dir / "ckpt-0000002.pt", weights_only=True)
    assert state["trajectory_hash"] == training.trajectory_hash(new) != training.trajectory_hash(old)


def test_condition_dropout_draws_from_the_step_generator_only():
    """The null-condition mask comes from the step's generator (the step seed decides the batch): the global RNG
    state does not change it, another step seed does."""
    exp = experiment("smoke_latent", training={"cond_drop_prob": 0.5})
    labels, index = torch.arange(1000) % 10, torch.arange(1000)
    draws = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        draws.append(Conditions(exp, classes=10).draw(index, labels, torch.Generator().manual_seed(0)))
    assert torch.equal(draws[0], draws[1]) and (draws[0] == 10).any()
    other = Conditions(exp, classes=10).draw(index, labels, torch.Generator().manual_seed(1))
    assert not torch.equal(other, draws[0])


def test_a_weight_of_another_shape_is_refused_with_both_shapes():
    from uvit.checkpoints import CheckpointError, check_state_dict

    model = torch.nn.Linear(2, 3)
    state = model.state_dict() | {"weight": torch.zeros(3, 4)}
    with pytest.raises(
        CheckpointError,
        match=r"^w\.pth: weight has shape \[3, 4\], the model of smoke_pixel expects \[3, 2\]; give the EMA",
    ):
        check_state_dict(Path("w.pth"), state, model, "smoke_pixel")


def test_resume_skips_empty_and_truncated_checkpoints_naming_each(tmp_path):
    """What a kill during a (non-atomic) copy leaves: an empty file (torch raises EOFError) and a cut zip; each
    is skipped with the reason and resume falls back to the newest whole checkpoint."""
    from uvit.checkpoints import save_checkpoint
    from uvit.training import CHECKPOINT_KEYS, scan_checkpoints

    for step in (5, 10):
        state = dict.fromkeys(CHECKPOINT_KEYS, torch.zeros(64)) | {"step": step, "trajectory_hash": "h"}
        save_checkpoint(tmp_path / f"ckpt-{step:07d}.pt", state)
    whole = (tmp_path / "ckpt-0000010.pt").read_bytes()
    (tmp_path / "ckpt-0000015.pt").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "ckpt-0000020.pt").write_bytes(b"")
    logs = []
    assert scan_checkpoints(tmp_path, "h", 20, logs.append)[0]["step"] == 10
    assert logs == [
        f"skipping {tmp_path / 'ckpt-0000020.pt'}: truncated or damaged; expected a training checkpoint",
        f"skipping {tmp_path / 'ckpt-0000015.pt'}: truncated or damaged; expected a training checkpoint",
        f"resuming from {tmp_path / 'ckpt-0000010.pt'} (step 10)",
    ]


def test_a_text_model_reads_as_many_context_tokens_as_its_text_encoder_gives():
    """model_for passes the encoder's token count to the model: 5 tokens of width 12 -> 5 context tokens in the
    model's extra tokens (the time token and the context), not CLIP's 77."""
    from uvit.model import model_for

    exp = experiment("smoke_pixel") | {"condition": "text"}
    net = model_for(exp, (3, 8, 8), classes=0, context_shape=(5, 12))
    assert net.context_embed.in_features == 12
    assert net.extras == 1 + 5
