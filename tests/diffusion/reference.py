"""Independent reference implementations for the diffusion tests (plain formulas, float64).

Written from the equations, not from the package code, so that the package is checked against
something it does not share code with.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TWO_PI = 2.0 * math.pi


def wn_log_density(x: Tensor, mean: Tensor, sigma: Tensor, period: float, num_images: int):
    """log of the truncated wrapped normal, summing images of the raw difference x - mean."""
    terms = []
    for k in range(-num_images, num_images + 1):
        terms.append(-((x - mean + k * period) ** 2) / (2.0 * sigma**2))
    log_sum = torch.logsumexp(torch.stack(terms, dim=0), dim=0)
    return log_sum - torch.log(sigma) - 0.5 * math.log(2.0 * math.pi)


def kernel_coefficients(t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(e^{-t}, σ_v, c(t), σ_r) straight from the paper's formulas (internal time t)."""
    mean_coeff = torch.exp(-t)
    std_v = torch.sqrt(1.0 - torch.exp(-2.0 * t))
    coeff_r = (1.0 - torch.exp(-t)) / (1.0 + torch.exp(-t))
    std_r = torch.sqrt(2.0 * t + 8.0 / (1.0 + torch.exp(t)) - 4.0)
    return mean_coeff, std_v, coeff_r, std_r


def kernel_log_density(
    frac_coords_t: Tensor,
    velocity_t: Tensor,
    frac_coords_0: Tensor,
    velocity_0: Tensor,
    t: Tensor,
    num_images: int = 13,
) -> Tensor:
    """Σ over atoms/coordinates of log WN(r | μ_r, σ_r²) + log N(v_t | μ_v, σ_v²).

    Positions are fractional, velocities internal (radians per unit time), ``t [N, 1]``.
    """
    mean_coeff, std_v, coeff_r, std_r = kernel_coefficients(t)
    diff = frac_coords_t - frac_coords_0
    displacement = TWO_PI * (diff - torch.round(diff))
    mean_r = coeff_r * (velocity_t + velocity_0)
    log_wn = wn_log_density(displacement, mean_r, std_r.expand_as(mean_r), TWO_PI, num_images)
    mean_v = mean_coeff * velocity_0
    log_normal = -0.5 * ((velocity_t - mean_v) / std_v) ** 2 - torch.log(std_v)
    return (log_wn + log_normal).sum()


def autograd_velocity_score(frac_coords_t, velocity_t, frac_coords_0, velocity_0, t) -> Tensor:
    """∇_{v_t} log p(f_t, v_t | f₀, v₀) by autograd (internal units)."""
    velocity = velocity_t.detach().clone().requires_grad_(True)
    log_p = kernel_log_density(frac_coords_t, velocity, frac_coords_0, velocity_0, t)
    (grad,) = torch.autograd.grad(log_p, velocity)
    return grad


def centre(x: Tensor, batch_index: Tensor, num_crystals: int) -> Tensor:
    """Per-crystal mean removal written with a Python loop (reference for mean_free)."""
    out = x.clone()
    for crystal in range(num_crystals):
        mask = batch_index == crystal
        out[mask] = x[mask] - x[mask].mean(dim=0)
    return out


def simulate_kinetic_langevin(
    velocity_0: Tensor,
    times: list[float],
    dt: float,
    generator: torch.Generator,
) -> dict[float, tuple[Tensor, Tensor]]:
    """Euler–Maruyama paths of dr = v dt, dv = -v dt + √2 dW from (r, v) = (0, v₀).

    ``velocity_0`` holds one start per path; returns (r, v) at each of ``times``.
    """
    displacement = torch.zeros_like(velocity_0)
    velocity = velocity_0.clone()
    out: dict[float, tuple[Tensor, Tensor]] = {}
    checkpoints = {round(t / dt): t for t in times}
    for step in range(1, max(checkpoints) + 1):
        noise = torch.randn(velocity.shape, generator=generator, dtype=velocity.dtype)
        new_velocity = velocity - velocity * dt + math.sqrt(2.0 * dt) * noise
        displacement = displacement + 0.5 * (velocity + new_velocity) * dt
        velocity = new_velocity
        if step in checkpoints:
            out[checkpoints[step]] = (displacement.clone(), velocity.clone())
    return out


def gaussian_mixture_posterior_mean(
    x_t: Tensor, alpha: Tensor, sigma: Tensor, means: list[float], stds: list[float],
    weights: list[float],
) -> Tensor:  # fmt: skip
    """E[x₀ | x_t] for x₀ ~ Σ w_k N(m_k, s_k²) (per feature) and x_t = α x₀ + σ ε."""
    log_resp, cond_means = [], []
    for m, s, w in zip(means, stds, weights, strict=True):
        var = alpha**2 * s**2 + sigma**2
        log_resp.append(math.log(w) - 0.5 * (x_t - alpha * m) ** 2 / var - 0.5 * torch.log(var))
        cond_means.append(m + alpha * s**2 / var * (x_t - alpha * m))
    resp = torch.softmax(torch.stack(log_resp), dim=0)
    return (resp * torch.stack(cond_means)).sum(dim=0)
