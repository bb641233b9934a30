"""Analog-bit atom types (modality ``c-ab``, Chen et al. 2023): the VP-SDE on the binary digits
of the class index, mapped to ``{-scale, +scale}``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kldm_cli.diffusion.atom_types.continuous import ContinuousTypeDiffusion


class AnalogBitsDiffusion(ContinuousTypeDiffusion):
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
