"""Variance-preserving SDE with a linear β schedule and x₀ parameterisation.

Used for the 6 normalized lattice numbers (``x [B, 6]``) and reused for continuous atom types
(one-hot or analog bits, ``x [N, D]`` with per-atom times). The forward process is

    dx = -½ β(t01) x dt01 + √β(t01) dW,    β(s) = β_min + (β_max - β_min) s,  s ∈ [0, 1],

with marginal ``x_t = α x₀ + σ ε``, ``α = exp(-½ ∫₀ᵗ β)``, ``σ² = 1 - α²`` (the VP SDE of
Song et al. 2021). The network predicts x₀; each sampler step turns that prediction into the score
``∇ log p_t(x_t) = (α x̂₀ - x_t) / σ²`` (Tweedie).

Times follow docs/CONTRACTS.md: ``t01`` has one entry per row of ``x`` (``[B]`` or ``[B, 1]``;
a 0-d tensor or float applies to every row) and samplers pass a negative ``dt01``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kldm_cli.config import LatticeDiffusionConfig
from kldm_cli.diffusion.reverse import ReverseStep, step_function

__all__ = ["VPSDE", "checked_mse", "randn_like"]

#: Floor for σ² and for the corrector's mean squared score, so that t01 = 0 or an all-zero
#: score gives finite numbers instead of NaN.
_TINY = 1e-12


def randn_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn with ``generator``.

    The draw happens on the generator's device (a CPU generator may drive CUDA tensors) and is
    then moved to ``x``'s device, so a seed fixes the output wherever ``x`` lives.
    """
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
    return noise.to(x.device)


def checked_mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean squared error; raises ``ValueError`` naming both shapes if they differ."""
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}"
        )
    return F.mse_loss(prediction, target)


def _per_row(value: Tensor, like: Tensor) -> Tensor:
    """Broadcast a per-row quantity ``[R]`` (or ``[R, 1]``, or 0-d) against ``like [R, ...]``."""
    if value.dim() == 0:
        return value
    if value.shape[0] != like.shape[0] or value.numel() != value.shape[0]:
        raise ValueError(
            f"time has shape {tuple(value.shape)} but the state has shape {tuple(like.shape)}; "
            "give one time per row"
        )
    return value.reshape(value.shape[0], *([1] * (like.dim() - 1)))


class VPSDE(torch.nn.Module):
    """VP-SDE on ``[R, D]`` features (any ``D``), x₀ parameterisation.

    Args:
        config: ``beta_min`` / ``beta_max`` of the linear schedule over ``t01 ∈ [0, 1]``.
    """

    def __init__(self, config: LatticeDiffusionConfig) -> None:
        super().__init__()
        if not 0.0 <= config.beta_min <= config.beta_max:
            raise ValueError(
                "need 0 <= beta_min <= beta_max, got "
                f"beta_min={config.beta_min}, beta_max={config.beta_max}"
            )
        self.config = config
        self.beta_min = float(config.beta_min)
        self.beta_max = float(config.beta_max)

    # ------------------------------------------------------------------ schedule
    def beta(self, t01: Tensor) -> Tensor:
        """β(t01) = β_min + (β_max - β_min) t01."""
        return self.beta_min + (self.beta_max - self.beta_min) * t01

    def integral_beta(self, t01: Tensor) -> Tensor:
        """∫₀^t01 β(s) ds."""
        return self.beta_min * t01 + 0.5 * (self.beta_max - self.beta_min) * t01**2

    def alpha_sigma(self, t01: Tensor) -> tuple[Tensor, Tensor]:
        """(α, σ) of the marginal ``x_t = α x₀ + σ ε``, same shape as ``t01``."""
        t01 = torch.as_tensor(t01)
        integral = self.integral_beta(t01.double())
        alpha = torch.exp(-0.5 * integral)
        sigma = torch.sqrt(-torch.expm1(-integral))
        dtype = t01.dtype if t01.is_floating_point() else torch.get_default_dtype()
        return alpha.to(dtype), sigma.to(dtype)

    def _alpha_sigma_rows(self, t01: Tensor | float, like: Tensor) -> tuple[Tensor, Tensor]:
        t01 = torch.as_tensor(t01, device=like.device)
        alpha, sigma = self.alpha_sigma(t01)
        return _per_row(alpha.to(like.dtype), like), _per_row(sigma.to(like.dtype), like)

    def score(self, t01: Tensor | float, x_t: Tensor, pred_x0: Tensor) -> Tensor:
        """Score ∇ log p_t(x_t) implied by a prediction of x₀: ``(α x̂₀ - x_t) / σ²``."""
        alpha, sigma = self._alpha_sigma_rows(t01, x_t)
        return (alpha * pred_x0 - x_t) / sigma.square().clamp_min(_TINY)

    # ------------------------------------------------------------------ training
    def sample_training(
        self, t01: Tensor, x0: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Noisy ``x_t [R, D]`` at times ``t01 [R]`` and the regression target (``x0``)."""
        alpha, sigma = self._alpha_sigma_rows(t01, x0)
        x_t = alpha * x0 + sigma * randn_like(x0, generator)
        return x_t, x0

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Mean squared error between the x₀ prediction and the target."""
        return checked_mse(pred, target)

    # ------------------------------------------------------------------ sampling
    def prior(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """x₁ ~ N(0, I) of the given shape (the marginal at t01 = 1 up to α(1) ≈ 7e-3)."""
        draw_device = generator.device if generator is not None else device
        noise = torch.randn(tuple(shape), generator=generator, device=draw_device, dtype=dtype)
        return noise.to(device) if device is not None else noise

    def step_em(self, step: ReverseStep, x_t: Tensor, pred_x0: Tensor) -> Tensor:
        """One Euler–Maruyama step of the reverse SDE from ``step.t01`` to ``step.t01 +
        step.dt01`` (dt01 < 0); ``step.t01`` has one time per row of ``x_t``.

        ``x ← x - [-½β x - β s] h + √(β h) ε`` with ``h = |dt01|``, β and the score s at t01
        (the reference's default ``reverse_step``).
        """
        h = abs(float(step.dt01))
        beta = _per_row(self.beta(torch.as_tensor(step.t01, device=x_t.device)).to(x_t.dtype), x_t)
        score = self.score(step.t01, x_t, pred_x0)
        drift = 0.5 * beta * x_t + beta * score
        return x_t + drift * h + torch.sqrt(beta * h) * randn_like(x_t, step.generator)

    def step_predictor(self, step: ReverseStep, x_t: Tensor, pred_x0: Tensor) -> Tensor:
        """Deterministic DDIM (η = 0) predictor from ``step.t01`` to ``step.t01 + step.dt01``.

        ``x ← (α'/α) x + ((α'/α) σ - σ') σ s`` where primes are at ``t01 + dt01``: this is
        ``x ← α' x̂₀ + σ' ε̂`` with the ε̂ implied by the score, as in the reference
        ``reverse_step_predictor``. Stochasticity in PC sampling comes from the corrector;
        ``step.generator`` is not used.
        """
        t01 = torch.as_tensor(step.t01, device=x_t.device)
        alpha, sigma = self._alpha_sigma_rows(t01, x_t)
        alpha_next, sigma_next = self._alpha_sigma_rows(t01 + float(step.dt01), x_t)
        ratio = alpha_next / alpha
        score = self.score(t01, x_t, pred_x0)
        return ratio * x_t + (ratio * sigma - sigma_next) * sigma * score

    def step_corrector(
        self, step: ReverseStep, x_t: Tensor, pred_x0: Tensor, *, per_row: bool = False
    ) -> Tensor:
        """One Langevin corrector step at ``step.t01`` (time does not move; ``dt01`` is unused)
        with step size ``step.context.tau``.

        ``x ← x + δ s + √(2δ) ε`` with ``δ = tau / mean(s²)``. By default the mean is over the
        whole tensor (all rows and features), i.e. δ = tau / (Fisher information of p_t), which
        keeps p_t invariant up to the O(tau) bias of unadjusted Langevin (for a Gaussian p_t
        the fixed point has variance (1 + tau/2) times the true one). ``per_row=True``
        averages over each row's features only, as the reference ``reverse_step_corrector``
        does; with few features per row (the 6 lattice numbers, or 1) rows that happen to sit
        where s ≈ 0 get huge steps, which visibly widens the sampled distribution.
        """
        tau = step.context.tau
        score = self.score(step.t01, x_t, pred_x0)
        if per_row:
            mean_sq = score.square().reshape(score.shape[0], -1).mean(dim=1)
            delta = _per_row(tau / mean_sq.clamp_min(_TINY), x_t)
        else:
            delta = tau / score.square().mean().clamp_min(_TINY)
        return x_t + delta * score + torch.sqrt(2.0 * delta) * randn_like(x_t, step.generator)

    def reverse_step(self, step: ReverseStep, state: Tensor, prediction: Tensor) -> Tensor:
        """The sampler's interface (:mod:`kldm_cli.diffusion.reverse`) for rows with one time
        each (the lattice: ``t01 [B]``, ``state [B, 6]``); the corrector pools its step size
        over the whole tensor."""
        process_step = step_function(
            step.kind, self.step_em, self.step_predictor, self.step_corrector
        )
        return process_step(step, state, prediction)
