"""The training loop: exact resume, atomic checkpoints, weights-only loading, non-finite loss guard."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import load_test_params, project_params, record

from uvit.config import load_params, resolve_experiment
from uvit.data import prepare_dataset
from uvit.precision import cpu_flags, resolve_precision
from uvit.seeds import batch_indices
from uvit.training import NonFiniteLossError, snapshot_path, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    prepare_dataset({"source": "digits", "resolution": 16, "shard_size": 1000}, out)
    return out


def smoke_experiment(steps: int, top: dict | None = None, **training) -> dict:
    """smoke_pixel with `steps` and other training keys, top-level keys replaced by `top`."""
    exp = copy.deepcopy(resolve_experiment(load_test_params(), "smoke_pixel")) | (top or {})
    loop = {"steps": steps, "checkpoint_every": 5, "keep_checkpoints": 2, "log_every": 5, "keep_steps": []}
    exp["training"].update(loop | training)
    return record(exp)


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


def test_data_loader_workers_give_the_same_run_as_the_main_process(digits, tmp_path):
    """Batches read by two DataLoader worker processes (as on a GPU machine) are those of the main process:
    each step's batch and randomness come from its seed alone, whichever process draws them."""
    for run, workers in (("main", "auto"), ("workers", 2)):
        exp = smoke_experiment(
            6, {"condition": "class"}, hflip=True, cond_drop_prob=0.2, data_workers=workers
        )
        train(exp, digits, tmp_path / run, log=lambda m: None)
    for name in ("nnet.pth", "nnet_ema.pth", "loss.jsonl"):
        assert (tmp_path / "main" / name).read_bytes() == (tmp_path / "workers" / name).read_bytes(), name


def test_losses_are_read_back_only_at_steps_that_log_save_or_preview(digits, tmp_path, monkeypatch):
    """No host sync in the other steps (a GPU runs ahead): 10 steps, log every 5, checkpoint every 5, read back
    twice, five losses each, and the logged loss is the logging step's own."""
    import uvit.training as training

    reads = []
    real = training.check_losses

    def counted(unread, *args):
        reads.append([step for step, _ in unread])
        return real(unread, *args)

    monkeypatch.setattr(training, "check_losses", counted)
    train(smoke_experiment(10), digits, tmp_path, log=lambda m: None)
    assert reads == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    logged = [json.loads(line) for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logged] == [5, 10]


def test_compiled_training_takes_the_same_steps_as_eager(digits, tmp_path, monkeypatch):
    """training.compile: true wraps the network in torch.compile (here with the eager backend, which traces
    without generating code; the inductor run is benchmarks/gpu_check.py's): the same weights as eager."""
    from uvit.training import compile_enabled

    compiled = []
    real = torch.compile

    def eager_backend(module, **kwargs):
        compiled.append(type(module).__name__)
        return real(module, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", eager_backend)
    train(smoke_experiment(3, compile=True), digits, tmp_path / "compiled", log=lambda m: None)
    train(smoke_experiment(3, compile=False), digits, tmp_path / "eager", log=lambda m: None)
    assert compiled == ["UViT"]
    for name in ("nnet.pth", "nnet_ema.pth"):
        compiled_state = torch.load(tmp_path / "compiled" / name, weights_only=True)
        eager_state = torch.load(tmp_path / "eager" / name, weights_only=True)
        assert compiled_state.keys() == eager_state.keys()  # no _orig_mod. prefixes
        for key, value in eager_state.items():
            torch.testing.assert_close(compiled_state[key], value, rtol=1e-5, atol=1e-6)
    assert compile_enabled("auto", torch.device("cuda", 0)) and not compile_enabled(
        "auto", torch.device("cpu")
    )


def test_data_workers_follow_the_device(monkeypatch):
    from uvit.training import data_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert data_workers("auto", torch.device("cpu")) == 0
    assert (
        data_workers("auto", torch.device("cuda", 3)) == 1
    )  # 16 CPUs over 8 GPU processes, one for the step
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert data_workers("auto", torch.device("cuda", 0)) == 4
    assert data_workers(3, torch.device("cpu")) == 3


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
    logs = []
    train(smoke_experiment(5), digits, tmp_path, log=logs.append)  # trains from step 0: never unpickled
    assert any("ckpt-0000005.pt: refused by the weights-only loader" in m for m in logs)
    assert not any("resuming" in m for m in logs)


def test_a_truncated_newest_checkpoint_is_skipped_for_an_older_intact_one(digits, tmp_path):
    exp = smoke_experiment(15, keep_checkpoints=3, precision="fp32")
    train(exp, digits, tmp_path / "straight", log=lambda m: None)
    train(exp, digits, tmp_path / "cut", log=lambda m: None)
    newest = tmp_path / "cut" / "checkpoints" / "ckpt-0000015.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    logs = []
    train(exp, digits, tmp_path / "cut", log=logs.append)
    assert any(m.startswith("skipping") and "ckpt-0000015.pt: truncated or damaged" in m for m in logs)
    assert any("resuming from" in m and "step 10" in m for m in logs)
    final = "nnet_ema.pth"
    assert (tmp_path / "cut" / final).read_bytes() == (tmp_path / "straight" / final).read_bytes()


def test_non_finite_loss_names_step_and_checkpoint(digits, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 1; last good checkpoint: none"):
        train(smoke_experiment(3, lr=float("inf")), digits, tmp_path, log=lambda m: None)


def test_gradient_accumulation_takes_the_same_step(digits, tmp_path):
    train(smoke_experiment(3, precision="fp32"), digits, tmp_path / "one", log=lambda m: None)
    train(
        smoke_experiment(3, precision="fp32", grad_accumulation=4),
        digits,
        tmp_path / "four",
        log=lambda m: None,
    )
    one = torch.load(tmp_path / "one" / "nnet.pth", weights_only=True)
    four = torch.load(tmp_path / "four" / "nnet.pth", weights_only=True)
    for name in one:
        torch.testing.assert_close(four[name], one[name], atol=2e-6, rtol=1e-5, msg=name)


def test_gradient_clipping_bounds_the_gradient_norm(digits, tmp_path):
    """After one step Adam's second moment is (1 - beta2) g^2, so its sum is (1 - beta2) |g|^2: clipping at
    1e-6 must bound it by (1 - beta2) 1e-12; unclipped it is far larger."""
    beta2 = 0.999

    def second_moment(run: str) -> float:
        state = torch.load(tmp_path / run / "checkpoints" / "ckpt-0000001.pt", weights_only=True)["optimizer"]
        return sum(s["exp_avg_sq"].sum().item() for s in state["state"].values())

    train(smoke_experiment(1, precision="fp32"), digits, tmp_path / "free", log=lambda m: None)
    train(
        smoke_experiment(1, precision="fp32", grad_clip=1e-6), digits, tmp_path / "clip", log=lambda m: None
    )
    assert second_moment("clip") <= (1 - beta2) * 1e-12 * 1.001
    assert second_moment("free") > 1e6 * second_moment("clip")


def test_fp16_with_gradient_scaler_trains(digits, tmp_path):
    metrics = train(smoke_experiment(4, precision="fp16"), digits, tmp_path, log=lambda m: None)
    assert math.isfinite(metrics["final_loss"])
    state = torch.load(tmp_path / "checkpoints" / "ckpt-0000004.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0


def test_keep_steps_survive_pruning_and_leave_ema_snapshots(digits, tmp_path):
    train(smoke_experiment(20, keep_steps=[5, 12]), digits, tmp_path, log=lambda m: None)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["ckpt-0000005.pt", "ckpt-0000012.pt", "ckpt-0000015.pt", "ckpt-0000020.pt"]
    for step in (5, 12):
        snapshot = torch.load(snapshot_path(tmp_path, step), weights_only=True)
        ckpt = torch.load(tmp_path / "checkpoints" / f"ckpt-{step:07d}.pt", weights_only=True)
        assert snapshot.keys() == ckpt["ema"].keys()
        assert all(torch.equal(snapshot[k], ckpt["ema"][k]) for k in snapshot)
    assert not torch.equal(
        torch.load(snapshot_path(tmp_path, 5), weights_only=True)["pos_embed"],
        torch.load(tmp_path / "nnet_ema.pth", weights_only=True)["pos_embed"],
    )


def test_a_keep_step_whose_checkpoint_was_pruned_is_named(digits, tmp_path):
    train(smoke_experiment(20), digits, tmp_path, log=lambda m: None)
    with pytest.raises(FileNotFoundError, match=r"keep_steps: no checkpoint of step 5 .* delete"):
        train(smoke_experiment(20, keep_steps=[5]), digits, tmp_path, log=lambda m: None)


def test_loss_log_is_written_at_every_logged_step_and_truncated_on_resume(digits, tmp_path, monkeypatch):
    import uvit.training as training

    snapshots = []
    real = training.write_loss_log
    monkeypatch.setattr(
        training,
        "write_loss_log",
        lambda out, history: (snapshots.append([h["step"] for h in history]), real(out, history)),
    )
    train(smoke_experiment(12, checkpoint_every=10, log_every=2), digits, tmp_path, log=lambda m: None)
    assert [s[-1] for s in snapshots[:6]] == [2, 4, 6, 8, 10, 12]
    # A run killed after logging step 12 but before checkpointing it: the resumed log restarts at step 10.
    (tmp_path / "loss.jsonl").write_text((tmp_path / "loss.jsonl").read_text() + '{"step": 99}\n')
    (tmp_path / "checkpoints" / "ckpt-0000012.pt").unlink()
    snapshots.clear()
    train(smoke_experiment(12, checkpoint_every=10, log_every=2), digits, tmp_path, log=lambda m: None)
    assert snapshots[0][-1] == 10
    steps = [json.loads(line)["step"] for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8, 10, 12]


def test_sample_grid_preview_runs_every_n_steps_on_the_ema(digits, tmp_path):
    calls = []
    train(
        smoke_experiment(10, sample_every=4),
        digits,
        tmp_path,
        log=lambda m: None,
        preview=lambda step, ema: calls.append((step, type(ema).__name__, ema.pos_embed.requires_grad)),
    )
    assert calls == [(4, "UViT", False), (8, "UViT", False)]


@pytest.mark.parametrize(
    ("requested", "device", "cuda_bf16", "cpu_bf16", "expected"),
    [
        ("auto", "cuda", True, False, "bf16"),  # Ampere and newer
        ("auto", "cuda", False, False, "fp16"),  # pre-Ampere: fp16 with the gradient scaler
        ("bf16", "cuda", False, False, "fp16"),
        ("fp32", "cuda", True, False, "fp32"),
        ("auto", "cpu", False, True, "bf16"),  # AVX512-BF16 / AMX / Arm BF16
        ("auto", "cpu", False, False, "fp32"),  # AVX2 only: bf16 would be emulated, ~25x slower
        ("bf16", "cpu", False, False, "bf16"),  # explicit: honoured (and warned about)
        ("fp32", "cpu", False, True, "fp32"),
    ],
)
def test_precision_follows_the_hardware(requested, device, cuda_bf16, cpu_bf16, expected):
    assert resolve_precision(requested, device, cuda_bf16=cuda_bf16, cpu_bf16=cpu_bf16) == expected


def test_native_bf16_is_read_from_the_cpu_flags():
    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    zen4 = "flags\t\t: avx2 avx512f avx512bw avx512_bf16\n"
    arm = "Features\t: fp asimd sve bf16 i8mm\n"
    assert not cpu_flags(avx2) & {"avx512_bf16", "amx_bf16", "bf16"}
    assert "avx512_bf16" in cpu_flags(zen4)
    assert "bf16" in cpu_flags(arm)
    with pytest.raises(ValueError, match="'half' is not one of auto"):
        resolve_precision("half", "cpu")


@pytest.mark.parametrize(
    ("cap", "native"), [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", None)]
)
def test_a_onednn_isa_cap_below_bf16_means_emulated_bf16(cap, native, monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 reproduces an AVX2-only CPU on a newer one: auto must then choose fp32."""
    from uvit import precision

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    precision.cpu_has_native_bf16.cache_clear()
    try:
        assert precision.cpu_has_native_bf16() is (True if native is None else native)
    finally:
        precision.cpu_has_native_bf16.cache_clear()


def test_out_of_memory_names_the_settings_to_lower(digits, tmp_path, monkeypatch):
    import uvit.training as training

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(training, "noise_prediction_loss", exhausted)
    with pytest.raises(
        training.TrainingOutOfMemory,
        match=r"out of memory at 32 images per forward pass.*grad_accumulation.*use_checkpoint",
    ):
        train(smoke_experiment(2), digits, tmp_path, log=lambda m: None)


# --------------------------------------------------------------------------------------------------------
# Real processes: SIGKILL and resume, two processes with gloo
# --------------------------------------------------------------------------------------------------------


def train_command(params: Path, data: Path, out: Path) -> list[str]:
    return [
        "-m", "uvit.cli", "--params", str(params), "--threads", "1", "train", "--experiment", "smoke_pixel",
        "--data", str(data), "--out", str(out), "--metrics", str(out / "train.json"),
    ]  # fmt: skip


def train_here(params: Path, data: Path, out: Path) -> None:
    """What the process of train_command runs, in this one: a short run another is compared with needs no process
    of its own (a process start is ~3.5 s of CPU: torch, and torch.optim's dynamo)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `--threads 1`
    try:
        train(resolve_experiment(load_params(params), "smoke_pixel"), data, out, log=lambda m: None)
    finally:
        torch.set_num_threads(threads)


def test_sigkill_at_random_points_then_resume_is_bitwise_identical(digits, tmp_path):
    """Three runs killed with SIGKILL at random moments between checkpoints (random, but always mid-run: each
    kill waits for the run to pass a random checkpoint, not for a time that a loaded machine would overrun),
    then a resumed run: weights, EMA and loss log equal an uninterrupted run's bit for bit."""
    import random
    import signal
    import subprocess
    import sys
    import time

    params = project_params(tmp_path, steps=200, checkpoint_every=7, log_every=10, precision="fp32")
    subprocess.run(
        [sys.executable, *train_command(params, digits, tmp_path / "straight")],
        check=True,
        capture_output=True,
    )
    checkpoints = tmp_path / "killed" / "checkpoints"

    def newest_step() -> int:
        return max((int(p.stem.split("-")[1]) for p in checkpoints.glob("ckpt-*.pt")), default=0)

    rng = random.Random(0)
    kills = 0
    for _ in range(3):
        target = newest_step() + 7 * rng.randint(1, 8)
        process = subprocess.Popen(
            [sys.executable, *train_command(params, digits, tmp_path / "killed")], stderr=subprocess.DEVNULL
        )
        while process.poll() is None and newest_step() < target:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))  # somewhere within the next checkpoint interval
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills == 3 and 0 < newest_step() < 200  # at most 3 x 8 x 7 = 168 steps in
    subprocess.run(
        [sys.executable, *train_command(params, digits, tmp_path / "killed")], check=True, capture_output=True
    )
    for name in ("nnet.pth", "nnet_ema.pth", "loss.jsonl"):
        assert (tmp_path / "straight" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes(), name
    assert not list(checkpoints.glob(".*.tmp"))


def test_two_gloo_processes_take_the_step_of_one_process_on_the_whole_batch(digits, tmp_path):
    import subprocess
    import sys

    params = project_params(tmp_path, steps=4, checkpoint_every=4, log_every=1, precision="fp32")
    train_here(params, digits, tmp_path / "one")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*torchrun, *train_command(params, digits, tmp_path / "two")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one = torch.load(tmp_path / "one" / "nnet.pth", weights_only=True)
    two = torch.load(tmp_path / "two" / "nnet.pth", weights_only=True)
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)
    assert json.loads((tmp_path / "two" / "train.json").read_text())["processes"] == 2


def test_class_conditional_pixel_training_draws_labels_as_tensors(digits, tmp_path):
    """Pixel data with class labels and guidance dropout (ImageNet 64's path): found broken on a GPU run."""
    exp = smoke_experiment(6, {"condition": "class"}, cond_drop_prob=0.15)
    metrics = train(exp, digits, tmp_path, log=lambda m: None)
    assert math.isfinite(metrics["final_loss"]) and metrics["num_classes"] == 11  # 10 digits + the null class
