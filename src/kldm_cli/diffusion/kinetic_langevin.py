"""Kinetic Langevin diffusion of fractional coordinates on the torus (KLDM, Cornet et al. 2025).

Each atom has a position ``f`` on the torus and an auxiliary velocity ``v`` (paper, "Forward
process", γ = 1):

    df = v dt  (wrapped),      dv = -v dt + √2 dW,

run in internal time ``t = t_final · t01`` on positions scaled by ``position_scale`` (2π: the
unit torus becomes the circle of length 2π). Velocities enter and leave this module in
fractional units (internal velocity / position_scale), see docs/CONTRACTS.md.

Transition kernel (paper, "Transition kernel"; derived in :meth:`KineticLangevin.kernel`): with
the unwrapped displacement ``r = log(f₀⁻¹ f_t)`` (principal value of ``f_t - f₀``),

    p(f_t, v_t | f₀, v₀) = WN(r | μ_r, σ_r²) · N(v_t | μ_v, σ_v²),
    μ_v = e^{-t} v₀,                          σ_v² = 1 - e^{-2t},
    μ_r = (1 - e^{-t}) / (1 + e^{-t}) (v_t + v₀),  σ_r² = 2t + 8 / (1 + e^t) - 4,

so the velocity score is (paper, "Procedure remains simulation-free")

    ∇_{v_t} log p = c(t) ∇_μ log WN(r | μ_r, σ_r²) - (v_t - μ_v) / σ_v²,   c(t) = tanh(t/2).

Design choices (:class:`~kldm_cli.config.KineticLangevinConfig`):

1. ``initial_velocity_std``: v₀ = 0 ("atoms at rest") or v₀ ~ N(0, std²) in internal units.
2. ``simplified_parameterization`` (KLDM-ε₀, needs v₀ = 0): the network predicts the normalized
   wrapped-normal score ``∇_μ log WN / √E[s²]``, and the velocity score is rebuilt as
   ``c(t) √E[s²] · prediction - v_t / σ_v²``. Otherwise (KLDM-ε) it predicts the full velocity
   score above.
3. ``mean_free_velocity``: noise, targets and scores have Σ_k v_k = 0 in every crystal, so the
   crystal's centre of mass does not move. The wrapped-normal part of the target is the
   per-coordinate score projected onto that subspace, as in the reference implementation.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from kldm_cli.config import KineticLangevinConfig
from kldm_cli.diffusion.reverse import ReverseStep, crystal_step_size, step_function
from kldm_cli.diffusion.vp_sde import checked_mse, randn_like
from kldm_cli.diffusion.wrapped_normal import (
    wrap_unit,
    wrapped_normal_score,
    wrapped_normal_score_sq_ratio,
)

__all__ = ["KernelCoefficients", "KineticLangevin", "mean_free"]

#: Floor for variances and mean squared scores (t01 = 0 gives finite numbers, not NaN).
_TINY = 1e-12
#: Below this internal time σ_r² uses its Taylor series (2t - 4 tanh(t/2) cancels badly).
_SERIES_BELOW = 0.05


def mean_free(x: Tensor, batch_index: Tensor, num_crystals: int) -> Tensor:
    """Subtract each crystal's mean over its atoms.

    Args:
        x: per-atom values ``[N, D]`` (any trailing shape).
        batch_index: crystal of each atom ``[N]`` (long).
        num_crystals: ``B``.

    Returns:
        ``[N, D]`` with ``Σ_{k ∈ crystal} x_k = 0`` for every crystal.
    """
    if batch_index.shape != x.shape[:1]:
        raise ValueError(
            f"batch_index has shape {tuple(batch_index.shape)}, expected ({x.shape[0]},)"
        )
    sums = x.new_zeros((num_crystals, *x.shape[1:])).index_add_(0, batch_index, x)
    counts = x.new_zeros(num_crystals).index_add_(0, batch_index, x.new_ones(x.shape[0]))
    means = sums / counts.clamp_min(1.0).reshape(-1, *([1] * (x.dim() - 1)))
    return x - means[batch_index]


class KernelCoefficients(NamedTuple):
    """Coefficients of the transition kernel at internal time t (float64, internal units)."""

    #: e^{-t}: μ_v = e^{-t} v₀.
    velocity_mean_coeff: Tensor
    #: σ_v = √(1 - e^{-2t}).
    velocity_std: Tensor
    #: c(t) = (1 - e^{-t}) / (1 + e^{-t}) = tanh(t/2): μ_r = c(t) (v_t + v₀).
    displacement_coeff: Tensor
    #: σ_r = √(2t + 8/(1 + e^t) - 4).
    displacement_std: Tensor


def _displacement_var(t: Tensor) -> Tensor:
    """σ_r² = 2t + 8/(1 + e^t) - 4 = 2(t - 2 tanh(t/2)), with its Taylor series near 0."""
    direct = 2.0 * (t - 2.0 * torch.tanh(0.5 * t))
    series = t**3 / 6.0 - t**5 / 60.0 + 17.0 * t**7 / 2520.0
    return torch.where(t < _SERIES_BELOW, series, direct)


@functools.lru_cache(maxsize=8)
def _score_sq_ratio_grid(t_final: float, period: float, num_images: int, size: int) -> Tensor:
    """σ_r² E[s²] on ``size`` internal times evenly spaced over ``[0, t_final]`` (float64)."""
    times = torch.linspace(0.0, t_final, size, dtype=torch.float64)
    sigma = _displacement_var(times).clamp_min(0.0).sqrt()
    return wrapped_normal_score_sq_ratio(sigma, period=period, num_images=num_images)


class KineticLangevin(torch.nn.Module):
    """Kinetic Langevin process of fractional coordinates and velocities.

    Args:
        config: process settings and the three design choices; invalid combinations (e.g.
            the simplified parameterization with ``initial_velocity_std > 0``) raise
            ``ValueError``.

    The normalization ``E[s²]`` of design choice 2 depends only on σ_r(t). It is stored as the
    dimensionless ratio ``σ_r² E[s²]`` (1 while σ_r ≪ 2π, falling to ≈ 0.96 at t = 2) on
    ``num_norm_grid`` internal times over ``[0, t_final]`` in the non-persistent buffer
    ``score_sq_ratio``, computed deterministically by quadrature; at any t it is interpolated
    linearly and divided by the exact σ_r(t)², so the lookup is accurate even where E[s²]
    itself varies like t⁻³.
    """

    score_sq_ratio: Tensor

    def __init__(self, config: KineticLangevinConfig) -> None:
        super().__init__()
        _validate(config)
        self.config = config
        self.t_final = float(config.t_final)
        self.position_scale = float(config.position_scale)
        self.num_wrapped_images = int(config.num_wrapped_images)
        self.initial_velocity_std = float(config.initial_velocity_std)
        self.simplified_parameterization = bool(config.simplified_parameterization)
        self.mean_free_velocity = bool(config.mean_free_velocity)
        ratio = _score_sq_ratio_grid(
            self.t_final, self.position_scale, self.num_wrapped_images, config.num_norm_grid
        )
        self.register_buffer("score_sq_ratio", ratio.clone(), persistent=False)

    # ------------------------------------------------------------------ kernel
    def kernel(self, t01: Tensor) -> KernelCoefficients:
        """Kernel coefficients at internal time ``t = t_final · t01`` (same shape as t01).

        Derivation (γ = 1): ``v_t = e^{-t} v₀ + √2 ∫ e^{-(t-s)} dW_s`` and the unwrapped
        displacement ``r_t = ∫ v = (1 - e^{-t}) v₀ + √2 ∫ (1 - e^{-(t-s)}) dW_s`` are jointly
        Gaussian with Var v_t = 1 - e^{-2t}, Var r_t = 2t - 3 + 4e^{-t} - e^{-2t} and
        Cov = (1 - e^{-t})². Conditioning r_t on v_t gives slope Cov / Var v_t = tanh(t/2),
        mean tanh(t/2)(v_t + v₀) and variance 2t + 8/(1 + e^t) - 4.
        """
        t = self.t_final * torch.as_tensor(t01).to(torch.float64).clamp_min(0.0)
        return KernelCoefficients(
            velocity_mean_coeff=torch.exp(-t),
            velocity_std=torch.sqrt((-torch.expm1(-2.0 * t)).clamp_min(_TINY)),
            displacement_coeff=torch.tanh(0.5 * t),
            displacement_std=torch.sqrt(_displacement_var(t).clamp_min(_TINY)),
        )

    def score_sq_mean(self, t01: Tensor) -> Tensor:
        """E[s²] of the wrapped-normal score at σ_r(t_final · t01) (float64, per coordinate)."""
        t01 = torch.as_tensor(t01).to(torch.float64)
        return self._score_sq_ratio(t01) / self.kernel(t01).displacement_std.square()

    def _score_sq_ratio(self, t01: Tensor) -> Tensor:
        """σ_r² E[s²] at ``t01``: linear interpolation on the buffer's time grid."""
        grid = self.score_sq_ratio.to(device=t01.device, dtype=torch.float64)
        position = t01.to(torch.float64).clamp(0.0, 1.0) * (grid.numel() - 1)
        lower = position.floor().clamp(0, grid.numel() - 2)
        weight = position - lower
        lower = lower.long()
        return grid[lower] * (1.0 - weight) + grid[lower + 1] * weight

    def _atom_kernel(self, t01: Tensor, batch_index: Tensor, like: Tensor) -> tuple[Tensor, ...]:
        """Per atom ``[N, 1]`` in ``like``'s dtype: the 4 kernel coefficients and √E[s²]."""
        t01 = torch.as_tensor(t01, device=like.device).to(torch.float64)
        if t01.dim() == 0:
            atom_t01 = t01.expand(batch_index.shape[0])[:, None]
        else:
            atom_t01 = t01.reshape(-1)[batch_index][:, None]
        coeffs = self.kernel(atom_t01)
        wn_scale = torch.sqrt(self._score_sq_ratio(atom_t01)) / coeffs.displacement_std
        return (*(c.to(like.dtype) for c in coeffs), wn_scale.to(like.dtype))

    def _noise(
        self,
        like: Tensor,
        batch_index: Tensor,
        num_crystals: int,
        generator: torch.Generator | None,
    ) -> Tensor:
        return self._project(randn_like(like, generator), batch_index, num_crystals)

    def _project(self, x: Tensor, batch_index: Tensor, num_crystals: int) -> Tensor:
        """``x [N, 3]`` made mean-free per crystal when ``mean_free_velocity`` is on (design
        choice 3), else ``x`` itself."""
        return mean_free(x, batch_index, num_crystals) if self.mean_free_velocity else x

    # ------------------------------------------------------------------ training
    def sample_initial_velocity(
        self,
        frac_coords: Tensor,
        batch_index: Tensor,
        num_crystals: int,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """v₀ ``[N, 3]`` in fractional units: zeros, or N(0, std²) (mean-free if enabled)."""
        if self.initial_velocity_std == 0.0:
            return torch.zeros_like(frac_coords)
        noise = self._noise(frac_coords, batch_index, num_crystals, generator)
        return noise * (self.initial_velocity_std / self.position_scale)

    def sample_training(
        self,
        t01: Tensor,
        frac_coords: Tensor,
        batch_index: Tensor,
        num_crystals: int,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Draw (f_t, v_t) from the kernel at ``t01 [B]`` and return the regression target.

        Args:
            t01: time of each crystal ``[B]``.
            frac_coords: clean fractional coordinates f₀ ``[N, 3]``.
            batch_index: crystal of each atom ``[N]``.
            num_crystals: ``B``.
            generator: random generator for every draw.

        Returns:
            ``frac_coords_t [N, 3]`` in [0, 1), ``velocity_t [N, 3]`` in fractional units and
            ``target [N, 3]`` (see :meth:`sample_transition`).
        """
        initial_velocity = self.sample_initial_velocity(
            frac_coords, batch_index, num_crystals, generator
        )
        return self.sample_transition(
            t01, frac_coords, initial_velocity, batch_index, num_crystals, generator
        )

    def sample_transition(
        self,
        t01: Tensor,
        frac_coords: Tensor,
        initial_velocity: Tensor,
        batch_index: Tensor,
        num_crystals: int,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Draw (f_t, v_t) ~ p(· | f₀, v₀) for a given v₀ ``[N, 3]`` (fractional units).

        The target is, with ``g = ∇_μ log WN(r | μ_r, σ_r²)`` (projected mean-free if enabled):

        - simplified parameterization: ``g / √E[s²](σ_r)`` (unit scale at every t);
        - otherwise: the velocity score ``c(t) g - ε_v / σ_v`` (internal units), where
          ``ε_v / σ_v = (v_t - μ_v) / σ_v²``.

        :meth:`velocity_score` maps either target back to ``∇_{v_t} log p(f_t, v_t | f₀, v₀)``.
        """
        if initial_velocity.shape != frac_coords.shape:
            raise ValueError(
                f"initial_velocity shape {tuple(initial_velocity.shape)} != frac_coords shape "
                f"{tuple(frac_coords.shape)}"
            )
        if self.simplified_parameterization and bool((initial_velocity != 0).any()):
            raise ValueError("the simplified parameterization needs v0 = 0 (atoms at rest)")
        mean_coeff, std_v, coeff_r, std_r, wn_scale = self._atom_kernel(
            t01, batch_index, frac_coords
        )
        v0 = initial_velocity * self.position_scale
        eps_v = self._noise(frac_coords, batch_index, num_crystals, generator)
        eps_r = self._noise(frac_coords, batch_index, num_crystals, generator)
        velocity_t = mean_coeff * v0 + std_v * eps_v
        displacement = coeff_r * (velocity_t + v0) + std_r * eps_r
        frac_coords_t = wrap_unit(frac_coords + displacement / self.position_scale)
        # ∇_μ log WN(r | μ_r, σ_r²) = -∂_r log WN, evaluated at r - μ_r = σ_r ε_r directly.
        wn_grad = -wrapped_normal_score(
            std_r * eps_r, 0.0, std_r, self.position_scale, self.num_wrapped_images
        )
        wn_grad = self._project(wn_grad, batch_index, num_crystals)
        if self.simplified_parameterization:
            target = wn_grad / wn_scale
        else:
            target = coeff_r * wn_grad - eps_v / std_v
        return frac_coords_t, velocity_t / self.position_scale, target

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Mean squared error between the network's velocity output and the target."""
        return checked_mse(prediction, target)

    # ------------------------------------------------------------------ sampling
    def velocity_score(
        self,
        t01: Tensor,
        velocity_t: Tensor,
        prediction: Tensor,
        batch_index: Tensor,
        num_crystals: int | None = None,
    ) -> Tensor:
        """Velocity score ``∇_{v_t} log p_t`` ``[N, 3]`` in internal units from a prediction.

        Simplified: ``c(t) √E[s²] · prediction - v_t / σ_v²``; otherwise the prediction itself.
        Projected mean-free when enabled (a no-op for a mean-free network output).

        Args:
            t01: time of each crystal ``[B]``.
            velocity_t: ``[N, 3]`` fractional units.
            prediction: network output ``[N, 3]``.
            batch_index: ``[N]``.
            num_crystals: ``B``; defaults to the length of ``t01``.
        """
        _, std_v, coeff_r, _, wn_scale = self._atom_kernel(t01, batch_index, velocity_t)
        if self.simplified_parameterization:
            velocity = velocity_t * self.position_scale
            score = coeff_r * wn_scale * prediction - velocity / std_v.square()
        else:
            score = prediction
        if not self.mean_free_velocity:
            return score
        if num_crystals is None:
            t01 = torch.as_tensor(t01)
            num_crystals = t01.numel() if t01.dim() else int(batch_index.max()) + 1
        return mean_free(score, batch_index, num_crystals)

    def prior(
        self,
        batch_index: Tensor,
        num_crystals: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Draw from the prior: ``frac_coords [N, 3]`` ~ U[0, 1), ``velocity [N, 3]`` from the
        stationary N(0, I) (internal units; mean-free if enabled), returned in fractional units.
        """
        dtype = dtype or torch.get_default_dtype()
        shape = (batch_index.shape[0], 3)
        draw_device = generator.device if generator is not None else batch_index.device
        frac_coords = torch.rand(shape, generator=generator, device=draw_device, dtype=dtype)
        frac_coords = wrap_unit(frac_coords.to(batch_index.device))
        like = torch.empty(shape, dtype=dtype, device=batch_index.device)
        velocity = self._noise(like, batch_index, num_crystals, generator)
        return frac_coords, velocity / self.position_scale

    def _step_start(
        self, step: ReverseStep, velocity: Tensor, prediction: Tensor
    ) -> tuple[float, Tensor]:
        """What every reverse step starts from: the internal step length ``h = t_final |dt01|``
        and the velocity score at ``step.t01`` (:meth:`velocity_score`)."""
        context = step.context
        score = self.velocity_score(
            step.t01, velocity, prediction, context.batch_index, context.num_crystals
        )
        return self.t_final * abs(float(step.dt01)), score

    def _finish_step(
        self, step: ReverseStep, frac_coords: Tensor, velocity: Tensor, h: float
    ) -> tuple[Tensor, Tensor]:
        """Keep v mean-free, move positions backward in time: ``f ← wrap(f - h v)``."""
        velocity = self._project(velocity, step.context.batch_index, step.context.num_crystals)
        velocity = velocity / self.position_scale
        return wrap_unit(frac_coords - h * velocity), velocity

    def _step_noise(self, step: ReverseStep, velocity: Tensor) -> Tensor:
        return self._noise(
            velocity, step.context.batch_index, step.context.num_crystals, step.generator
        )

    def step_em(
        self, step: ReverseStep, state: tuple[Tensor, Tensor], prediction: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Exponential-integrator step of the reverse SDE from ``step.t01`` to ``step.t01 +
        step.dt01``; ``state`` is ``(frac_coords [N, 3], velocity [N, 3])``.

        In reverse time τ the velocities follow ``dv = [v + 2 s_v] dτ + √2 dW̄`` (paper,
        "Reverse process", γ = 1). Holding the score at its value at t01 and integrating the
        linear part exactly over ``h = t_final |dt01|``:

            v ← e^h v + 2 (e^h - 1) s_v + √(e^{2h} - 1) ε,     f ← wrap(f - h v)

        (the position update uses the new velocity, as the reference ``reverse_step_em``).

        Returns:
            ``(frac_coords [N, 3] in [0, 1), velocity [N, 3] in fractional units)``.
        """
        frac_coords, velocity = state
        h, score = self._step_start(step, velocity, prediction)
        noise = self._step_noise(step, velocity)
        new_velocity = (
            math.exp(h) * velocity * self.position_scale
            + 2.0 * math.expm1(h) * score
            + math.sqrt(math.expm1(2.0 * h)) * noise
        )
        return self._finish_step(step, frac_coords, new_velocity, h)

    def step_predictor(
        self, step: ReverseStep, state: tuple[Tensor, Tensor], prediction: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Deterministic DDIM-type predictor from ``step.t01`` to ``step.t01 + step.dt01``
        (reference ``reverse_step_predictor``).

        Treats the velocity marginal as VP with ``α = e^{-t}``, ``σ = σ_v(t)``:
        ``v ← (α'/α) v + ((α'/α) σ - σ') σ s_v`` with primes at ``t + dt`` (α'/α = e^h), then
        ``f ← wrap(f - h v)``. No draw: ``step.generator`` is not used.
        """
        frac_coords, velocity = state
        batch_index = step.context.batch_index
        t01 = torch.as_tensor(step.t01, device=velocity.device)
        _, std_v, _, _, _ = self._atom_kernel(t01, batch_index, velocity)
        t01_next = (t01.to(torch.float64) - abs(float(step.dt01))).clamp_min(0.0)
        _, std_v_next, _, _, _ = self._atom_kernel(t01_next, batch_index, velocity)
        h, score = self._step_start(step, velocity, prediction)
        ratio = math.exp(h)
        new_velocity = (
            ratio * velocity * self.position_scale + (ratio * std_v - std_v_next) * std_v * score
        )
        return self._finish_step(step, frac_coords, new_velocity, h)

    def step_corrector(
        self, step: ReverseStep, state: tuple[Tensor, Tensor], prediction: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Langevin corrector on the velocities at ``step.t01`` (reference
        ``reverse_step_corrector``).

        ``v ← v + δ s_v + √(2δ) ε`` with ``δ = tau / mean(s_v²)`` (``tau = step.context.tau``),
        the mean over each crystal's atoms and coordinates; then, as the reference does,
        ``f ← wrap(f - h v)`` with ``h = t_final |dt01|``.
        """
        frac_coords, velocity = state
        context = step.context
        h, score = self._step_start(step, velocity, prediction)
        delta = crystal_step_size(score, context.tau, context.batch_index, context.num_crystals)
        noise = self._step_noise(step, velocity)
        new_velocity = (
            velocity * self.position_scale + delta * score + torch.sqrt(2.0 * delta) * noise
        )
        return self._finish_step(step, frac_coords, new_velocity, h)

    def reverse_step(
        self, step: ReverseStep, state: tuple[Tensor, Tensor], prediction: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The sampler's interface (:mod:`kldm_cli.diffusion.reverse`): ``state`` is
        ``(frac_coords, velocity)``; ``step.kind`` picks :meth:`step_em`, :meth:`step_predictor`
        or :meth:`step_corrector`."""
        process_step = step_function(
            step.kind, self.step_em, self.step_predictor, self.step_corrector
        )
        return process_step(step, state, prediction)


def _validate(config: KineticLangevinConfig) -> None:
    if not config.t_final > 0:
        raise ValueError(f"t_final must be positive, got {config.t_final}")
    if not config.position_scale > 0:
        raise ValueError(f"position_scale must be positive, got {config.position_scale}")
    if config.num_wrapped_images < 0:
        raise ValueError(f"num_wrapped_images must be >= 0, got {config.num_wrapped_images}")
    if config.num_norm_grid < 2:
        raise ValueError(f"num_norm_grid must be at least 2, got {config.num_norm_grid}")
    if config.initial_velocity_std < 0:
        raise ValueError(f"initial_velocity_std must be >= 0, got {config.initial_velocity_std}")
    if config.simplified_parameterization and config.initial_velocity_std != 0:
        raise ValueError(
            "simplified_parameterization=True needs atoms at rest (initial_velocity_std=0), "
            f"got initial_velocity_std={config.initial_velocity_std}"
        )
