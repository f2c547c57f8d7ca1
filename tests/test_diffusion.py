"""Schedule, samplers and guidance against closed-form answers.

For Gaussian data x0 ~ N(m, c^2) the exact noise predictor is known:
eps(x_t, t) = sigma_t (x_t - alpha_t m) / s_t^2 with s_t^2 = alpha_t^2 c^2 + sigma_t^2, and the probability-flow
ODE keeps (x_t - alpha_t m) / s_t constant, so an ODE solver's exact answer is known for every start point.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from uvit.diffusion import (
    SeededNoise,
    VPSchedule,
    dpm_solver,
    dpm_solver_fast_orders,
    dpm_solver_step,
    euler_maruyama,
    guided_noise_predictor,
)
from uvit.model import UViT

SCHEDULE = VPSchedule()
MEAN, STD = 0.3, 0.5


def gaussian_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.double()
    alpha, sigma = SCHEDULE.alpha(t), SCHEDULE.sigma(t)
    return (sigma * (x.double() - alpha * MEAN) / (alpha**2 * STD**2 + sigma**2)).to(x.dtype)


def exact_flow(x_start: torch.Tensor, t_start: float, t_end: float) -> torch.Tensor:
    def scale(t):
        t = torch.tensor(t, dtype=torch.float64)
        return SCHEDULE.alpha(t), torch.sqrt(SCHEDULE.alpha(t) ** 2 * STD**2 + SCHEDULE.sigma(t) ** 2)

    (a0, s0), (a1, s1) = scale(t_start), scale(t_end)
    return a1 * MEAN + s1 * (x_start.double() - a0 * MEAN) / s0


def test_schedule_identities():
    t = torch.linspace(1e-4, 1.0, 101, dtype=torch.float64)
    torch.testing.assert_close(SCHEDULE.alpha(t) ** 2 + SCHEDULE.sigma(t) ** 2, torch.ones_like(t))
    torch.testing.assert_close(SCHEDULE.alpha(t) ** 2, torch.exp(-(0.1 * t + 9.95 * t**2)))
    torch.testing.assert_close(SCHEDULE.time_of_log_snr(SCHEDULE.log_snr(t)), t)
    assert SCHEDULE.model_time(torch.tensor(1.0)) == 999.0


def test_fast_order_pattern_spends_exactly_the_step_budget():
    for steps in range(3, 60):
        for order in (1, 2, 3):
            assert sum(dpm_solver_fast_orders(steps, order)) == steps
    assert dpm_solver_fast_orders(25, 3) == [3] * 8 + [1]
    assert dpm_solver_fast_orders(24, 3) == [3] * 7 + [2, 1]


@pytest.mark.parametrize(("steps", "tolerance"), [(25, 1e-2), (50, 1.5e-3)])
def test_dpm_solver_matches_the_exact_flow_of_gaussian_data(steps, tolerance):
    """Measured: max error 5.9e-3 at 25 steps, 6.7e-4 at 50 (the fast pattern ends with a first-order step)."""
    noise = SeededNoise(0, list(range(256)), (1,))
    samples = dpm_solver(lambda x, t: gaussian_eps(x, t), SCHEDULE, noise, steps=steps).double()
    exact = exact_flow(SeededNoise(0, list(range(256)), (1,)).draw().double(), 1.0, 1e-4)
    assert (samples - exact).abs().max() < tolerance


def uniform_solver_error(order: int, steps: int) -> float:
    x = torch.linspace(-3, 3, 64, dtype=torch.float64)[:, None]
    lam = torch.linspace(
        SCHEDULE.log_snr(torch.tensor(1.0, dtype=torch.float64)).item(),
        SCHEDULE.log_snr(torch.tensor(1e-3, dtype=torch.float64)).item(),
        steps + 1,
        dtype=torch.float64,
    )
    times, out = SCHEDULE.time_of_log_snr(lam), x.clone()
    for k in range(steps):
        out = dpm_solver_step(lambda y, t: gaussian_eps(y, t), SCHEDULE, out, times[k], times[k + 1], order)
    return (out - exact_flow(x, 1.0, times[-1].item())).abs().max().item()


@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_solver_converges_at_its_order(order):
    steps = [4, 8, 16, 32]
    errors = [uniform_solver_error(order, n) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert slope > order - 0.35, (order, errors, slope)


def test_euler_maruyama_recovers_gaussian_moments():
    n = 2000
    samples = euler_maruyama(
        gaussian_eps, SCHEDULE, SeededNoise(1, list(range(n)), (1,)), steps=1000
    ).double()
    # Tolerances: 4 standard errors of the sample mean and of the sample variance.
    assert abs(samples.mean().item() - MEAN) < 4 * STD / math.sqrt(n)
    assert abs(samples.var().item() / STD**2 - 1) < 4 * math.sqrt(2 / (n - 1))


def tiny_class_model() -> UViT:
    torch.manual_seed(0)
    return UViT(
        img_size=8, in_chans=1, embed_dim=32, depth=3, num_heads=2, patch_size=4, num_classes=4
    ).eval()


@torch.no_grad()
def test_guidance_follows_the_paper_convention():
    model, x, t = tiny_class_model(), torch.randn(3, 1, 8, 8), torch.tensor([0.5])
    labels = torch.tensor([0, 1, 2])
    eps_c = model(x, torch.full((3,), 0.5 * 999), labels)
    eps_u = model(x, torch.full((3,), 0.5 * 999), torch.full((3,), 3))
    torch.testing.assert_close(guided_noise_predictor(model, SCHEDULE, labels, 3, 0.0)(x, t), eps_c)
    guided = guided_noise_predictor(model, SCHEDULE, labels, 3, 0.4)(x, t)
    torch.testing.assert_close(guided, eps_c + 0.4 * (eps_c - eps_u), rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("sampler", ["dpm_solver", "euler_maruyama"])
def test_samples_do_not_depend_on_the_batch(sampler):
    model = tiny_class_model()
    labels = torch.tensor([i % 3 for i in range(6)])

    def draw(indices):
        fn = guided_noise_predictor(model, SCHEDULE, labels[indices], 3, 0.4)
        noise = SeededNoise(7, indices, (1, 8, 8))
        if sampler == "dpm_solver":
            return dpm_solver(fn, SCHEDULE, noise, steps=6)
        return euler_maruyama(fn, SCHEDULE, noise, steps=5)

    whole = draw(list(range(6)))
    parts = torch.cat([draw([0, 1]), draw([2, 3, 4]), draw([5])])
    torch.testing.assert_close(whole, parts, rtol=1e-5, atol=1e-5)
