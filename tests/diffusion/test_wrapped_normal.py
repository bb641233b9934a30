"""Wrapped-normal score, its normalization E[s²], and the wrapping helpers."""

import math

import pytest
import torch

from kldm_cli.diffusion.wrapped_normal import (
    wrap_centered,
    wrap_unit,
    wrapped_normal_log_prob,
    wrapped_normal_score,
    wrapped_normal_score_sq_mean,
    wrapped_normal_score_sq_ratio,
)

from .reference import TWO_PI, wn_log_density

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("period", [TWO_PI, 1.0])
def test_score_matches_autograd_of_truncated_log_density(period):
    generator = torch.Generator().manual_seed(0)
    sigma = torch.logspace(math.log10(0.01), math.log10(5.0), 40, dtype=torch.float64)
    sigma = (sigma * period / TWO_PI)[:, None].expand(40, 64)
    mean = (torch.rand(40, 64, generator=generator, dtype=torch.float64) - 0.5) * period
    # points within a few σ of the mean and anywhere on the circle
    near = mean + sigma * torch.randn(40, 64, generator=generator, dtype=torch.float64)
    anywhere = mean + (torch.rand(40, 64, generator=generator, dtype=torch.float64) - 0.5) * period
    for x in (near, anywhere):
        x = x.clone().requires_grad_(True)
        log_p = wn_log_density(x, mean, sigma, period, num_images=13)
        (expected,) = torch.autograd.grad(log_p.sum(), x)
        got = wrapped_normal_score(x.detach(), mean, sigma, period=period, num_images=13)
        scale = 1.0 / sigma  # typical magnitude of the score
        assert torch.allclose(got / scale, expected / scale, atol=1e-9, rtol=1e-9)
        # and ∂/∂mean = -∂/∂x
        mean_ = mean.clone().requires_grad_(True)
        log_p = wn_log_density(x.detach(), mean_, sigma, period, num_images=13)
        (grad_mean,) = torch.autograd.grad(log_p.sum(), mean_)
        assert torch.allclose(-got / scale, grad_mean / scale, atol=1e-9, rtol=1e-9)


def test_score_is_periodic_and_matches_normal_for_small_sigma():
    x = torch.linspace(-3.0, 3.0, 101, dtype=torch.float64)
    sigma = torch.tensor(0.05, dtype=torch.float64)
    a = wrapped_normal_score(x, 0.3, sigma)
    b = wrapped_normal_score(x + 3 * TWO_PI, 0.3, sigma)
    assert torch.allclose(a, b, atol=1e-8)
    near = (x - 0.3).abs() < 1.0
    assert torch.allclose(a[near], -(x[near] - 0.3) / sigma**2, rtol=1e-12)


def test_log_prob_is_normalized_and_matches_reference():
    x = torch.linspace(-math.pi, math.pi, 20001, dtype=torch.float64)
    for sigma in (0.1, 0.7, 2.0, 5.0):
        s = torch.tensor(sigma, dtype=torch.float64)
        density = wrapped_normal_log_prob(x, 1.0, s).exp()
        integral = torch.trapezoid(density, x)
        assert abs(float(integral) - 1.0) < 1e-6
        expected = wn_log_density(x, torch.tensor(1.0, dtype=torch.float64), s, TWO_PI, 13)
        # the reference sums images of the raw difference, the package of its principal value
        assert torch.allclose(wrapped_normal_log_prob(x, 1.0, s), expected, atol=1e-10)


def test_score_sq_mean_matches_monte_carlo():
    generator = torch.Generator().manual_seed(1)
    num_samples = 100_000
    for sigma in (0.05, 0.98, 1.5, 2.5):
        s = torch.tensor(sigma, dtype=torch.float64)
        samples = sigma * torch.randn(num_samples, generator=generator, dtype=torch.float64)
        score_sq = wrapped_normal_score(samples, 0.0, s).square()
        monte_carlo = float(score_sq.mean())
        standard_error = float(score_sq.std()) / math.sqrt(num_samples)
        quadrature = float(wrapped_normal_score_sq_mean(s))
        assert abs(quadrature - monte_carlo) < 5 * standard_error, sigma


def test_score_sq_ratio_limits():
    sigma = torch.tensor([0.0, 1e-4, 0.1, 0.3, 1.0, 3.0], dtype=torch.float64)
    ratio = wrapped_normal_score_sq_ratio(sigma)
    assert torch.allclose(ratio[:4], torch.ones(4, dtype=torch.float64), atol=1e-12)
    assert 0.9 < float(ratio[4]) < 0.99  # wrapping is already visible at σ = 1
    assert float(ratio[5]) < 1e-2  # close to uniform
    assert torch.all(ratio[1:].diff() <= 1e-15)  # decreasing in σ
    # deterministic: same numbers on every call
    assert torch.equal(ratio, wrapped_normal_score_sq_ratio(sigma))


def test_wrap_unit_stays_in_half_open_interval():
    x = torch.tensor([-1e-9, -1e-30, 0.0, 1.0, 2.5, -0.25, 7.0 - 1e-9], dtype=torch.float32)
    wrapped = wrap_unit(x)
    assert torch.all((wrapped >= 0.0) & (wrapped < 1.0))
    assert torch.allclose(wrapped[[2, 3, 4, 5]], torch.tensor([0.0, 0.0, 0.5, 0.75]))
    x = torch.randn(10_000, dtype=torch.float64) * 10
    assert torch.allclose(torch.cos(TWO_PI * wrap_unit(x)), torch.cos(TWO_PI * x), atol=1e-9)


def test_wrap_centered():
    x = torch.tensor([0.1, 3.5, -3.5, 10.0], dtype=torch.float64)
    wrapped = wrap_centered(x, TWO_PI)
    assert torch.all(wrapped.abs() <= math.pi)
    assert torch.allclose(torch.sin(wrapped), torch.sin(x)) and torch.allclose(
        torch.cos(wrapped), torch.cos(x)
    )
