"""Schedule, samplers and guidance against closed-form answers.

For Gaussian data x0 ~ N(m, c^2) the exact noise predictor is known:
eps(x_t, t) = sigma_t (x_t - alpha_t m) / s_t^2 with s_t^2 = alpha_t^2 c^2 + sigma_t^2, and the probability-flow
ODE keeps (x_t - alpha_t m) / s_t constant, so an ODE solver's exact answer is known for every start point.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from uvit.diffusion import (
    DiscreteSchedule,
    SeededNoise,
    VPSchedule,
    dpm_solver,
    dpm_solver_fast_orders,
    dpm_solver_pp,
    dpm_solver_pp_2m,
    dpm_solver_pp_step,
    dpm_solver_step,
    drop_condition,
    euler_maruyama,
    guided_noise_predictor,
    make_schedule,
    noise_prediction_loss,
    sample,
)
from uvit.model import UViT

SCHEDULE = VPSchedule()
STABLE = DiscreteSchedule.stable()
MEAN, STD = 0.3, 0.5


def gaussian_eps(x: torch.Tensor, t: torch.Tensor, schedule=SCHEDULE) -> torch.Tensor:
    t = t.double()
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    return (sigma * (x.double() - alpha * MEAN) / (alpha**2 * STD**2 + sigma**2)).to(x.dtype)


def exact_flow(x_start: torch.Tensor, t_start: float, t_end: float, schedule=SCHEDULE) -> torch.Tensor:
    def scale(t):
        t = torch.tensor([float(t)], dtype=torch.float64)
        return schedule.alpha(t), torch.sqrt(schedule.alpha(t) ** 2 * STD**2 + schedule.sigma(t) ** 2)

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


class BatchNoise:
    """The samplers' noise source drawn from one generator for the whole batch: the moment tests need independent
    normal draws, not SeededNoise's one generator per sample (batch independence has its own test), which costs
    2 million generator calls at 2,000 samples x 1,000 Euler-Maruyama steps (~10 s of CPU per test)."""

    def __init__(self, seed: int, count: int, shape: tuple[int, ...]):
        self.shape, self.generator = (count, *shape), torch.Generator().manual_seed(seed)

    def draw(self) -> torch.Tensor:
        return torch.randn(self.shape, generator=self.generator)


def test_euler_maruyama_recovers_gaussian_moments():
    n = 2000
    samples = euler_maruyama(gaussian_eps, SCHEDULE, BatchNoise(1, n, (1,)), steps=1000).double()
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
@pytest.mark.parametrize(
    ("sampler", "schedule"),
    [
        ("dpm_solver", "vp_linear"),
        ("euler_maruyama", "vp_linear"),
        ("dpm_solver_pp", "stable"),
        ("dpm_solver_pp_2m", "stable"),
    ],
)
def test_samples_do_not_depend_on_the_batch(sampler, schedule):
    model = tiny_class_model()
    labels = torch.tensor([i % 3 for i in range(6)])
    schedule = make_schedule(schedule)

    def draw(indices):
        fn = guided_noise_predictor(model, schedule, labels[indices], 3, 0.4)
        return sample(fn, schedule, SeededNoise(7, indices, (1, 8, 8)), sampler, steps=6)

    whole = draw(list(range(6)))
    parts = torch.cat([draw([0, 1]), draw([2, 3, 4]), draw([5])])
    torch.testing.assert_close(whole, parts, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------------
# Discrete schedules, the objective, and DPM-Solver++ through diffusers
# --------------------------------------------------------------------------------------------------------


def test_discrete_schedules_follow_their_definitions():
    torch.testing.assert_close(STABLE.betas[[0, -1]], torch.tensor([0.00085, 0.012], dtype=torch.float64))
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    n = torch.tensor([1.0, 2.0, 500.0, 1000.0], dtype=torch.float64)
    assert torch.equal(STABLE.betas, betas)  # computed in float64, as Stable Diffusion and the authors do
    expected = torch.stack([torch.prod(1 - betas[: int(k)]) for k in n])
    torch.testing.assert_close(STABLE.alpha(n) ** 2, expected)
    torch.testing.assert_close(STABLE.alpha(n) ** 2 + STABLE.sigma(n) ** 2, torch.ones_like(n))
    torch.testing.assert_close(STABLE.log_snr(n), torch.log(STABLE.alpha(n) / STABLE.sigma(n)))
    assert torch.equal(STABLE.model_time(n), n)
    ddpm = DiscreteSchedule.ddpm_linear()
    torch.testing.assert_close(ddpm.betas[[0, -1]], torch.tensor([1e-4, 0.02], dtype=torch.float64))
    with pytest.raises(ValueError, match="from 1 to 1000"):
        STABLE.alpha(torch.tensor([0.0]))


def test_training_times_are_the_authors():
    g = torch.Generator().manual_seed(0)
    steps = STABLE.sample_time(200_000, g)
    assert steps.min() == 1 and steps.max() == 1000 and torch.equal(steps, steps.round())
    counts = torch.bincount(steps.long(), minlength=1001)[1:].double()
    assert abs(counts.mean() - 200) < 1e-9 and counts.std() < 1.3 * math.sqrt(200)  # uniform: Poisson spread
    times = VPSchedule.sample_time(200_000, g)
    assert times.min() >= 0 and times.max() < 1 and abs(times.mean() - 0.5) < 4 * math.sqrt(1 / 12 / 200_000)


@pytest.mark.parametrize("name", ["vp_linear", "stable", "ddpm_linear"])
def test_loss_of_the_exact_predictor_matches_its_closed_form(name):
    """For x0 ~ N(m, c^2) the Bayes-optimal eps-predictor's MSE is E_t[alpha_t^2 c^2 / (alpha_t^2 c^2 + sigma_t^2)]."""
    schedule = make_schedule(name)
    x0 = MEAN + STD * torch.randn(400_000, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def exact(x, t):
        alpha, sigma = schedule.alpha(t)[:, None].double(), schedule.sigma(t)[:, None].double()
        return sigma * (x - alpha * MEAN) / (alpha**2 * STD**2 + sigma**2)

    loss = noise_prediction_loss(exact, _IdentityTime(schedule), x0, torch.Generator().manual_seed(2)).item()
    if name == "vp_linear":
        t = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000  # midpoint rule over U(0, 1)
    else:
        t = torch.arange(1, 1001, dtype=torch.float64)
    a2 = schedule.alpha(t) ** 2
    expected = (a2 * STD**2 / (a2 * STD**2 + schedule.sigma(t) ** 2)).mean().item()
    assert abs(loss - expected) < 0.01 * expected + 4 * math.sqrt(2 / 400_000), (loss, expected)


class _IdentityTime:
    """The schedule, feeding the closed-form predictor the schedule's own time rather than the network's."""

    def __init__(self, schedule):
        self.schedule = schedule

    def __getattr__(self, name):
        return getattr(self.schedule, name)

    @staticmethod
    def model_time(t):
        return t


def test_condition_dropout_rate():
    labels = torch.arange(100_000) % 10
    dropped = drop_condition(labels, 10, 0.15, torch.Generator().manual_seed(0))
    rate = (dropped == 10).double().mean().item()
    assert abs(rate - 0.15) < 4 * math.sqrt(0.15 * 0.85 / 100_000)
    kept = dropped != 10
    assert torch.equal(dropped[kept], labels[kept])


discrete_gaussian_eps = functools.partial(gaussian_eps, schedule=STABLE)
discrete_exact_flow = functools.partial(exact_flow, schedule=STABLE)


def dpm_pp_error(steps: int, order: int = 3, multistep: bool = False) -> float:
    x = torch.linspace(-3, 3, 64, dtype=torch.float64)[:, None]
    noise = _FixedNoise(x)
    if multistep:
        out = dpm_solver_pp_2m(discrete_gaussian_eps, STABLE, noise, steps)
    else:
        out = dpm_solver_pp(discrete_gaussian_eps, STABLE, noise, steps, order)
    return (out - discrete_exact_flow(x, 1000, 1)).abs().max().item()


class _FixedNoise:
    def __init__(self, x):
        self.x = x

    def draw(self):
        return self.x.clone()


# Max error over x_T in [-3, 3] against the exact flow from n = 1000 to n = 1, measured at the paper's 50 steps:
# 2M 2.8e-2, singlestep-3 2.3e-2, singlestep-2 4.6e-2, singlestep-1 7.5e-2. The time-uniform grid the authors use ends with one
# large log-SNR step (n = 21 -> 1 spans a third of the log-SNR range), which dominates the error.
@pytest.mark.parametrize(
    ("multistep", "order", "tolerance"),
    [(True, 2, 0.035), (False, 3, 0.03), (False, 2, 0.055), (False, 1, 0.09)],
)
def test_dpm_solver_pp_matches_the_exact_flow_at_50_steps(multistep, order, tolerance):
    assert dpm_pp_error(50, order, multistep) < tolerance


# Slopes over 100/200/400 steps; 98/200/398 for singlestep-3 (budgets of 2 mod 3, so that its fast pattern
# ends with one second-order step, never a first-order one). The authors' time-uniform grid has very unequal log-SNR steps; a solver of
# order k still converges faster than order k - 1 allows.
@pytest.mark.parametrize(
    ("multistep", "order", "min_slope"), [(True, 2, 1.8), (False, 3, 1.8), (False, 2, 1.5), (False, 1, 0.85)]
)
def test_dpm_solver_pp_converges_at_its_order(multistep, order, min_slope):
    steps = [98, 200, 398] if order == 3 and not multistep else [100, 200, 400]
    errors = [dpm_pp_error(n, order, multistep) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert slope > min_slope, (errors, slope)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_solver_pp_step_integrates_its_polynomial_exactly(order):
    """DPM-Solver++ is exact when the data prediction is a polynomial in log-SNR of the degree it assumes
    (order 1: constant; order 3, the authors' `dpm_solver` variant: linear in lambda), on unequal inner points:
    x_t = sigma_t/sigma_s x_s + sigma_t int e^lam x0(lam) dlam, in closed form for x0 = a + b (lam - lam_s)."""
    a, b = 0.7, -0.2 if order == 3 else 0.0
    times = torch.tensor(
        [*[900.0, 610.5, 333.25, 41.75][:order], 41.75], dtype=torch.float64
    )  # float32-exact
    lam_s = STABLE.log_snr(times[:1])

    def eps_fn(x, t):
        t = t.double()
        x0 = a + b * (STABLE.log_snr(t) - lam_s)
        return (x - STABLE.alpha(t) * x0) / STABLE.sigma(t)

    x = torch.linspace(-3, 3, 16, dtype=torch.float64)[:, None]
    out = dpm_solver_pp_step(eps_fn, STABLE, x, times)
    alpha, sigma, lam = STABLE.alpha(times), STABLE.sigma(times), STABLE.log_snr(times)
    h = lam[-1] - lam[0]
    exact = sigma[-1] / sigma[0] * x + alpha[-1] * (a * -torch.expm1(-h) + b * (h - 1 + torch.exp(-h)))
    assert (out - exact).abs().max() < 1e-9


def test_dpm_solver_pp_is_the_authors_fast_pattern_on_continuous_time():
    """50 steps: the authors' orders (16 third-order steps, then one second-order), 51 times uniform in t from 1
    to 1/N, the network fed t * N unrounded, inner evaluations on the grid points."""
    seen = []

    def eps_fn(x, t):
        seen.append(t.item())
        return torch.zeros_like(x)

    dpm_solver_pp(eps_fn, STABLE, _FixedNoise(torch.zeros(1, 1, dtype=torch.float64)), 50)
    grid = np.linspace(1.0, 1.0 / 1000, 51) * 1000
    assert len(seen) == 50
    assert np.allclose(seen, grid[:-1], rtol=1e-6)  # every grid point but t = 1/N is evaluated once
    assert any(abs(t - round(t)) > 0.1 for t in seen)  # continuous time: most grid points are not integers


def reference_dpm_solver_pp_2m(
    eps_fn, schedule: DiscreteSchedule, x: torch.Tensor, grid: list[int]
) -> torch.Tensor:
    """DPM-Solver++(2M), Algorithm 2 of Lu et al. (2022b), written independently of diffusers, on the step
    numbers `grid` (decreasing); first order on the first and on the last step (diffusers' euler_at_final)."""
    n = torch.tensor(grid, dtype=torch.float64)
    alpha, sigma, lam = schedule.alpha(n), schedule.sigma(n), schedule.log_snr(n)
    previous = None
    for i in range(len(grid) - 1):
        eps = eps_fn(x, n[i : i + 1])
        data = (x - sigma[i] * eps) / alpha[i]
        h = lam[i + 1] - lam[i]
        last = i == len(grid) - 2
        if previous is None or last:
            d = data
        else:
            r = (lam[i] - lam[i - 1]) / h
            d = (1 + 1 / (2 * r)) * data - 1 / (2 * r) * previous
        x = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * torch.expm1(-h) * d
        previous = data
    return x


@pytest.mark.parametrize("steps", [10, 25, 50])
def test_dpm_solver_pp_2m_equals_an_independent_implementation(steps):
    """Measured max difference (float32 scheduler tables vs float64 reference): below 1e-5 at every step count."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps)
    grid = [int(k) + 1 for k in scheduler.timesteps] + [1]
    x = torch.linspace(-3, 3, 64, dtype=torch.float64)[:, None]
    ours = dpm_solver_pp_2m(discrete_gaussian_eps, STABLE, _FixedNoise(x), steps)
    reference = reference_dpm_solver_pp_2m(discrete_gaussian_eps, STABLE, x.clone(), grid)
    assert (ours - reference).abs().max() < 1e-5


# --------------------------------------------------------------------------------------------------------
# A two-component Gaussian mixture: exact noise predictor, every sampler at the paper's step counts
# --------------------------------------------------------------------------------------------------------

WEIGHTS, MEANS, STDS = (0.3, 0.7), (-1.0, 0.8), (0.3, 0.5)


def mixture_eps(schedule):
    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = schedule.alpha(t.double()), schedule.sigma(t.double())
        x = x.double()
        log_r, scores = [], []
        for w, m, c in zip(WEIGHTS, MEANS, STDS, strict=True):
            var = alpha**2 * c**2 + sigma**2
            log_r.append(math.log(w) - 0.5 * torch.log(var) - (x - alpha * m) ** 2 / (2 * var))
            scores.append(-(x - alpha * m) / var)
        resp = torch.softmax(torch.stack(log_r), dim=0)
        return (-sigma * (resp * torch.stack(scores)).sum(0)).float()

    return eps


def mixture_moments(alpha: float, sigma: float) -> tuple[float, float, float]:
    """Mean, variance and fourth central moment of alpha x0 + sigma eps."""
    mean = alpha * sum(w * m for w, m in zip(WEIGHTS, MEANS, strict=True))
    mu4 = var = 0.0
    for w, m, c in zip(WEIGHTS, MEANS, STDS, strict=True):
        d, v = alpha * m - mean, alpha**2 * c**2 + sigma**2
        var += w * (v + d**2)
        mu4 += w * (d**4 + 6 * d**2 * v + 3 * v**2)
    return mean, var, mu4


@pytest.mark.parametrize(
    ("sampler", "schedule", "steps", "samples"),
    [
        ("euler_maruyama", "vp_linear", 1000, 2000),
        ("dpm_solver", "vp_linear", 50, 20000),
        ("dpm_solver_pp", "stable", 50, 20000),
        ("dpm_solver_pp_2m", "stable", 50, 20000),
    ],
)
def test_samplers_recover_the_moments_of_a_gaussian_mixture(sampler, schedule, steps, samples):
    """Tolerance: 4 standard errors of the sample mean and variance at this sample count (at the end time of
    each sampler: t=0 for Euler-Maruyama, t=1e-4 for DPM-Solver, n=1 for DPM-Solver++)."""
    sched = make_schedule(schedule)
    x = sample(mixture_eps(sched), sched, BatchNoise(3, samples, (1,)), sampler, steps).double()
    end = {"euler_maruyama": (1.0, 0.0), "dpm_solver": None, "dpm_solver_pp": None, "dpm_solver_pp_2m": None}[
        sampler
    ]
    if end is None:
        t_end = torch.tensor([1e-4 if schedule == "vp_linear" else 1.0], dtype=torch.float64)
        end = (sched.alpha(t_end).item(), sched.sigma(t_end).item())
    mean, var, mu4 = mixture_moments(*end)
    assert abs(x.mean().item() - mean) < 4 * math.sqrt(var / samples)
    assert abs(x.var().item() - var) < 4 * math.sqrt((mu4 - var**2) / samples)


def test_discrete_samplers_refuse_the_continuous_schedule():
    with pytest.raises(ValueError, match="runs on the schedules"):
        sample(gaussian_eps, SCHEDULE, SeededNoise(0, [0], (1,)), "dpm_solver_pp", 10)
    with pytest.raises(ValueError, match=r"unknown sampler 'ddim' \(known: euler_maruyama, dpm_solver, "):
        sample(gaussian_eps, SCHEDULE, SeededNoise(0, [0], (1,)), "ddim", 10)


@pytest.mark.parametrize("name", ["vp_linear", "stable"])
def test_loss_draws_times_and_noise_from_its_generator_only(name):
    """A seeded generator fixes the loss whatever the global RNG has done (resumable, per-step seeding)."""
    schedule, x0 = make_schedule(name), torch.randn(64, 1, 4, 4)

    def loss(global_seed: int) -> float:
        torch.manual_seed(global_seed)
        return noise_prediction_loss(lambda x, t: x, schedule, x0, torch.Generator().manual_seed(3)).item()

    assert loss(0) == loss(1)
