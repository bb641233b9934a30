"""One-hot atom types (modality ``c``): the VP-SDE on ``e_k ∈ {0, 1}^K``, decoded by argmax."""

from __future__ import annotations

import torch
from torch import Tensor

from kldm_cli.diffusion.atom_types.continuous import ContinuousTypeDiffusion


class OneHotDiffusion(ContinuousTypeDiffusion):
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
