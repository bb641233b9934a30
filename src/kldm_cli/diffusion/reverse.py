"""The reverse-step interface shared by every process (positions, lattice, atom types).

A sampler step is a sequence of *process steps* (:data:`StepKind`): ``"em"`` (one
Euler–Maruyama / exponential-integrator step), ``"predictor"`` (the deterministic DDIM-type
predictor of predictor–corrector sampling) and ``"corrector"`` (a Langevin corrector at fixed
time). Every process answers all three through one method,

    process.reverse_step(step: ReverseStep, state, prediction) -> state

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
    "step_function",
]

StepKind = Literal["em", "predictor", "corrector"]
STEP_KINDS: tuple[StepKind, ...] = ("em", "predictor", "corrector")


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


def step_function(kind: str, em: Callable[..., Any], predictor: Callable[..., Any]) -> Callable:
    """The EM or predictor step of a process for ``kind``; raises ``ValueError`` for anything
    else (the corrector takes ``tau`` and is called by each process itself)."""
    if kind == "em":
        return em
    if kind == "predictor":
        return predictor
    raise ValueError(f"Unknown process step {kind!r}; choose one of {', '.join(STEP_KINDS)}")
