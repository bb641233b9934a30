"""Masked atom types (modality ``d``): absorbing-state diffusion with a mask token (MDLM, MD4)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from kldm_cli.diffusion.atom_types.base import IGNORE_INDEX, TINY, AtomTypeProcess, atom_times
from kldm_cli.diffusion.reverse import ReverseStep

MaskingScheduleName = Literal["linear", "cosine"]


def _rand(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Uniform ``[0, 1)`` draws on the generator's device, moved to ``device``."""
    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_device).to(device)


def _categorical(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One class index per row of ``probs [N, K]``, drawn with ``generator``."""
    draw_device = generator.device if generator is not None else probs.device
    index = torch.multinomial(probs.to(draw_device), num_samples=1, generator=generator)
    return index.view(-1).to(probs.device)


def _masking_alpha(schedule: MaskingScheduleName, t01: Tensor) -> Tensor:
    """Keep probability ``α(t01)``: linear ``1 - t`` or cosine ``cos(π t / 2)``."""
    if schedule == "linear":
        return 1.0 - t01
    return torch.cos(0.5 * math.pi * t01)


def _masking_dalpha(schedule: MaskingScheduleName, t01: Tensor) -> Tensor:
    """``dα/dt01``."""
    if schedule == "linear":
        return -torch.ones_like(t01)
    return -0.5 * math.pi * torch.sin(0.5 * math.pi * t01)


class MaskingDiffusion(AtomTypeProcess):
    """Absorbing-state (masking) diffusion: ``K`` classes plus a mask token (modality ``d``).

    State: class indices ``[N]`` (long) in ``[0, K]``, where ``K`` (:attr:`mask_index`) is the
    mask. Forward marginal ``q(z_t | x) = α(t) δ_x + (1 - α(t)) δ_mask``, with ``α(0) = 1`` and
    ``α(1) = 0`` (the prior masks every atom). The network sees the one-hot of the state including
    the mask (``state_dim = K + 1``) and outputs ``K`` logits of x₀ (``output_dim = K``), so it
    never predicts the mask.

    Loss (continuous-time ELBO, MDLM eq. 10 / MD4 eq. 5, the reference's default):
    ``mean_atoms[ 1{z_t = mask} · (-α'(t) / (1 - α(t))) · CE(logits, x) ]`` — averaged over all
    atoms, unmasked ones contributing 0. The linear schedule gives the weight ``1 / t``.

    Reverse step ``t → s = t + dt01`` (MDLM eq. 7): a masked atom is unmasked with probability
    ``(α(s) - α(t)) / (1 - α(t))`` to a class drawn from ``softmax(logits)``; unmasked atoms never
    change. A step that ends at ``s ≤ final_t01`` (the samplers' last time, ``t_min``) unmasks every
    atom still masked, so the sampler's output never holds a mask token.

    Args:
        num_classes: ``K``.
        schedule: ``"linear"`` (``α = 1 - t``, MDLM) or ``"cosine"`` (``α = cos(π t / 2)``, MD4).
        final_t01: time at which sampling ends (docs/CONTRACTS.md ``t_min``).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        schedule: MaskingScheduleName = "linear",
        final_t01: float = 1e-3,
    ) -> None:
        super().__init__(num_classes)
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"Unknown masking {schedule=}; choose 'linear' or 'cosine'")
        if not 0.0 <= final_t01 < 1.0:
            raise ValueError(f"final_t01 must lie in [0, 1), got {final_t01!r}")
        self.schedule: MaskingScheduleName = schedule
        self.final_t01 = float(final_t01)

    @property
    def mask_index(self) -> int:
        return self.num_classes

    @property
    def state_dim(self) -> int:
        return self.num_classes + 1

    @property
    def output_dim(self) -> int:
        return self.num_classes

    def alpha(self, t01: Tensor) -> Tensor:
        """Probability ``α(t01)`` that an atom is still unmasked at ``t01``."""
        return _masking_alpha(self.schedule, torch.as_tensor(t01))

    def loss_weight(self, t01: Tensor) -> Tensor:
        """ELBO weight ``-α'(t) / (1 - α(t))`` of a masked atom at ``t01`` (``1 / t`` if linear)."""
        t01 = torch.as_tensor(t01)
        one_minus_alpha = (1.0 - _masking_alpha(self.schedule, t01)).clamp_min(TINY)
        return -_masking_dalpha(self.schedule, t01) / one_minus_alpha

    def sample_training(
        self, t01: Tensor, type_index: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Mask each atom with probability ``1 - α(t01)``.

        Returns:
            ``state_t [N]`` (long, the mask index where masked) and ``target [N]`` (long): the
            clean class where masked, :data:`IGNORE_INDEX` where not (no loss there).
        """
        self._check_type_index(type_index)
        t01 = torch.as_tensor(t01, device=type_index.device).reshape(-1)
        if t01.numel() != type_index.numel():
            raise ValueError(f"need one t01 per atom, got {t01.numel()} for {type_index.numel()}")
        keep = _rand((type_index.numel(),), generator, type_index.device) < self.alpha(t01)
        state_t = torch.where(keep, type_index, self.mask_index)
        target = torch.where(keep, IGNORE_INDEX, type_index)
        return state_t, target

    def network_input(self, state_t: Tensor) -> Tensor:
        """One-hot ``[N, K + 1]`` of the state, the last column flagging the mask."""
        if state_t.dim() != 1 or state_t.dtype != torch.long:
            raise ValueError(
                f"masking state must be a 1-d long tensor, got dtype={state_t.dtype}, "
                f"shape={tuple(state_t.shape)}"
            )
        return F.one_hot(state_t, self.state_dim).to(torch.get_default_dtype())

    def loss(self, prediction: Tensor, target: Tensor, t01: Tensor) -> Tensor:
        """ELBO-weighted cross-entropy on masked atoms, averaged over all atoms."""
        self._check_prediction(prediction, target.shape[0])
        t01 = torch.as_tensor(t01, device=prediction.device).reshape(-1)
        masked = target != IGNORE_INDEX
        cross_entropy = F.cross_entropy(prediction, target.clamp_min(0), reduction="none")  # [N]
        weight = self.loss_weight(t01).to(prediction.dtype)
        per_atom = torch.where(masked, weight * cross_entropy, torch.zeros_like(cross_entropy))
        if per_atom.numel() == 0:
            return prediction.sum() * 0.0
        return per_atom.mean()

    def prior(self, num_atoms_total: int, generator: torch.Generator | None = None) -> Tensor:
        """Every atom masked: ``[num_atoms_total]`` filled with :attr:`mask_index`."""
        del generator  # the prior is deterministic
        return torch.full(
            (int(num_atoms_total),), self.mask_index, dtype=torch.long, device=self.device
        )

    def unmask_probability(self, t01: Tensor, dt01: float) -> Tensor:
        """``(α(s) - α(t)) / (1 - α(t))`` with ``s = t01 + dt01``; 1 when ``s ≤ final_t01``."""
        t01 = torch.as_tensor(t01)
        next_t01 = t01 + float(dt01)
        alpha_t = self.alpha(t01)
        alpha_s = self.alpha(next_t01.clamp_min(0.0))
        probability = (alpha_s - alpha_t) / (1.0 - alpha_t).clamp_min(TINY)
        # Tolerance so that a float32 grid ending at t_min counts as ending there.
        final = next_t01 <= self.final_t01 + 1e-6
        return torch.where(final, torch.ones_like(probability), probability.clamp(0.0, 1.0))

    def step(self, step: ReverseStep, state: Tensor, prediction: Tensor) -> Tensor:
        """Unmask each masked atom with probability :meth:`unmask_probability` to a class drawn
        from ``softmax(prediction)``; unmasked atoms are carried over unchanged."""
        self.network_input(state)  # validates the state
        self._check_prediction(prediction, state.shape[0])
        generator = step.generator
        probability = self.unmask_probability(atom_times(step), step.dt01).expand(state.shape)
        unmask = _rand(tuple(state.shape), generator, state.device) < probability
        drawn = _categorical(torch.softmax(prediction.detach().float(), dim=-1), generator)
        return torch.where((state == self.mask_index) & unmask, drawn, state)

    def decode(self, state: Tensor) -> Tensor:
        """The class indices; raises if an atom is still masked (sampling stopped early)."""
        self.network_input(state)
        num_masked = int((state == self.mask_index).sum())
        if num_masked:
            raise ValueError(
                f"{num_masked} atoms are still masked: the last reverse step must end at "
                f"t01 <= final_t01 = {self.final_t01}"
            )
        return state.clone()
