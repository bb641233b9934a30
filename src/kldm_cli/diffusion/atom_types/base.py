"""The interface every atom-type process implements (:class:`AtomTypeProcess`): training draws,
network input, loss, prior, the reverse steps and decoding to class indices."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from kldm_cli.diffusion.reverse import ReverseStep, step_function

#: Target value of atoms that carry no loss (unmasked atoms of :class:`MaskingDiffusion`);
#: the same sentinel as ``torch.nn.functional.cross_entropy``'s default ``ignore_index``.
IGNORE_INDEX = -100

#: Floor for ``1 - α(t)`` in the masking loss weight and the unmasking probability.
TINY = 1e-12


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

    def step(self, step: ReverseStep, state: Tensor, prediction: Tensor) -> Tensor:
        """One reverse step from ``step.t01`` to ``step.t01 + step.dt01`` (``dt01 < 0``) for
        ``state`` and the network's ``prediction [N, output_dim]``: the EM step."""
        raise NotImplementedError

    def step_predictor(self, step: ReverseStep, state: Tensor, prediction: Tensor) -> Tensor:
        """Predictor of predictor–corrector sampling; :meth:`step` unless a process differs."""
        return self.step(step, state, prediction)

    def step_corrector(self, step: ReverseStep, state: Tensor, prediction: Tensor) -> Tensor:
        """Corrector of predictor–corrector sampling at ``step.t01`` (time does not move), step
        size ``step.context.tau``; the identity unless a process has one (the masking process
        has none, as in the reference)."""
        del step, prediction
        return state

    def reverse_step(self, step: ReverseStep, state: Tensor, prediction: Tensor) -> Tensor:
        """The sampler's interface (:mod:`kldm_cli.diffusion.reverse`): ``step.kind`` picks
        :meth:`step` (EM), :meth:`step_predictor` or :meth:`step_corrector`. ``step.t01 [B]`` has
        one time per crystal; :func:`atom_times` gathers it per atom."""
        process_step = step_function(step.kind, self.step, self.step_predictor, self.step_corrector)
        return process_step(step, state, prediction)

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


def atom_times(step: ReverseStep) -> Tensor:
    """The time of each atom's crystal, ``[N]``: ``step.t01[step.context.batch_index]``."""
    return step.t01[step.context.batch_index]


def atom_step(step: ReverseStep) -> ReverseStep:
    """``step`` with one time per atom (:func:`atom_times`) instead of one per crystal, for a
    process whose rows are atoms (:class:`~kldm_cli.diffusion.vp_sde.VPSDE` on atom types)."""
    return dataclasses.replace(step, t01=atom_times(step))
