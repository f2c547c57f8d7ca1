"""Benchmark: the training loop's overhead over the bare model step (data, EMA, logging, checkpoints).

Usage (from the project root, after `snakemake --cores all data/prepared/fashion_mnist`):
    python benchmarks/bench_training_loop.py --experiment fmnist_pixel --steps 60 --json out.json

"bare": forward, backward and AdamW on one fixed batch already in memory, under the experiment's precision.
"loop": `uvit.training.train` on the prepared data for the same number of steps (batch assembly with flips,
times and noise drawn per step, EMA update, loss logging, two atomic checkpoints), timed from its first step.
Both run alternately, `--repeats` times; the table shows medians.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch

from uvit.config import experiment_record, load_params, resolve_experiment
from uvit.diffusion import make_schedule, noise_prediction_loss
from uvit.model import model_for
from uvit.precision import autocast, resolve_precision
from uvit.shards import num_classes, read_manifest
from uvit.training import train


def bare_rate(exp: dict, shape: tuple[int, ...], classes: int, steps: int) -> float:
    cfg = exp["training"]
    torch.manual_seed(0)
    model = model_for(exp, shape, classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=tuple(cfg["betas"]))
    x0 = torch.randn(cfg["batch_size"], *shape)
    schedule = make_schedule(exp["diffusion"]["schedule"])
    cond = {"cond": torch.randint(classes, (len(x0),))} if exp["condition"] == "class" else {}

    def step() -> None:
        with autocast(resolve_precision(cfg["precision"], "cpu"), "cpu"):
            loss = noise_prediction_loss(model, schedule, x0, **cond)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * cfg["batch_size"] / (time.perf_counter() - start)


def loop_rate(params: dict, exp: dict, data_dir: Path, steps: int) -> float:
    exp = copy.deepcopy(exp)
    exp["training"].update(steps=steps, checkpoint_every=max(steps // 2, 1), log_every=10, keep_checkpoints=2)
    exp = experiment_record(params, exp)
    messages: list[str] = []
    with tempfile.TemporaryDirectory() as out:
        train(exp, data_dir, Path(out), log=messages.append)
    rate = [m for m in messages if "images/s" in m][-1]
    return float(re.search(r"\(([\d.]+) images/s\)", rate).group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--experiment", default="fmnist_pixel", help="a pixel-space experiment of params.yaml"
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="prepared dataset (default: from params.yaml)"
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    params = load_params()
    exp = resolve_experiment(params, args.experiment)
    data_dir = args.data or Path("data/prepared") / exp["dataset"]
    height, width, channels = read_manifest(data_dir / "train")["shape"]
    classes = num_classes(data_dir / "train") + exp["derived"]["null_class"]
    bare, loop = [], []
    for _ in range(args.repeats):
        bare.append(bare_rate(exp, (channels, height, width), classes, args.steps))
        loop.append(loop_rate(params, exp, data_dir, args.steps))
    result = dict(
        experiment=args.experiment,
        batch_size=exp["training"]["batch_size"],
        precision=resolve_precision(exp["training"]["precision"], "cpu"),
        steps=args.steps,
        bare_images_per_s=statistics.median(bare),
        loop_images_per_s=statistics.median(loop),
        runs=dict(bare=bare, loop=loop),
    )
    result["overhead"] = 1 - result["loop_images_per_s"] / result["bare_images_per_s"]
    print("| experiment | batch | precision | bare step images/s | training loop images/s | loop overhead |")
    print("|---|---:|---|---:|---:|---:|")
    print(
        f"| {args.experiment} | {result['batch_size']} | {result['precision']} | {result['bare_images_per_s']:.1f} | "
        f"{result['loop_images_per_s']:.1f} | {100 * result['overhead']:.1f}% |"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
