"""GPU checks of the training loop and sampling on CUDA: bf16 (or the fp16 fallback), compiled against eager,
fp16 with the gradient scaler, a class-conditional pixel model with guidance dropout, exact resume, per-seed samples across batch sizes.

Usage, on a machine with a CUDA GPU, from the project root (writes $OUT/gpu_check.json, default /tmp/out):
    python benchmarks/gpu_check.py
"""

import copy
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from uvit.config import experiment_record, load_params, resolve_experiment
from uvit.data import prepare_dataset
from uvit.precision import resolve_precision
from uvit.sampling import sample_experiment
from uvit.training import train

out = Path(os.environ.get("OUT", "/tmp/out"))
out.mkdir(parents=True, exist_ok=True)
res = {
    "device": torch.cuda.get_device_name(),
    "torch": torch.__version__,
    "bf16": torch.cuda.is_bf16_supported(),
}
data = Path("/tmp/digits")
prepare_dataset({"source": "digits", "resolution": 16, "shard_size": 1000}, data)
params = load_params("params.yaml", overlays=("tests/smoke.yaml",))  # smoke_pixel: the tests' experiment


def experiment(steps, **training):
    exp = copy.deepcopy(resolve_experiment(params, "smoke_pixel"))
    exp["condition"] = "class"
    exp["model"].update(embed_dim=64, depth=5, num_heads=4)
    exp["training"].update(
        {
            "steps": steps,
            "batch_size": 64,
            "checkpoint_every": 10,
            "keep_steps": [],
            "log_every": 10,
            "lr": 1e-3,
        }
        | {"cond_drop_prob": 0.15}
        | training
    )
    exp["sampling"].update(guidance_scale=0.4, steps=25, num_samples=256, batch_size=128)
    return experiment_record(params, exp)


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


quiet = lambda m: None  # noqa: E731
res["precision_used"] = resolve_precision("auto", "cuda")
t0 = time.perf_counter()
m = train(experiment(40), data, Path("/tmp/straight"), log=quiet)
res["train_40_steps_s"] = time.perf_counter() - t0
res["final_loss_bf16"] = m["final_loss"]
train(experiment(20), data, Path("/tmp/resumed"), log=quiet)
train(experiment(40), data, Path("/tmp/resumed"), log=quiet)
a = torch.load("/tmp/straight/nnet_ema.pth", weights_only=True)
b = torch.load("/tmp/resumed/nnet_ema.pth", weights_only=True)
res["resume_bitwise_equal"] = md5("/tmp/straight/nnet_ema.pth") == md5("/tmp/resumed/nnet_ema.pth")
res["resume_max_abs_diff"] = max(float((a[k] - b[k]).abs().max()) for k in a)
# training.compile and data_workers are `auto` above (compiled, DataLoader workers on CUDA): the same 40 steps
# eager in the main process give the same losses up to kernel rounding.
t0 = time.perf_counter()
train(experiment(40, compile=False, data_workers=0), data, Path("/tmp/eager"), log=quiet)
res["train_40_steps_eager_s"] = time.perf_counter() - t0
runs = ("straight", "eager")
losses = [
    [json.loads(line)["loss"] for line in Path(f"/tmp/{r}/loss.jsonl").read_text().splitlines()] for r in runs
]
res["compiled_vs_eager_losses"] = losses
res["compiled_vs_eager_max_rel_diff"] = max(abs(a - b) / abs(b) for a, b in zip(*losses, strict=True))
m16 = train(experiment(20, precision="fp16"), data, Path("/tmp/fp16"), log=quiet)
state = torch.load("/tmp/fp16/checkpoints/ckpt-0000020.pt", weights_only=True)
res["fp16_final_loss"], res["fp16_scaler_scale"] = m16["final_loss"], state["scaler"]["scale"]
exp = experiment(40)
t0 = time.perf_counter()
sample_experiment(exp, Path("/tmp/straight/nnet_ema.pth"), data, Path("/tmp/s128"), log=quiet)
res["sample_256_dpm25_cfg_s"] = time.perf_counter() - t0
small = copy.deepcopy(exp)
small["sampling"].update(batch_size=8)
small = experiment_record(params, small)
sample_experiment(small, Path("/tmp/straight/nnet_ema.pth"), data, Path("/tmp/s8"), log=quiet)
names = sorted(p.name for p in Path("/tmp/s128").glob("*.png"))
same = sum(md5(f"/tmp/s128/{n}") == md5(f"/tmp/s8/{n}") for n in names)
res["samples"], res["samples_identical_batch128_vs_8"] = len(names), same
print(json.dumps(res, indent=1))
(out / "gpu_check.json").write_text(json.dumps(res, indent=1))
