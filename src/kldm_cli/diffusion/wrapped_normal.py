"""Wrapped normal distribution on a circle of length ``period``, and wrapping helpers.

The wrapped normal WN(x | μ, σ²) is the law of ``x = μ + σ z (mod period)``, ``z ~ N(0, 1)``:

    WN(x | μ, σ²) = 1 / (σ √(2π)) Σ_k exp(-(x - μ + k·period)² / (2σ²)),   k ∈ ℤ,

truncated here to ``|k| ≤ num_images`` around the principal value of ``x - μ``. Its score and
the expected squared score E[s²] (the Fisher information of the location) are what the kinetic
Langevin process needs (paper, "Transition kernel" and design choice 2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def wrap_unit(x: Tensor) -> Tensor:
    """``x mod 1`` in ``[0, 1)`` (fractional coordinates).

    ``x - floor(x)`` can round up to exactly 1 for tiny negative ``x``; that case maps to 0.
    """
    wrapped = x - torch.floor(x)
    return torch.where(wrapped >= 1.0, torch.zeros_like(wrapped), wrapped)


def wrap_centered(x: Tensor, period: float) -> Tensor:
    """The representative of ``x mod period`` in ``[-period/2, period/2]``."""
    return x - period * torch.round(x / period)


def _image_offsets(num_images: int, like: Tensor) -> Tensor:
    """``k · period`` factors ``[-num_images, ..., num_images]`` as a tensor like ``like``."""
    return torch.arange(-num_images, num_images + 1, device=like.device, dtype=like.dtype)


def _periodic_images(
    x: Tensor | float, mean: Tensor | float, sigma: Tensor | float, period: float, num_images: int
) -> tuple[Tensor, Tensor]:
    """``(d + k·period [..., 2 num_images + 1], sigma [..., 1])`` with ``d`` the principal value
    of ``x - mean`` (all three broadcast together)."""
    x, mean, sigma = torch.broadcast_tensors(*_as_tensors(x, mean, sigma))
    diff = wrap_centered(x - mean, period).unsqueeze(-1)
    shifted = diff + period * _image_offsets(num_images, diff)
    sigma = sigma.unsqueeze(-1)
    return shifted, sigma


def wrapped_normal_log_prob(
    x: Tensor,
    mean: Tensor | float,
    sigma: Tensor | float,
    period: float = 2.0 * math.pi,
    num_images: int = 13,
) -> Tensor:
    """Elementwise log WN(x | mean, sigma²) (normalized density w.r.t. length on the circle)."""
    shifted, sigma = _periodic_images(x, mean, sigma, period, num_images)
    log_terms = -0.5 * (shifted / sigma).square()
    return (
        torch.logsumexp(log_terms, dim=-1)
        - torch.log(sigma.squeeze(-1))
        - 0.5 * math.log(2.0 * math.pi)
    )


def wrapped_normal_score(
    x: Tensor,
    mean: Tensor | float,
    sigma: Tensor | float,
    period: float = 2.0 * math.pi,
    num_images: int = 13,
) -> Tensor:
    """Elementwise score ``∂/∂x log WN(x | mean, sigma²)``.

    Note ``∂/∂mean log WN = -∂/∂x log WN``. Computed as a softmax-weighted sum over the
    periodic images, so it is stable for every σ (no 0/0 for small σ, no underflow far from
    the mean):

        s(x) = -Σ_k w_k (d + k·period) / σ²,   w = softmax_k(-(d + k·period)² / (2σ²)),

    with ``d`` the principal value of ``x - mean``.
    """
    shifted, sigma = _periodic_images(x, mean, sigma, period, num_images)
    weights = torch.softmax(-0.5 * (shifted / sigma).square(), dim=-1)
    return -(weights * shifted).sum(dim=-1) / sigma.squeeze(-1).square()


def _as_tensors(*values: Tensor | float) -> list[Tensor]:
    like = next((v for v in values if isinstance(v, Tensor)), None)
    if like is None:
        return [torch.as_tensor(v, dtype=torch.get_default_dtype()) for v in values]
    return [torch.as_tensor(v, dtype=like.dtype, device=like.device) for v in values]


#: Trapezoid rule in z = x/σ on [-Z, Z] with spacing h (see wrapped_normal_score_sq_ratio).
_QUAD_HALF_WIDTH = 9.0
_QUAD_SPACING = 0.1
#: Below this fraction of the period, σ² E[s²] = 1 up to terms ~exp(-(period/2)²/(2σ²)) < 1e-17.
_NARROW_FRACTION = 0.0559


def wrapped_normal_score_sq_ratio(
    sigma: Tensor,
    period: float = 2.0 * math.pi,
    num_images: int = 13,
    chunk_size: int = 256,
) -> Tensor:
    """``σ² · E[s(x)²]`` for ``x ~ WN(0, σ²)``, elementwise over ``sigma`` (float64).

    The ratio is 1 for a plain normal (E[s²] = 1/σ²), stays 1 to machine precision while
    σ < 0.0559·period (returned as exactly 1 there), and decays to 0 as the wrapped normal
    approaches the uniform distribution.

    Computed deterministically by quadrature over the unwrapped variable ``x = σ z``:
    ``E[(σ s(σz))²] = ∫ (σ s(σz))² φ(z) dz`` with the trapezoid rule on ``z ∈ [-9, 9]``,
    spacing 0.1. The integrand is analytic in a strip of half-width σ/2 (poles at
    ``z ≈ (period/2 + k·period)/σ ± iσ/2``), so for σ ≥ 0.0559·period the rule is accurate to
    ~1e-13; it resolves the score's oscillation for σ up to ~2·period (beyond that the ratio is
    < 1e-9 anyway, and ``num_images`` must grow to keep the truncated sum periodic).
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    flat = sigma.reshape(-1)
    out = torch.ones_like(flat)
    wide = torch.nonzero(flat >= _NARROW_FRACTION * period).reshape(-1)
    num_nodes = int(round(2 * _QUAD_HALF_WIDTH / _QUAD_SPACING)) + 1
    z = torch.linspace(-_QUAD_HALF_WIDTH, _QUAD_HALF_WIDTH, num_nodes, dtype=torch.float64)
    weights = torch.exp(-0.5 * z.square()) * (_QUAD_SPACING / math.sqrt(2.0 * math.pi))
    for start in range(0, wide.numel(), chunk_size):
        index = wide[start : start + chunk_size]
        chunk = flat[index][:, None]
        scaled_score = chunk * wrapped_normal_score(
            chunk * z, 0.0, chunk, period=period, num_images=num_images
        )
        out[index] = (scaled_score.square() * weights).sum(dim=-1)
    return out.reshape(sigma.shape)


def wrapped_normal_score_sq_mean(
    sigma: Tensor, period: float = 2.0 * math.pi, num_images: int = 13
) -> Tensor:
    """E[s(x)²] for ``x ~ WN(0, σ²)``: the normalization of design choice 2 (float64)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return wrapped_normal_score_sq_ratio(sigma, period, num_images) / sigma.square()
