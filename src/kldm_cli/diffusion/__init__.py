"""Diffusion processes, one per module; none imports the network (:mod:`kldm_cli.nn`).

- :mod:`~kldm_cli.diffusion.kinetic_langevin`: fractional coordinates + velocities (KLDM);
- :mod:`~kldm_cli.diffusion.vp_sde`: VP-SDE for the lattice (and continuous atom types);
- :mod:`~kldm_cli.diffusion.atom_types`: one-hot, analog-bit and masking atom types (DNG), one
  module each;
- :mod:`~kldm_cli.diffusion.wrapped_normal`: wrapped-normal score and wrapping helpers;
- :mod:`~kldm_cli.diffusion.reverse`: the one reverse-step interface they all implement
  (``reverse_step(step, state, prediction)``).
"""

from kldm_cli.diffusion.kinetic_langevin import KernelCoefficients, KineticLangevin, mean_free
from kldm_cli.diffusion.reverse import (
    STEP_KINDS,
    ReverseProcess,
    ReverseStep,
    StepContext,
    StepKind,
)
from kldm_cli.diffusion.vp_sde import VPSDE, randn_like
from kldm_cli.diffusion.wrapped_normal import (
    wrap_centered,
    wrap_unit,
    wrapped_normal_log_prob,
    wrapped_normal_score,
    wrapped_normal_score_sq_mean,
    wrapped_normal_score_sq_ratio,
)

__all__ = [
    "STEP_KINDS",
    "VPSDE",
    "KernelCoefficients",
    "KineticLangevin",
    "ReverseProcess",
    "ReverseStep",
    "StepContext",
    "StepKind",
    "mean_free",
    "randn_like",
    "wrap_centered",
    "wrap_unit",
    "wrapped_normal_log_prob",
    "wrapped_normal_score",
    "wrapped_normal_score_sq_mean",
    "wrapped_normal_score_sq_ratio",
]
