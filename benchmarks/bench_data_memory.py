"""Benchmark: a training process's peak memory against the size of its latent dataset (memory-mapped shards).

Usage (from the project root):
    python benchmarks/bench_data_memory.py --images 10000 200000 --json benchmarks/results/data_memory.json

For each size, writes synthetic encoded latents in the encode stage's format (posterior moments of each image
and its flip, 2 x 8 x 32 x 32 float32 = 64 KiB per image: ImageNet-256's 4 x 32 x 32 latents; 200,000 images
are 13.1 GB) to a scratch folder, then runs `uvit.training.train` of a small latent U-ViT on them for a few
steps in a fresh process and reads that process's peak resident memory (VmHWM) and, at its end, the resident
memory of its own (anonymous) and of mapped files (the shards' pages read so far: clean, the kernel drops
them under memory pressure). The md5 check of every shard at start reads the whole dataset through the page
cache, not through the process's memory. The table gives each size's peak and its ratio to the smallest's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from uvit.precision import describe_device
from uvit.shards import write_manifest, write_shards

ROOT = Path(__file__).resolve().parents[1]
MOMENTS = (2, 8, 32, 32)  # (image, flip) x (mean, logvar) of 4 channels x 32 x 32
SHARD = 5000

# Runs in the child: train() on the latents, then nothing else (its peak RSS is the training process's).
CHILD = """
import copy, sys
from pathlib import Path
from uvit.config import experiment_record, load_params, resolve_experiment
from uvit.training import train
latents, out, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
params = load_params(Path("params.yaml"))
exp = copy.deepcopy(resolve_experiment(params, "fmnist_latent"))
exp["model"] |= {"embed_dim": 64, "depth": 3, "num_heads": 2, "patch_size": 4}
exp["training"] |= {"steps": steps, "batch_size": 64, "checkpoint_every": steps, "log_every": steps,
                    "keep_steps": [], "sample_every": 0, "precision": "fp32"}
train(experiment_record(params, exp), latents / "prepared", out, latent_dir=latents / "latents", log=print)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print("memory_kib", *(int(status[key].split()[0]) for key in ("VmHWM", "RssAnon", "RssFile")))
"""


def write_synthetic_latents(out: Path, images: int) -> float:
    """Moments (random means, log-variance -4) and labels in shards of 5,000; returns seconds taken."""
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    shards = []
    for index, start in enumerate(range(0, images, SHARD)):
        count = min(SHARD, images - start)
        moments = np.empty((count, *MOMENTS), np.float32)
        moments[:, :, :4] = rng.standard_normal((count, 2, 4, 32, 32), dtype=np.float32)
        moments[:, :, 4:] = -4.0
        labels = (np.arange(start, start + count) % 1000).astype(np.int64)
        shards += write_shards(
            out / "latents", {"moments": moments, "labels": labels}, SHARD, first_index=index
        )
    manifest = {"count": images, "moments_shape": list(MOMENTS), "scale_factor": 0.18215, "shards": shards}
    write_manifest(out / "latents", manifest)
    # The training split's manifest gives the class count (a class-conditional experiment).
    prepared = out / "prepared" / "train"
    prepared.mkdir(parents=True)
    write_manifest(prepared, {"count": images, "class_counts": {str(c): images // 1000 for c in range(1000)}})
    return time.perf_counter() - started


def train_memory(latents: Path, steps: int) -> tuple[dict[str, float], float, str]:
    """({peak RSS, anonymous and file-backed RSS at the end} in MiB, seconds, the throughput line) of a fresh
    training process."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(latents), str(latents / "run"), str(steps)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"training on {latents} failed:\n{result.stderr[-3000:]}")
    *lines, memory = result.stdout.strip().splitlines()
    peak, anon, file = (int(v) / 1024 for v in memory.split()[1:])
    return {"peak_rss_mib": peak, "anon_rss_mib": anon, "file_rss_mib": file}, seconds, lines[-1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[10_000, 200_000])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--scratch", type=Path, default=None, help="where the datasets go (default: a temp dir)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    rows = []
    for images in sorted(args.images):
        scratch = Path(tempfile.mkdtemp(prefix="uvit-data-memory-", dir=args.scratch))
        try:
            write_seconds = write_synthetic_latents(scratch, images)
            dataset_gb = sum(p.stat().st_size for p in (scratch / "latents").glob("*.npy")) / 1e9
            memory, seconds, last = train_memory(scratch, args.steps)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        rows.append(
            {"images": images, "dataset_gb": round(dataset_gb, 2), **{k: round(v, 1) for k, v in memory.items()},
             "train_seconds": round(seconds, 1), "write_seconds": round(write_seconds, 1), "log": last}
        )  # fmt: skip
        print(f"{images} images: {dataset_gb:.2f} GB, {memory} ({last})", flush=True)
    base = rows[0]["peak_rss_mib"]
    print(f"\n{args.steps} training steps per size")
    print(
        "| images | dataset (GB) | peak RSS (MiB) | vs smallest | anonymous at end | file-backed at end | process (s) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        row["peak_ratio"] = round(row["peak_rss_mib"] / base, 3)
        print(
            f"| {row['images']:,} | {row['dataset_gb']:.2f} | {row['peak_rss_mib']:.0f} | {row['peak_ratio']:.3f} | "
            f"{row['anon_rss_mib']:.0f} | {row['file_rss_mib']:.0f} | {row['train_seconds']:.1f} |"
        )
    if args.json:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), "")
        machine = (
            f"{cpu}, {os.cpu_count()} CPUs, {describe_device(torch.device('cpu'))}, {platform.platform()}"
        )
        args.json.write_text(
            json.dumps({"machine": machine, "steps": args.steps, "rows": rows}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
