"""Atom-type diffusion for de novo generation (DNG): one-hot (C), analog bits (C-AB), masking (D).

The three modalities of the KLDM paper's DNG experiments, each a process over one categorical
variable per atom with ``K = num_classes`` element classes (the model's vocabulary, index ``i``
↔ ``KLDMConfig.elements[i]``):

* :class:`OneHotDiffusion` (``c``): the VP-SDE of :mod:`kldm_cli.diffusion.vp_sde` on the one-hot
  encoding ``e_k ∈ {0, 1}^K``. The network regresses x₀ directly (its type head is the x₀
  estimate, trained with MSE), as the reference's ``ContinuousDiffusion(parameterization="x0")``;
  decoding takes the argmax.
* :class:`AnalogBitsDiffusion` (``c-ab``): the same VP-SDE on analog bits (Chen et al. 2023,
  "Analog Bits"): index ``k`` → its ``ceil(log2 K)`` binary digits (most significant first)
  mapped to ``{-scale, +scale}``. x₀ regression with MSE; the x₀ estimate is clamped to
  ``[-scale, scale]`` inside reverse steps (the reference's ``clamp_pred_in_reverse``).
  Decoding thresholds at 0; a pattern that names no class (``≥ K``) goes to the nearest valid
  code (see :meth:`AnalogBitsDiffusion.decode`).
* :class:`MaskingDiffusion` (``d``): absorbing-state (masked) diffusion (Austin et al. 2021;
  Sahoo et al. 2024, MDLM; Shi et al. 2024, MD4) with a mask token of index ``K``. Each atom is
  kept with probability ``α(t01)`` and masked otherwise; the network outputs ``K`` logits (it can
  never predict the mask); the loss is the continuous-time ELBO (MDLM eq. 10 / MD4 eq. 5).

Shapes and time follow docs/CONTRACTS.md: one ``t01`` per atom (the sampler gathers the crystal's
time with ``t01[batch_index]``), ``t01 = 1`` is the prior, samplers pass ``dt01 < 0``. Every
random draw goes through the ``generator`` argument. No process imports the network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from kldm_cli.config import LatticeDiffusionConfig, TypeDiffusionConfig
from kldm_cli.diffusion.reverse import ReverseStep, step_function
from kldm_cli.diffusion.vp_sde import VPSDE, randn_like

__all__ = [
    "IGNORE_INDEX",
    "AnalogBitsDiffusion",
    "AtomTypeProcess",
    "MaskingDiffusion",
    "MaskingScheduleName",
    "OneHotDiffusion",
    "make_type_process",
]

#: Target value of atoms that carry no loss (unmasked atoms of :class:`MaskingDiffusion`);
#: the same sentinel as ``torch.nn.functional.cross_entropy``'s default ``ignore_index``.
IGNORE_INDEX = -100

#: Floor for ``1 - α(t)`` in the masking loss weight and the unmasking probability.
_TINY = 1e-12

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


class AtomTypeProcess(torch.nn.Module):
    """Common interface of the atom-type processes (what the training loop and samplers call).

    Args:
        num_classes: ``K``, the number of element classes the model knows (``≥ 2``).

    Attributes:
        num_classes: ``K``.
        state_dim: width of the network's per-atom type input, :meth:`network_input`.
        output_dim: width of the network's type head, the ``prediction`` of :meth:`loss` and
            :meth:`step`.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.num_classes = int(num_classes)
        # Tracks the module's device (``.to(device)``) without appearing in the state dict.
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    @property
    def state_dim(self) -> int:
        raise NotImplementedError

    @property
    def output_dim(self) -> int:
        raise NotImplementedError

    def sample_training(
        self, t01: Tensor, type_index: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Noisy state at ``t01 [N]`` for the clean classes ``type_index [N]`` (long, in
        ``[0, K)``), and the target that :meth:`loss` compares the prediction with."""
        raise NotImplementedError

    def network_input(self, state_t: Tensor) -> Tensor:
        """The network's type features ``[N, state_dim]`` (float) for a state."""
        raise NotImplementedError

    def loss(self, prediction: Tensor, target: Tensor, t01: Tensor) -> Tensor:
        """Scalar training loss for ``prediction [N, output_dim]`` at times ``t01 [N]``."""
        raise NotImplementedError

    def prior(self, num_atoms_total: int, generator: torch.Generator | None = None) -> Tensor:
        """A draw from the process at ``t01 = 1`` for ``num_atoms_total`` atoms."""
        raise NotImplementedError

    def step(
        self,
        t01: Tensor,
        dt01: float,
        state: Tensor,
        prediction: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One reverse step from ``t01 [N]`` to ``t01 + dt01`` (``dt01 < 0``)."""
        raise NotImplementedError

    def step_predictor(
        self,
        t01: Tensor,
        dt01: float,
        state: Tensor,
        prediction: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Predictor of predictor–corrector sampling; :meth:`step` unless a process differs."""
        return self.step(t01, dt01, state, prediction, generator)

    def step_corrector(
        self,
        t01: Tensor,
        dt01: float,
        state: Tensor,
        prediction: Tensor,
        tau: float = 0.25,
        generator: torch.Generator | None = None,
        *,
        batch_index: Tensor | None = None,
        num_crystals: int | None = None,
    ) -> Tensor:
        """Corrector of predictor–corrector sampling at ``t01``; the identity unless a process
        has one (the masking process has none, as in the reference).

        ``batch_index [N]`` / ``num_crystals`` let a corrector pool its step size per crystal.
        """
        del t01, dt01, prediction, tau, generator, batch_index, num_crystals
        return state

    def reverse_step(self, step: ReverseStep, state: Tensor, prediction: Tensor) -> Tensor:
        """The sampler's interface (:mod:`kldm_cli.diffusion.reverse`): ``step.t01 [B]`` per
        crystal, gathered per atom; ``step.kind`` picks :meth:`step` (EM),
        :meth:`step_predictor` or :meth:`step_corrector` (pooled per crystal)."""
        context = step.context
        args = (step.t01[context.batch_index], step.dt01, state, prediction)
        if step.kind == "corrector":
            return self.step_corrector(
                *args, context.tau, step.generator,
                batch_index=context.batch_index, num_crystals=context.num_crystals,
            )  # fmt: skip
        em_or_predictor = step_function(step.kind, self.step, self.step_predictor)
        return em_or_predictor(*args, step.generator)

    def decode(self, state: Tensor) -> Tensor:
        """Final mapping of a state to class indices ``[N]`` (long, in ``[0, K)``)."""
        raise NotImplementedError

    def _check_type_index(self, type_index: Tensor) -> None:
        if type_index.dtype != torch.long or type_index.dim() != 1:
            raise ValueError(
                f"type_index must be a 1-d long tensor, got dtype={type_index.dtype}, "
                f"shape={tuple(type_index.shape)}"
            )
        if type_index.numel() and (
            int(type_index.min()) < 0 or int(type_index.max()) >= self.num_classes
        ):
            raise ValueError(
                f"type_index must lie in [0, {self.num_classes}), got values in "
                f"[{int(type_index.min())}, {int(type_index.max())}]"
            )

    def _check_prediction(self, prediction: Tensor, num_atoms: int) -> None:
        if prediction.shape != (num_atoms, self.output_dim):
            raise ValueError(
                f"prediction must have shape ({num_atoms}, {self.output_dim}), "
                f"got {tuple(prediction.shape)}"
            )


class _ContinuousTypeDiffusion(AtomTypeProcess):
    """VP-SDE on a fixed code per class (``codes [K, D]``), x₀ parameterisation.

    The network's type head is the x₀ estimate itself (direct regression, MSE loss), turned into
    a score by :class:`~kldm_cli.diffusion.vp_sde.VPSDE` in every reverse step.
    """

    def __init__(self, codes: Tensor, *, beta_min: float, beta_max: float) -> None:
        super().__init__(codes.shape[0])
        self.sde = VPSDE(LatticeDiffusionConfig(beta_min=beta_min, beta_max=beta_max))
        # Derived from the config, so not part of the state dict.
        self.register_buffer("codes", codes.to(torch.get_default_dtype()), persistent=False)

    @property
    def state_dim(self) -> int:
        return self.codes.shape[1]

    @property
    def output_dim(self) -> int:
        return self.codes.shape[1]

    def encode(self, type_index: Tensor) -> Tensor:
        """Clean state x₀ ``[N, D]`` of class indices ``[N]``."""
        self._check_type_index(type_index)
        return self.codes[type_index]

    def sample_training(
        self, t01: Tensor, type_index: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``x_t = α x₀ + σ ε`` (``[N, D]``) and the target x₀ (``[N, D]``)."""
        return self.sde.sample_training(t01, self.encode(type_index), generator)

    def network_input(self, state_t: Tensor) -> Tensor:
        if state_t.dim() != 2 or state_t.shape[1] != self.state_dim:
            raise ValueError(
                f"state must have shape (N, {self.state_dim}), got {tuple(state_t.shape)}"
            )
        return state_t

    def loss(self, prediction: Tensor, target: Tensor, t01: Tensor) -> Tensor:
        """Mean squared error of the x₀ estimate (unweighted in time, as the reference)."""
        del t01
        return self.sde.loss(prediction, target)

    def prior(self, num_atoms_total: int, generator: torch.Generator | None = None) -> Tensor:
        """``x₁ ~ N(0, I)``, ``[num_atoms_total, D]``."""
        return self.sde.prior(
            (int(num_atoms_total), self.state_dim),
            generator,
            device=self.device,
            dtype=self.codes.dtype,
        )

    def x0_estimate(self, prediction: Tensor) -> Tensor:
        """The x₀ estimate the reverse steps use for a network prediction."""
        return prediction

    def step(
        self,
        t01: Tensor,
        dt01: float,
        state: Tensor,
        prediction: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Euler–Maruyama step of the reverse SDE (:meth:`VPSDE.step_em`)."""
        return self._sde_step(self.sde.step_em, t01, dt01, state, prediction, generator)

    def step_predictor(
        self,
        t01: Tensor,
        dt01: float,
        state: Tensor,
        prediction: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Deterministic DDIM predictor (:meth:`VPSDE.step_predictor`), as the reference's PC."""
        return self._sde_step(self.sde.step_predictor, t01, dt01, state, prediction, generator)

    def _sde_step(
        self, sde_step: Callable[..., Tensor], t01: Tensor, dt01: float, state: Tensor,
        prediction: Tensor, generator: torch.Generator | None,
    ) -> Tensor:  # fmt: skip
        self._check_prediction(prediction, state.shape[0])
        return sde_step(t01, dt01, state, self.x0_estimate(prediction), generator)

    def step_corrector(
        self,
        t01: Tensor,
        dt01: float,
        state: Tensor,
        prediction: Tensor,
        tau: float = 0.25,
        generator: torch.Generator | None = None,
        *,
        batch_index: Tensor | None = None,
        num_crystals: int | None = None,
    ) -> Tensor:
        """Langevin corrector at ``t01`` (time does not move; ``dt01`` is unused).

        ``x ← x + δ s + √(2δ) ε`` with the score ``s`` of :meth:`VPSDE.score` and
        ``δ = tau / mean(s²)``. With ``batch_index [N]`` the mean runs over all features of all
        atoms of each crystal, as the reference does for atom types (``scatter_mean`` over
        ``node_index``); without it, over each atom's own features (:meth:`VPSDE.step_corrector`).
        Pass ``batch_index``: a per-atom step size is noisy for a few features (analog bits) and
        biases the sampled class frequencies (test_atom_types.py, the fixed-prior test).
        """
        self._check_prediction(prediction, state.shape[0])
        pred_x0 = self.x0_estimate(prediction)
        if batch_index is None:
            return self.sde.step_corrector(t01, dt01, state, pred_x0, tau=tau, generator=generator)
        if batch_index.shape != (state.shape[0],):
            raise ValueError(
                f"batch_index must have shape ({state.shape[0]},), got {tuple(batch_index.shape)}"
            )
        if num_crystals is None:
            num_crystals = int(batch_index.max()) + 1 if batch_index.numel() else 0
        score = self.sde.score(t01, state, pred_x0)
        per_atom = score.square().mean(dim=1)
        total = per_atom.new_zeros(num_crystals).index_add_(0, batch_index, per_atom)
        count = per_atom.new_zeros(num_crystals).index_add_(
            0, batch_index, torch.ones_like(per_atom)
        )
        mean_sq = (total / count.clamp_min(1.0)).clamp_min(_TINY)[batch_index]
        delta = (tau / mean_sq)[:, None]
        noise = randn_like(state, generator)
        return state + delta * score + torch.sqrt(2.0 * delta) * noise


class OneHotDiffusion(_ContinuousTypeDiffusion):
    """Continuous diffusion on one-hot encodings (modality ``c``).

    State ``[N, K]``, x₀ = ``e_k``; the network regresses x₀ (``output_dim = K``) with MSE.
    Decoding is the argmax, i.e. the nearest one-hot vector.

    Args:
        num_classes: ``K``.
        beta_min, beta_max: linear β schedule of the VP-SDE over ``t01``.
    """

    def __init__(self, num_classes: int, *, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        super().__init__(torch.eye(int(num_classes)), beta_min=beta_min, beta_max=beta_max)

    def decode(self, state: Tensor) -> Tensor:
        """``argmax_k state[:, k]`` (``[N]``, long)."""
        return self.network_input(state).argmax(dim=-1)


class AnalogBitsDiffusion(_ContinuousTypeDiffusion):
    """Continuous diffusion on analog bits (modality ``c-ab``).

    Class ``k`` is written with ``num_bits = ceil(log2 K)`` binary digits, most significant
    first, each mapped to ``±scale`` (``1 → +scale``, ``0 → -scale``). The network regresses the
    bits (``output_dim = num_bits``) with MSE; reverse steps clamp the estimate to
    ``[-scale, scale]``.

    Args:
        num_classes: ``K``.
        beta_min, beta_max: linear β schedule of the VP-SDE over ``t01``.
        scale: bit magnitude (``TypeDiffusionConfig.analog_bit_scale``).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        scale: float = 1.0,
    ) -> None:
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if not scale > 0.0:
            raise ValueError(f"analog bit scale must be > 0, got {scale!r}")
        self.num_bits = math.ceil(math.log2(int(num_classes)))
        self.scale = float(scale)
        bits = self.int_to_bits(torch.arange(int(num_classes)), self.num_bits)
        super().__init__((2.0 * bits - 1.0) * self.scale, beta_min=beta_min, beta_max=beta_max)

    @staticmethod
    def int_to_bits(index: Tensor, num_bits: int) -> Tensor:
        """Binary digits ``{0., 1.}`` ``[N, num_bits]`` of ``index [N]``, most significant first."""
        powers = 2 ** torch.arange(num_bits - 1, -1, -1, device=index.device)
        return (index.unsqueeze(-1) & powers).ne(0).to(torch.get_default_dtype())

    @staticmethod
    def bits_to_int(bits: Tensor) -> Tensor:
        """Inverse of :meth:`int_to_bits` for ``{0, 1}`` (or boolean) bits ``[N, num_bits]``."""
        num_bits = bits.shape[-1]
        powers = 2 ** torch.arange(num_bits - 1, -1, -1, device=bits.device)
        return (bits.long() * powers).sum(dim=-1)

    def x0_estimate(self, prediction: Tensor) -> Tensor:
        return prediction.clamp(-self.scale, self.scale)

    def decode(self, state: Tensor) -> Tensor:
        """Threshold every bit at 0 (``> 0 → 1``) and read the pattern as an index.

        A pattern ``≥ K`` names no class; such an atom is decoded to the valid code nearest to
        its state in Euclidean distance, ``argmax_k ⟨state, code_k⟩`` (all codes have the same
        norm). For a valid pattern that rule gives the thresholded pattern itself, so this is
        "nearest valid code" throughout, with thresholding deciding exact ties at 0.
        """
        state = self.network_input(state)
        index = self.bits_to_int(state > 0.0)
        invalid = index >= self.num_classes
        if bool(invalid.any()):
            nearest = (state[invalid] @ self.codes.to(state.dtype).T).argmax(dim=-1)
            index = index.masked_scatter(invalid, nearest)
        return index


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
        one_minus_alpha = (1.0 - _masking_alpha(self.schedule, t01)).clamp_min(_TINY)
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
        probability = (alpha_s - alpha_t) / (1.0 - alpha_t).clamp_min(_TINY)
        # Tolerance so that a float32 grid ending at t_min counts as ending there.
        final = next_t01 <= self.final_t01 + 1e-6
        return torch.where(final, torch.ones_like(probability), probability.clamp(0.0, 1.0))

    def step(
        self,
        t01: Tensor,
        dt01: float,
        state: Tensor,
        prediction: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Unmask each masked atom with probability :meth:`unmask_probability` to a class drawn
        from ``softmax(prediction)``; unmasked atoms are carried over unchanged."""
        self.network_input(state)  # validates the state
        self._check_prediction(prediction, state.shape[0])
        t01 = torch.as_tensor(t01, device=state.device).reshape(-1)
        if t01.numel() not in (1, state.numel()):
            raise ValueError(f"need one t01 per atom, got {t01.numel()} for {state.numel()}")
        probability = self.unmask_probability(t01, dt01).expand(state.shape)
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


def make_type_process(config: TypeDiffusionConfig, num_classes: int) -> AtomTypeProcess:
    """The atom-type process a config names, over ``num_classes`` element classes.

    The masking process uses the linear schedule and ends at ``t01 = 1e-3`` (its defaults).
    """
    if config.modality == "c":
        return OneHotDiffusion(num_classes, beta_min=config.beta_min, beta_max=config.beta_max)
    if config.modality == "c-ab":
        return AnalogBitsDiffusion(
            num_classes,
            beta_min=config.beta_min,
            beta_max=config.beta_max,
            scale=config.analog_bit_scale,
        )
    if config.modality == "d":
        return MaskingDiffusion(num_classes)
    raise ValueError(f"Unknown atom-type modality {config.modality!r}; choose 'c', 'c-ab' or 'd'")
