"""The VP-SDE on a continuous encoding of the atom types, shared by one-hot (``c``) and analog
bits (``c-ab``): x₀ regression with MSE, Euler–Maruyama, DDIM predictor and Langevin corrector."""

from __future__ import annotations

import torch
from torch import Tensor

from kldm_cli.config import LatticeDiffusionConfig
from kldm_cli.diffusion.atom_types.base import AtomTypeProcess, atom_step, atom_times
from kldm_cli.diffusion.reverse import ReverseStep, crystal_step_size
from kldm_cli.diffusion.vp_sde import VPSDE, randn_like


class ContinuousTypeDiffusion(AtomTypeProcess):
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

    def step(self, step: ReverseStep, state: Tensor, prediction: Tensor) -> Tensor:
        """Euler–Maruyama step of the reverse SDE (:meth:`VPSDE.step_em`)."""
        self._check_prediction(prediction, state.shape[0])
        return self.sde.step_em(atom_step(step), state, self.x0_estimate(prediction))

    def step_predictor(self, step: ReverseStep, state: Tensor, prediction: Tensor) -> Tensor:
        """Deterministic DDIM predictor (:meth:`VPSDE.step_predictor`), as the reference's PC."""
        self._check_prediction(prediction, state.shape[0])
        return self.sde.step_predictor(atom_step(step), state, self.x0_estimate(prediction))

    def step_corrector(self, step: ReverseStep, state: Tensor, prediction: Tensor) -> Tensor:
        """Langevin corrector (:meth:`corrector`) with its step size pooled per crystal."""
        self._check_prediction(prediction, state.shape[0])
        context = step.context
        return self.corrector(
            atom_times(step), state, self.x0_estimate(prediction), context.tau, step.generator,
            batch_index=context.batch_index, num_crystals=context.num_crystals,
        )  # fmt: skip

    def corrector(
        self,
        t01: Tensor,
        state: Tensor,
        pred_x0: Tensor,
        tau: float = 0.25,
        generator: torch.Generator | None = None,
        *,
        batch_index: Tensor | None = None,
        num_crystals: int | None = None,
    ) -> Tensor:
        """Langevin corrector at ``t01 [N]`` (time does not move) for the x₀ estimate ``pred_x0``.

        ``x ← x + δ s + √(2δ) ε`` with the score ``s`` of :meth:`VPSDE.score` and
        ``δ = tau / mean(s²)``. With ``batch_index [N]`` the mean runs over all features of all
        atoms of each crystal, as the reference does for atom types (``scatter_mean`` over
        ``node_index``); without it, over each atom's own features.
        Pass ``batch_index``: a per-atom step size is noisy for a few features (analog bits) and
        biases the sampled class frequencies (test_atom_types.py, the fixed-prior test).
        """
        if batch_index is None:
            batch_index = torch.arange(state.shape[0], device=state.device)
        if batch_index.shape != (state.shape[0],):
            raise ValueError(
                f"batch_index must have shape ({state.shape[0]},), got {tuple(batch_index.shape)}"
            )
        if num_crystals is None:
            num_crystals = int(batch_index.max()) + 1 if batch_index.numel() else 0
        score = self.sde.score(t01, state, pred_x0)
        delta = crystal_step_size(score, tau, batch_index, num_crystals)
        return state + delta * score + torch.sqrt(2.0 * delta) * randn_like(state, generator)
