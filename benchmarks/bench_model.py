"""Benchmark: U-ViT training-step and sampling throughput, fp32 vs bf16, eager vs compiled, with MFU.

Usage (from the project root):
    python benchmarks/bench_model.py --model U-ViT-S/2 --batch-size 16 --compile
    python benchmarks/bench_model.py --experiment fmnist_pixel --channels 1 --batch-size 64 --compile
    python benchmarks/bench_model.py --attention            # attention kernels, forward + backward
    python benchmarks/bench_model.py --experiment fmnist_pixel --channels 1 --batch-size 64 --loss-check 300

Throughput: a training step is forward, backward and an AdamW step on one batch of random inputs; sampling
is one network evaluation per image under inference mode (a sampler with N steps costs N of them).
The precisions asked for take turns call by call (median of --repeats each), so their ratios hold on a machine
whose load changes during the run.
FLOPs come from torch's FlopCounterMode on the real forward (matmuls, convolutions, attention); a training
step is counted as 3x its forward. MFU divides achieved FLOP/s by a square-matmul peak measured on the same
device in the same precision, so it reads as "fraction of what this device's matmul reaches".
`--loss-check N` trains the model N steps on Fashion-MNIST (the prepared data) in fp32 and in bf16 from
the same initialisation, batches and noise, and compares windowed mean losses against their standard errors.
Prints a table and writes JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from uvit.config import load_params, model_settings, resolve_experiment
from uvit.model import attention, build_model
from uvit.precision import autocast, cpu_has_native_bf16, describe_device, resolve_precision


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() after warm-up calls (which absorb compilation)."""
    return seconds_per_call_in_turns({0: fn}, device, repeats, warmup)[0]


def seconds_per_call_in_turns(fns: dict, device: torch.device, repeats: int, warmup: int = 1) -> dict:
    """Median wall time of each function, the functions taking turns call by call: a change in the machine's load
    (a shared VM's neighbours) then reaches all of them alike instead of whichever ran during it."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    times: dict = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(seconds) for key, seconds in times.items()}


def emulated(device: torch.device, precision: str) -> bool:
    """bf16 on a CPU without native bf16: a large square matmul runs far slower there than the model's small ones
    (0.3 GFLOP/s against ~4 on an AVX2-only EPYC), so the peak probe is no ceiling: neither it nor MFU is run."""
    return device.type == "cpu" and precision == "bf16" and not cpu_has_native_bf16()


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul: the ceiling this device reaches in this precision."""
    n = 2048 if device.type == "cpu" else 8192
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / seconds_per_call(lambda: a @ b, device, repeats=5, warmup=2)


class Workload:
    """One model on one device with random inputs of a fixed shape."""

    def __init__(self, model_cfg: dict, args: argparse.Namespace, device: torch.device):
        torch.manual_seed(0)
        self.device, self.args = device, args
        self.model = build_model(model_cfg, args.img_size, args.channels, args.classes).to(device)
        b = args.batch_size
        self.x = torch.randn(b, args.channels, args.img_size, args.img_size, device=device)
        self.t = torch.rand(b, device=device) * 999
        self.y = torch.randint(args.classes, (b,), device=device) if args.classes else None
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)

    def forward_flops_per_image(self) -> float:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            self.model(self.x[:1], self.t[:1], None if self.y is None else self.y[:1])
        return float(counter.get_total_flops())

    def train_step_fn(self, net: Callable, precision: str) -> Callable[[], None]:
        def step() -> None:
            with autocast(precision, self.device):
                out = net(self.x, self.t, self.y)
            loss = (out.float() - self.x).square().mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()

        return step

    def sample_fn(self, net: Callable, precision: str) -> Callable[[], None]:
        def evaluate() -> None:
            with torch.inference_mode(), autocast(precision, self.device):
                net(self.x, self.t, self.y)

        return evaluate


def throughput_rows(model_cfg: dict, args: argparse.Namespace, device: torch.device) -> list[dict]:
    work = Workload(model_cfg, args, device)
    flops = work.forward_flops_per_image()
    params_m = sum(p.numel() for p in work.model.parameters()) / 1e6
    resolved = {
        p: resolve_precision(p, device) for p in args.precision
    }  # auto: what this device runs natively
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    peaks = {p: matmul_peak(device, dtypes[p]) for p in set(resolved.values()) if not emulated(device, p)}
    modes = ["eager", "compiled"] if args.compile else ["eager"]
    rows = []
    for mode in modes:
        net = work.model if mode == "eager" else torch.compile(work.model)
        for task, make, flops_per_image in (
            ("train", work.train_step_fn, 3 * flops),
            ("sample", work.sample_fn, flops),
        ):
            work.model.train(task == "train")
            fns, first_call_s = {}, {}
            for precision in args.precision:
                start = time.perf_counter()
                fns[precision] = make(net, resolved[precision])
                fns[precision]()  # first call: compiles in compiled mode
                first_call_s[precision] = time.perf_counter() - start
            seconds = seconds_per_call_in_turns(fns, device, args.repeats)
            for precision in args.precision:
                images_per_s = args.batch_size / seconds[precision]
                peak = peaks.get(resolved[precision])  # none where bf16 is emulated
                rows.append(
                    dict(
                        model=args.label,
                        params_m=round(params_m, 2),
                        task=task,
                        mode=mode,
                        precision=precision,
                        runs_as=resolved[precision],
                        batch_size=args.batch_size,
                        images_per_s=images_per_s,
                        tflops=images_per_s * flops_per_image / 1e12,
                        mfu=None if peak is None else images_per_s * flops_per_image / peak,
                        matmul_peak_tflops=None if peak is None else peak / 1e12,
                        first_call_s=first_call_s[precision],
                    )
                )
                print_row(rows[-1])
    for row in rows:
        base = next(
            r for r in rows if r["task"] == row["task"] and (r["mode"], r["precision"]) == ("eager", "fp32")
        )
        row["speedup_vs_eager_fp32"] = row["images_per_s"] / base["images_per_s"]
    return rows


def percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.1f}%"


def tflops(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def print_row(row: dict) -> None:
    print(
        f"{row['model']:>14} {row['task']:>6} {row['mode']:>8} {row['precision']:>4}->{row['runs_as']:<4} "
        f"{row['images_per_s']:9.2f} img/s {row['tflops']:7.3f} TFLOP/s MFU {percent(row['mfu']):>6} "
        f"(peak {tflops(row['matmul_peak_tflops'])}; first call {row['first_call_s']:.1f} s)",
        flush=True,
    )


def print_table(rows: list[dict]) -> None:
    print(
        "\n| model | task | mode | precision (runs as) | batch | images/s | speed-up vs eager fp32 | TFLOP/s | MFU |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['task']} | {r['mode']} | {r['precision']} ({r['runs_as']}) | {r['batch_size']} | "
            f"{r['images_per_s']:.2f} | {r['speedup_vs_eager_fp32']:.2f}x | {r['tflops']:.3f} | {percent(r['mfu'])} |"
        )


def attention_rows(device: torch.device, repeats: int) -> list[dict]:
    """Forward + backward time of each attention kernel at U-ViT shapes (batch, heads, tokens, head dim 64)."""
    shapes = [(64, 3, 65), (16, 8, 257), (8, 16, 257), (4, 16, 1025)]
    rows = []
    for batch, heads, tokens in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            for backend in ("sdpa", "matmul"):
                qkv = [torch.randn(batch, heads, tokens, 64, device=device, dtype=dtype, requires_grad=True)]
                qkv += [torch.randn_like(qkv[0], requires_grad=True) for _ in range(2)]

                def run(qkv=qkv, backend=backend) -> None:
                    attention(*qkv, backend=backend).float().sum().backward()

                ms = 1e3 * seconds_per_call(run, device, repeats)
                rows.append(
                    dict(shape=[batch, heads, tokens, 64], dtype=str(dtype)[6:], backend=backend, ms=ms)
                )
                print(
                    f"B={batch} H={heads} L={tokens} {rows[-1]['dtype']:>8} {backend:>6}: {ms:8.1f} ms",
                    flush=True,
                )
    return rows


def profile_top(model_cfg: dict, args: argparse.Namespace, device: torch.device, rows: int = 15) -> str:
    """The profiler's top operators (self time) for training steps in bf16, eager."""
    from torch.profiler import ProfilerActivity, profile

    work = Workload(model_cfg, args, device)
    step = work.train_step_fn(work.model, "bf16")
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            step()
        synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60)


def loss_check(model_cfg: dict, args: argparse.Namespace, device: torch.device) -> dict:
    """fp32 vs bf16 training losses over the first N steps on the same batches and noise."""
    from uvit.autoencoder import to_unit_range
    from uvit.diffusion import VPSchedule, noise_prediction_loss
    from uvit.shards import load_split

    images, _ = load_split(Path(args.data) / "train", limit=args.batch_size * args.loss_check)
    data = to_unit_range(images).to(device)
    initial = build_model(model_cfg, args.img_size, data.shape[1], 0).state_dict()
    curves = {}
    for precision in ("fp32", "bf16"):
        model = build_model(model_cfg, args.img_size, data.shape[1], 0).to(device)
        model.load_state_dict(initial)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=0.03)
        losses = []
        for step in range(args.loss_check):
            generator = torch.Generator(device).manual_seed(step)
            x0 = data[step * args.batch_size : (step + 1) * args.batch_size]
            with autocast(precision, device):
                loss = noise_prediction_loss(model, VPSchedule(), x0, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        curves[precision] = losses
    window = max(args.loss_check // 6, 10)
    windows = []
    for start in range(0, args.loss_check - window + 1, window):
        a, b = (curves[p][start : start + window] for p in ("fp32", "bf16"))
        stderr = statistics.stdev(a) / window**0.5
        windows.append(
            dict(
                steps=[start, start + window], fp32=statistics.mean(a), bf16=statistics.mean(b), stderr=stderr
            )
        )
        w = windows[-1]
        print(
            f"steps {start:4d}-{start + window:4d}: fp32 {w['fp32']:.4f}  bf16 {w['bf16']:.4f}  "
            f"diff {w['bf16'] - w['fp32']:+.4f}  (window standard error {stderr:.4f})",
            flush=True,
        )
    return dict(window=window, windows=windows, curves=curves)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="U-ViT-S/2", help="a model-zoo name")
    parser.add_argument("--experiment", help="take the model section of this params.yaml experiment instead")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument(
        "--classes", type=int, default=0, help="class-conditional model with this many classes"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--precision", nargs="+", default=["auto", "fp32", "bf16"], choices=["auto", "fp32", "bf16", "fp16"]
    )
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attention", action="store_true", help="time the attention kernels instead")
    parser.add_argument("--profile", action="store_true", help="print the profiler's top operators (bf16)")
    parser.add_argument("--loss-check", type=int, metavar="N", help="compare fp32/bf16 losses over N steps")
    parser.add_argument(
        "--data", default="data/prepared/fashion_mnist", help="prepared data for --loss-check"
    )
    parser.add_argument("--lr", type=float, default=2e-3, help="learning rate for --loss-check")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.experiment:
        model_cfg = resolve_experiment(load_params(), args.experiment)["model"]
        args.label = args.experiment
    else:
        model_cfg, args.label = model_settings(load_params(), {"model": {"name": args.model}}), args.model
    result: dict = dict(
        device=describe_device(device),
        processor=platform.processor() or platform.machine(),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        args={k: str(v) for k, v in vars(args).items()},
    )
    if args.attention:
        result["attention"] = attention_rows(device, args.repeats)
    elif args.loss_check:
        result["loss_check"] = loss_check(model_cfg, args, device)
    else:
        result["rows"] = throughput_rows(model_cfg, args, device)
        print_table(result["rows"])
        if args.profile:
            result["profile"] = profile_top(model_cfg, args, device)
            print(result["profile"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
