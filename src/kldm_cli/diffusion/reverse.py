"""The reverse-step interface shared by every process (positions, lattice, atom types).

A sampler step is a sequence of *process steps* (:data:`StepKind`): ``"em"`` (one
Euler–Maruyama / exponential-integrator step), ``"predictor"`` (the deterministic DDIM-type
predictor of predictor–corrector sampling) and ``"corrector"`` (a Langevin corrector at fixed
time). Every process answers all three through one method,

    process.reverse_step(step: ReverseStep, state, prediction) -> state

and so does each of its process steps (``step_em`` or ``step``, ``step_predictor``,
``step_corrector``): every process has one step signature.

with :class:`ReverseStep` saying which kind of step, from ``t01 [B]`` (one time per crystal) to
``t01 + dt01`` (``dt01 < 0``), in which batch and with which generator; ``state`` is the
process's own state (a tensor, or a tuple of tensors for the positions) and ``prediction`` the
network's head for that process.
The sampler loop (:mod:`kldm_cli.sampling`) therefore never needs to know which process it steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

__all__ = [
    "STEP_KINDS",
    "ReverseProcess",
    "ReverseStep",
    "StepContext",
    "StepKind",
    "crystal_step_size",
    "step_function",
]

StepKind = Literal["em", "predictor", "corrector"]
STEP_KINDS: tuple[StepKind, ...] = ("em", "predictor", "corrector")

#: Floor for a mean squared score (an all-zero score gives a finite step, not NaN).
_TINY = 1e-12


@dataclass(frozen=True)
class StepContext:
    """What stays fixed over a sampling run: the batch layout and the corrector's ``tau``."""

    batch_index: Tensor  # [N] crystal of each atom (long)
    num_crystals: int  # B
    tau: float = 0.25  # corrector step size (SamplerConfig.corrector_tau)


@dataclass(frozen=True)
class ReverseStep:
    """One process step: which kind, from ``t01`` to ``t01 + dt01``, in which batch, drawing
    with ``generator``. ``t01`` has one time per crystal (``[B]``); a process that lives on
    atoms gathers ``t01[context.batch_index]`` itself."""

    kind: StepKind
    t01: Tensor
    dt01: float
    context: StepContext
    generator: torch.Generator | None = None


class ReverseProcess(Protocol):
    """Anything the sampler loop can step: the positions, the lattice, the atom types."""

    def reverse_step(self, step: ReverseStep, state: Any, prediction: Tensor) -> Any: ...


def step_function(
    kind: str, em: Callable[..., Any], predictor: Callable[..., Any], corrector: Callable[..., Any]
) -> Callable[..., Any]:
    """The step of a process for ``kind`` (each called as ``f(step, state, prediction)``);
    raises ``ValueError`` for anything else."""
    if kind == "em":
        return em
    if kind == "predictor":
        return predictor
    if kind == "corrector":
        return corrector
    raise ValueError(f"Unknown process step {kind!r}; choose one of {', '.join(STEP_KINDS)}")


def crystal_step_size(score: Tensor, tau: float, batch_index: Tensor, num_crystals: int) -> Tensor:
    """Langevin corrector step size ``δ = tau / mean(s²)`` per atom, ``[N, 1]``, the mean over
    each crystal's atoms and features of ``score [N, D]`` (the reference's ``scatter_mean`` over
    ``node_index``); floored so that an all-zero score gives a finite step."""
    per_atom = score.square().mean(dim=-1)
    sums = per_atom.new_zeros(num_crystals).index_add_(0, batch_index, per_atom)
    counts = per_atom.new_zeros(num_crystals).index_add_(0, batch_index, torch.ones_like(per_atom))
    mean_sq = (sums / counts.clamp_min(1.0)).clamp_min(_TINY)
    return (tau / mean_sq)[batch_index][:, None]
