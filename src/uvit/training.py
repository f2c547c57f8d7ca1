"""One training loop for every experiment: pixel or latent, unconditional, class- or text-conditional, 1..N
processes.

Recipe (authors' configs): noise-prediction MSE, AdamW, linear warm-up then constant learning rate, EMA of
the weights updated every step, condition dropped to its null value at `cond_drop_prob` for classifier-free
guidance (uvit.conditioning); optional gradient clipping and accumulation; precision as uvit.precision resolves
it (bf16 autocast where the device runs bf16 natively, fp16 with a gradient scaler on older GPUs, else fp32).

Every random draw of step k (batch order, flips, posterior samples, times, noise, condition drop) comes from
generators seeded by (seed, k) or (seed, epoch) and is drawn for the whole global batch; each process then
takes its share. So the data position and RNG state are functions of the step alone: a run resumed from a
checkpoint continues exactly as the uninterrupted run would, and N processes (torchrun; gloo on CPU, NCCL on
GPU) take the same optimizer step as one process on the combined batch. Checkpoints are written atomically by
rank 0 and loaded weights-only (uvit.checkpoints).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from uvit import layout
from uvit.autoencoder import to_unit_range
from uvit.autoencoder_kl import DiagonalGaussian
from uvit.checkpoints import CheckpointError, read_torch_file, save_checkpoint
from uvit.conditioning import Conditions
from uvit.config import settings_hash
from uvit.devices import placement
from uvit.diffusion import make_schedule, noise_prediction_loss
from uvit.errors import UserError
from uvit.fileio import atomic_write_bytes
from uvit.model import model_for
from uvit.precision import autocast, choose
from uvit.seeds import batch_indices, mix_seed
from uvit.shards import labelled_rows, num_classes

# Settings that do not change the trajectory of training; a checkpoint made under other values resumes.
# (grad_accumulation only regroups the same global batch: same trajectory up to float rounding.)
BOOKKEEPING_KEYS = (
    "steps",
    "checkpoint_every",
    "keep_checkpoints",
    "keep_steps",
    "log_every",
    "sample_every",
    "grad_accumulation",
    "data_workers",
    "compile",
)


class NonFiniteLossError(UserError, RuntimeError):
    pass


class TrainingOutOfMemory(UserError, RuntimeError):
    pass


# --------------------------------------------------------------------------------------------------------
# Processes: one, or several under torchrun
# --------------------------------------------------------------------------------------------------------


class Processes:
    """This process's place among the torchrun workers, with the process group training needs."""

    def __init__(self):
        self.rank, self.world, self.device = placement()
        if self.world > 1 and not dist.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, batch_size: int) -> slice:
        """This rank's rows of the global batch."""
        if batch_size % self.world:
            raise UserError(
                f"training.batch_size: {batch_size} is not divisible by {self.world} processes; change either"
            )
        per_rank = batch_size // self.world
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world
        return value

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


# --------------------------------------------------------------------------------------------------------
# Data: deterministic batches for step k
# --------------------------------------------------------------------------------------------------------


class PixelData:
    """Prepared uint8 images, read per batch from the shards; scaled to [-1, 1], optionally flipped at random."""

    def __init__(self, data_dir: Path, hflip: bool, verify: bool = True):
        self.images, labels, _ = labelled_rows(Path(data_dir) / "train", "images", "prepare_data", verify)
        self.labels, self.hflip = torch.from_numpy(labels), hflip

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, ...]:
        height, width, channels = self.images.row_shape
        return (channels, height, width)

    def batch(
        self, index: torch.Tensor, generator: torch.Generator, rows: slice = slice(None)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `rows` of the batch of images `index` (the random draws are the whole batch's, for every rank)."""
        flip = torch.rand(len(index), generator=generator) < 0.5 if self.hflip else None
        mine = index[rows]
        x = to_unit_range(self.images.take(mine.numpy()))
        if flip is not None:
            x = torch.where(flip[rows][:, None, None, None], x.flip(3), x)
        return x, self.labels[mine]


class LatentData:
    """Stored posterior moments of each image and its flip, read per batch from the shards; a fresh posterior
    sample every step (scaled by the recorded factor)."""

    def __init__(self, latent_dir: Path, hflip: bool, verify: bool = True):
        self.moments, labels, manifest = labelled_rows(Path(latent_dir), "moments", "encode_latents", verify)
        self.labels, self.scale_factor, self.hflip = torch.from_numpy(labels), manifest["scale_factor"], hflip
        if hflip and self.moments.row_shape[0] < 2:
            raise UserError(
                f"{latent_dir}: encoded without flips (encode_flips: false), but training.hflip is true; set "
                "training.hflip: false or encode the flips too"
            )

    def __len__(self) -> int:
        return len(self.moments)

    @property
    def shape(self) -> tuple[int, ...]:
        _, moments, height, width = self.moments.row_shape
        return (moments // 2, height, width)

    def batch(
        self, index: torch.Tensor, generator: torch.Generator, rows: slice = slice(None)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `rows` of the batch of images `index` (the random draws are the whole batch's, for every rank)."""
        version = (
            (torch.rand(len(index), generator=generator) < 0.5).long()
            if self.hflip
            else torch.zeros_like(index)
        )
        mine = index[rows]
        posterior = DiagonalGaussian(torch.from_numpy(self.moments.take(mine.numpy(), version[rows].numpy())))
        noise = torch.randn((len(index), *posterior.mean.shape[1:]), generator=generator)[rows]
        return (posterior.mean + posterior.std * noise) * self.scale_factor, self.labels[mine]


class StepBatches(torch.utils.data.Dataset):
    """Item k: this process's rows of step k's global batch with all of its randomness (data, condition,
    diffusion time and noise), drawn from step k's seed alone, so any DataLoader worker, rank or resumed run
    draws the same numbers."""

    def __init__(self, data, conditions: Conditions, schedule, cfg: dict, rows: slice):
        self.data, self.conditions, self.schedule, self.rows = data, conditions, schedule, rows
        self.seed, self.batch_size, self.steps = cfg["seed"], cfg["batch_size"], cfg["steps"]

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(mix_seed(self.seed, step + 1))
        index = batch_indices(step, self.batch_size, len(self.data), self.seed)
        x0, _ = self.data.batch(index, generator, self.rows)
        cond = self.conditions.draw(index, self.data.labels[index], generator, self.rows)
        t = self.schedule.sample_time(len(index), generator)[self.rows]
        noise = torch.randn((len(index), *x0.shape[1:]), generator=generator)[self.rows]
        return {"x0": x0, "t": t, "noise": noise} | ({} if cond is None else {"cond": cond})


# --------------------------------------------------------------------------------------------------------
# Losses, optimiser, EMA and checkpoints
# --------------------------------------------------------------------------------------------------------


def check_losses(
    unread: list[tuple[int, torch.Tensor]], name: str, last_good: str | None, ckpt_dir: Path
) -> float:
    """The last of the steps' losses, read back from the device in one transfer; NonFiniteLossError names the
    first step whose loss is not finite."""
    steps = [step for step, _ in unread]
    for step, value in zip(steps, torch.stack([loss for _, loss in unread]).tolist(), strict=True):
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"{name}: loss is {value} at step {step}; last good checkpoint: {last_good or 'none'} "
                f"in {ckpt_dir}. Lower training.lr or use training.precision: fp32"
            )
    return value


def compile_enabled(setting: bool | str, device: torch.device) -> bool:
    """training.compile: `auto` compiles on CUDA (1.5x for U-ViT-S/2 on an H200), not on the CPU, where
    compiling a small model takes longer than its demo training."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def data_workers(setting: int | str, device: torch.device) -> int:
    """training.data_workers: `auto` is none on the CPU (the step's own threads use every core), else up to 4
    per GPU process from the CPUs this job may use."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    per_process = len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(4, per_process - 1))


def warmup_constant(warmup_steps: int):
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def lr_factor(cfg: dict):
    """The learning rate of update k + 1 over training.lr: the authors' linear warmup, then constant, or (lr_schedule:
    cosine, a short run's recipe) times 1/2 (1 + cos(pi k / steps)), which reaches 0 at the last step."""
    warmup = warmup_constant(cfg["warmup_steps"])
    if cfg["lr_schedule"] == "constant":
        return warmup
    steps = cfg["steps"]
    return lambda step: warmup(step) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, rate: float) -> None:
    for ema_p, p in zip(ema.parameters(), model.parameters(), strict=True):
        ema_p.lerp_(p, 1.0 - rate)


def trajectory_hash(exp: dict) -> str:
    """Hash of everything that shapes the training trajectory (not its length or bookkeeping; the length too when
    the learning rate decays over it: a longer cosine run is another trajectory from its first step)."""
    cosine = exp["training"]["lr_schedule"] != "constant"
    training = {
        k: v for k, v in exp["training"].items() if k not in BOOKKEEPING_KEYS or (cosine and k == "steps")
    }
    return settings_hash(
        {k: exp[k] for k in ("dataset", "space", "autoencoder", "condition", "model", "diffusion")}
        | {"training": training}
    )


CHECKPOINT_KEYS = {"step", "trajectory_hash", "model", "ema", "optimizer", "scheduler", "history"}


def scan_checkpoints(
    ckpt_dir: Path, expected_hash: str, max_step: int, log
) -> tuple[dict | None, tuple[Path, ...]]:
    """One pass over ckpt_dir, newest first (each file's pickled header read memory-mapped, not its weights): the
    newest checkpoint of this trajectory at or before max_step, loaded to resume from, or None; and the checkpoints
    of other trajectories (other settings), which this run deletes at its first checkpoint. Each file skipped is
    named with the reason."""
    resume, foreign = None, []
    for path in sorted(ckpt_dir.glob("ckpt-*.pt"), reverse=True):
        step = path.stem.split("-")[1]
        if not step.isdigit():  # not a name this pipeline writes
            continue
        try:
            header = read_torch_file(path, "a training checkpoint", mmap=True)
        except CheckpointError as err:
            log(f"skipping {err}")
            continue
        if not isinstance(header, dict) or not header.keys() >= CHECKPOINT_KEYS:
            log(
                f"skipping {path}: not a training checkpoint of this pipeline (keys: {', '.join(CHECKPOINT_KEYS)})"
            )
        elif header["trajectory_hash"] != expected_hash:
            log(f"ignoring {path}: made with other training settings")
            foreign.append(path)
        elif resume is None and int(step) <= max_step:
            resume = path
    if resume is None:
        return None, tuple(foreign)
    state = read_torch_file(resume, "a training checkpoint")
    log(f"resuming from {resume} (step {state['step']})")
    return state, tuple(foreign)


def prune_checkpoints(
    ckpt_dir: Path, keep: int, keep_steps: tuple[int, ...] = (), foreign: tuple[Path, ...] = ()
) -> None:
    """Delete the checkpoints of other trajectories (`foreign`), then all but the newest `keep` of the rest and
    those of `keep_steps` (e.g. for FID over training). Foreign ones never count towards `keep`: a run of new
    settings beside an older, longer run would otherwise delete each of its checkpoints as it writes it."""
    for path in foreign:
        path.unlink(missing_ok=True)
    for path in sorted(ckpt_dir.glob("ckpt-*.pt"))[:-keep]:
        if int(path.stem.split("-")[1]) not in keep_steps:
            path.unlink()


def write_loss_csv(loss_log: Path, out: Path) -> None:
    """The loss log as CSV (step, loss, lr): DVC plots read it, and it is small enough for git."""
    rows = [json.loads(line) for line in loss_log.read_text().splitlines() if line]
    text = "step,loss,lr\n" + "".join(f"{r['step']},{r['loss']},{r['lr']}\n" for r in rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, text.encode())


def checkpoint_file(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"ckpt-{step:07d}.pt"  # sorts by step (scan_checkpoints, prune_checkpoints)


def write_loss_log(out_dir: Path, history: list[dict]) -> None:
    """loss.jsonl: one JSON line per logged step (step, loss, lr), rewritten atomically at every logged step.

    A resumed run starts from its checkpoint's history, so lines logged after that checkpoint are dropped and
    logged again: the file never holds a step twice."""
    lines = "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in history)
    atomic_write_bytes(out_dir / layout.LOSS_LOG, lines.encode())


def snapshot_path(out_dir: Path, step: int) -> Path:
    """EMA weights at one of `training.keep_steps` (authors' nnet_ema.pth layout): the input of FID over training."""
    return out_dir / layout.SNAPSHOTS / layout.snapshot_name(step)


def write_snapshots(out_dir: Path, keep_steps: list[int]) -> None:
    """Copy the EMA weights of each kept checkpoint into snapshots/ (a declared output, rebuilt on every run)."""
    (out_dir / layout.SNAPSHOTS).mkdir(parents=True, exist_ok=True)
    for step in keep_steps:
        ckpt = checkpoint_file(out_dir / layout.CHECKPOINTS, step)
        if not ckpt.exists():
            raise FileNotFoundError(
                f"training.keep_steps: no checkpoint of step {step} in {ckpt.parent} (it was pruned before this "
                f"step was listed); delete {ckpt.parent} to train again and keep it"
            )
        state = read_torch_file(ckpt, f"the training checkpoint of step {step}; delete it to train it again")
        save_checkpoint(snapshot_path(out_dir, step), state["ema"])


def micro_batches(share: slice, accumulation: int) -> list[slice]:
    """Split this rank's share of the global batch into `accumulation` equal micro-batches."""
    size = share.stop - share.start
    if size % accumulation:
        raise UserError(
            f"training.grad_accumulation: {accumulation} does not divide the per-process batch {size}; change either"
        )
    step = size // accumulation
    return [slice(share.start + i * step, share.start + (i + 1) * step) for i in range(accumulation)]


def out_of_memory_message(exp: dict, processes: Processes) -> str:
    cfg = exp["training"]
    per_micro = cfg["batch_size"] // processes.world // cfg["grad_accumulation"]
    return (
        f"{exp['name']}: out of memory at {per_micro} images per forward pass on {processes.device}. Raise "
        "training.grad_accumulation (same global batch, smaller passes), set model.use_checkpoint: true, "
        "or lower training.batch_size"
    )


# --------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------


Preview = Callable[[int, torch.nn.Module], None]


def train(
    exp: dict,
    data_dir: Path,
    out_dir: Path,
    latent_dir: Path | None = None,
    log=print,
    preview: Preview | None = None,
    text_dir: Path | None = None,
) -> dict:
    """Train (or resume) the experiment; write nnet.pth / nnet_ema.pth (authors' layout), the EMA snapshots of
    `keep_steps` and the loss log. `preview(step, ema)` runs on rank 0 every `training.sample_every` steps."""
    processes = Processes()
    try:
        return _train(
            exp,
            data_dir,
            out_dir,
            latent_dir,
            log if processes.main else lambda _: None,
            processes,
            preview if processes.main else None,
            text_dir,
        )
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err):
            raise TrainingOutOfMemory(out_of_memory_message(exp, processes)) from None
        raise


def _train(
    exp: dict,
    data_dir: Path,
    out_dir: Path,
    latent_dir: Path | None,
    log,
    processes: Processes,
    preview: Preview | None,
    text_dir: Path | None,
) -> dict:
    cfg = exp["training"]
    device = processes.device
    precision = choose(cfg["precision"], device, "training.precision", log)
    # Shards are md5-checked once, by the main process (here and in Conditions).
    data = (
        LatentData(latent_dir, cfg["hflip"], verify=processes.main)
        if exp["space"] == "latent"
        else PixelData(data_dir, cfg["hflip"], verify=processes.main)
    )
    classes = num_classes(data_dir / "train")
    conditions = Conditions(exp, classes, text_dir, verify=processes.main)
    torch.manual_seed(cfg["seed"])
    model = model_for(exp, data.shape, classes, conditions.context_shape).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg["lr"],
        betas=tuple(cfg["betas"]),
        weight_decay=cfg["weight_decay"],
        fused=device.type == "cuda",  # one kernel for all parameters instead of several per tensor
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    schedule = make_schedule(exp["diffusion"]["schedule"])
    share = processes.share(cfg["batch_size"])
    micros = micro_batches(slice(0, share.stop - share.start), cfg["grad_accumulation"])

    ckpt_dir = out_dir / layout.CHECKPOINTS
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    expected = trajectory_hash(exp)
    state, foreign = scan_checkpoints(ckpt_dir, expected, cfg["steps"], log)
    if foreign:  # removed at this run's first checkpoint, not before: a kill until then loses nothing
        log(
            f"{len(foreign)} checkpoint(s) of other training settings in {ckpt_dir}: removed at this run's first"
        )
    history: list[dict] = []
    start_step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        history, start_step = json.loads(state["history"]), state["step"]
        if processes.main:
            write_loss_log(out_dir, history)  # drop lines logged after the checkpoint by the killed run
    last_good = None if state is None else f"step {start_step}"
    net = model
    if processes.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if compile_enabled(cfg["compile"], device):
        net = torch.compile(net)  # the module's parameters and state_dict stay `model`'s

    model.train()
    started, images_seen = time.perf_counter(), 0
    progress = tqdm(
        range(start_step, cfg["steps"]),
        initial=start_step,
        total=cfg["steps"],
        desc=exp["name"],
        mininterval=5,
        disable=not processes.main,
    )
    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        StepBatches(data, conditions, schedule, cfg, share),
        batch_size=None,
        sampler=range(start_step, cfg["steps"]),
        num_workers=data_workers(cfg["data_workers"], device),
        pin_memory=cuda,
    )
    unread: list[tuple[int, torch.Tensor]] = []  # (step, its mean loss) not yet read back from the device
    for step, batch in zip(progress, loader, strict=True):
        optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=device)
        for i, micro in enumerate(micros):
            inputs = {key: value[micro].to(device, non_blocking=cuda) for key, value in batch.items()}
            cond_kwargs = {"cond": inputs["cond"]} if "cond" in inputs else {}
            sync = contextlib.nullcontext() if i == len(micros) - 1 or processes.world == 1 else net.no_sync()
            with sync:
                with autocast(precision, device):
                    loss = noise_prediction_loss(
                        net, schedule, inputs["x0"], t=inputs["t"], noise=inputs["noise"], **cond_kwargs
                    )
                scaler.scale(loss / len(micros)).backward()
            loss_sum += loss.detach() / len(micros)
        unread.append((step, processes.mean(loss_sum)))  # stays on the device until a step that reads it
        if cfg["grad_clip"]:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        update_ema(ema, model, cfg["ema_rate"])
        images_seen += cfg["batch_size"]
        done = step + 1
        logged = done % cfg["log_every"] == 0 or done == cfg["steps"]
        saved = done % cfg["checkpoint_every"] == 0 or done == cfg["steps"] or done in cfg["keep_steps"]
        previewed = preview is not None and cfg["sample_every"] and done % cfg["sample_every"] == 0
        if not (logged or saved or previewed):
            continue
        # Losses are read back here only (one transfer, no host sync in the other steps), and before anything
        # is written: a checkpoint is never saved after a non-finite loss.
        loss_value = check_losses(unread, exp["name"], last_good, ckpt_dir)
        unread = []
        if logged:
            history.append({"step": done, "loss": round(loss_value, 6), "lr": scheduler.get_last_lr()[0]})
            rate = images_seen / (time.perf_counter() - started)
            progress.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{rate:.0f}")
            if processes.main:
                write_loss_log(out_dir, history)
        if saved:
            if processes.main:
                saved_path = checkpoint_file(ckpt_dir, done)
                save_checkpoint(
                    saved_path,
                    {
                        "step": done,
                        "trajectory_hash": expected,
                        "model": model.state_dict(),
                        "ema": ema.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "history": json.dumps(history),
                    },
                )
                # a foreign file of this step's name now holds this run's checkpoint
                foreign = tuple(path for path in foreign if path != saved_path)
                prune_checkpoints(ckpt_dir, cfg["keep_checkpoints"], tuple(cfg["keep_steps"]), foreign)
                foreign = ()
            processes.barrier()
            last_good = f"step {done}"
        if previewed:
            preview(done, ema)
    seconds = time.perf_counter() - started
    if images_seen:
        log(f"{exp['name']}: {images_seen} images in {seconds:.1f} s ({images_seen / seconds:.1f} images/s)")

    if processes.main:
        save_checkpoint(out_dir / layout.WEIGHTS, model.state_dict())
        save_checkpoint(out_dir / layout.EMA_WEIGHTS, ema.state_dict())
        write_snapshots(out_dir, [s for s in cfg["keep_steps"] if s < cfg["steps"]])
        write_loss_log(out_dir, history)
    processes.barrier()
    return {
        "steps": cfg["steps"],
        "batch_size": cfg["batch_size"],
        "processes": processes.world,
        "final_loss": history[-1]["loss"] if history else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "num_classes": model.label_emb.num_embeddings if hasattr(model, "label_emb") else 0,
        "precision": precision,
    }
