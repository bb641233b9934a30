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

One module per process: :mod:`.one_hot`, :mod:`.analog_bits` (both on the VP-SDE of
:mod:`.continuous`), :mod:`.masking`; their interface is :mod:`.base`.
"""

from __future__ import annotations

from kldm_cli.config import TypeDiffusionConfig
from kldm_cli.diffusion.atom_types.analog_bits import AnalogBitsDiffusion
from kldm_cli.diffusion.atom_types.base import IGNORE_INDEX, AtomTypeProcess, atom_times
from kldm_cli.diffusion.atom_types.continuous import ContinuousTypeDiffusion
from kldm_cli.diffusion.atom_types.masking import MaskingDiffusion, MaskingScheduleName
from kldm_cli.diffusion.atom_types.one_hot import OneHotDiffusion

__all__ = [
    "IGNORE_INDEX",
    "AnalogBitsDiffusion",
    "AtomTypeProcess",
    "ContinuousTypeDiffusion",
    "MaskingDiffusion",
    "MaskingScheduleName",
    "OneHotDiffusion",
    "atom_times",
    "make_type_process",
]


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
