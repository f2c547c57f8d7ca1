"""Sampler accuracy on Gaussian data, where the exact noise predictor and the exact ODE flow are known.

Usage (from the project root):
    python benchmarks/sampler_accuracy.py --json benchmarks/results/sampler_accuracy.json

For x0 ~ N(m, c^2), eps(x_t, t) = sigma_t (x_t - alpha_t m) / (alpha_t^2 c^2 + sigma_t^2), and the probability-flow
ODE keeps (x_t - alpha_t m) / sqrt(alpha_t^2 c^2 + sigma_t^2) constant. For each sampler and step count this
prints the largest deviation from that exact flow over start points x_T in [-3, 3] (ODE samplers), and the
error of the sample mean and standard deviation over 4,000 seeded samples (all samplers; Euler-Maruyama is
stochastic, so only these apply to it), next to one standard error of each.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from uvit.diffusion import SeededNoise, VPSchedule, make_schedule, sample

MEAN, STD = 0.3, 0.5
RUNS = [
    ("euler_maruyama", "vp_linear", [100, 250, 1000]),
    ("dpm_solver", "vp_linear", [10, 25, 50]),
    ("dpm_solver_pp", "stable", [10, 20, 25, 50]),  # the authors' singlestep DPM-Solver++ (fast, order 3)
    ("dpm_solver_pp_2m", "stable", [10, 20, 25, 50]),
]


def gaussian_eps(schedule):
    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = schedule.alpha(t.double()), schedule.sigma(t.double())
        return (sigma * (x.double() - alpha * MEAN) / (alpha**2 * STD**2 + sigma**2)).to(x.dtype)

    return eps


def end_time(schedule) -> torch.Tensor:
    """Where each sampler stops: t = 1e-4 (DPM-Solver), n = 1 (DPM-Solver++); Euler-Maruyama reaches t = 0."""
    return torch.tensor([1e-4 if isinstance(schedule, VPSchedule) else 1.0], dtype=torch.float64)


def marginal(schedule, t: torch.Tensor) -> tuple[float, float]:
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    return (alpha * MEAN).item(), torch.sqrt(alpha**2 * STD**2 + sigma**2).item()


class FixedStart:
    def __init__(self, x: torch.Tensor):
        self.x = x

    def draw(self) -> torch.Tensor:
        return self.x.clone()


def measure(sampler: str, schedule_name: str, steps: int, samples: int) -> dict:
    schedule = make_schedule(schedule_name)
    eps = gaussian_eps(schedule)
    row = dict(sampler=sampler, schedule=schedule_name, steps=steps)
    if sampler == "euler_maruyama":
        target_mean, target_std = MEAN, STD
    else:
        target_mean, target_std = marginal(schedule, end_time(schedule))
        start = torch.linspace(-3, 3, 121, dtype=torch.float64)[:, None]
        out = sample(eps, schedule, FixedStart(start), sampler, steps).double()
        start_mean, start_std = marginal(
            schedule, torch.tensor([1.0 if schedule_name == "vp_linear" else 1000.0])
        )
        exact = target_mean + target_std * (start - start_mean) / start_std
        row["max_flow_error"] = (out - exact).abs().max().item()
    x = sample(eps, schedule, SeededNoise(0, list(range(samples)), (1,)), sampler, steps).double()
    row |= dict(
        mean_error=x.mean().item() - target_mean,
        std_error=x.std().item() - target_std,
        mean_stderr=target_std / math.sqrt(samples),
        std_stderr=target_std / math.sqrt(2 * (samples - 1)),
    )
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = [measure(s, sched, n, args.samples) for s, sched, steps in RUNS for n in steps]
    print("| sampler | schedule | steps | max flow error | mean error | std error | 1 s.e. (mean / std) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        flow = f"{r['max_flow_error']:.1e}" if "max_flow_error" in r else "-"
        print(
            f"| {r['sampler']} | {r['schedule']} | {r['steps']} | {flow} | {r['mean_error']:+.4f} | "
            f"{r['std_error']:+.4f} | {r['mean_stderr']:.4f} / {r['std_stderr']:.4f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(mean=MEAN, std=STD, samples=args.samples, rows=rows), indent=1))


if __name__ == "__main__":
    main()
