"""Reverse-process samplers: Euler–Maruyama (exponential integrator) and predictor–corrector.

Both walk a time grid ``t01`` from 1 (prior) to ``t_min`` and update every modality of
:class:`~kldm_cli.model.KLDM` at each step:

- ``em``: one network evaluation per step, then the exponential-integrator step of the
  velocities/positions, the lattice VP-SDE and (DNG) the atom types;
- ``pc``: a Langevin corrector step (step size ``tau``) at time t, then a predictor step —
  two network evaluations per step, as in the paper's KLDM (PC) rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from kldm_cli.config import SamplerConfig
from kldm_cli.data.batch import batch_index_from_num_atoms, fully_connected_edges
from kldm_cli.data.records import CrystalRecord
from kldm_cli.model import KLDM, SampleState


@dataclass
class Samples:
    """Generated crystals of one batch, as tensors on the CPU."""

    frac_coords: Tensor  # [N, 3] in [0, 1)
    lengths: Tensor  # [B, 3] Å
    angles: Tensor  # [B, 3] degrees
    atomic_numbers: Tensor  # [N]
    num_atoms: Tensor  # [B]

    def split(self) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Per crystal: (frac_coords [K,3], lengths [3], angles [3], atomic_numbers [K])."""
        coords = torch.split(self.frac_coords, self.num_atoms.tolist())
        numbers = torch.split(self.atomic_numbers, self.num_atoms.tolist())
        return [
            (coords[i], self.lengths[i], self.angles[i], numbers[i])
            for i in range(len(self.num_atoms))
        ]


def time_grid(num_steps: int, t_min: float = 1e-3, device: torch.device | str = "cpu") -> Tensor:
    """The ``num_steps + 1`` times from 1 down to ``t_min`` (uniform)."""
    if num_steps < 1:
        raise ValueError(f"the number of steps must be at least 1, got {num_steps}")
    return torch.linspace(1.0, t_min, num_steps + 1, device=device, dtype=torch.float64)


def prior_state(
    model: KLDM,
    batch_index: Tensor,
    num_crystals: int,
    generator: torch.Generator | None,
) -> SampleState:
    """Draw x_1 from the prior of every modality."""
    frac_coords, velocity = model.positions.prior(batch_index, num_crystals, generator=generator)
    lattice_params = model.lattice.prior((num_crystals, 6), generator=generator)
    type_state = None
    if model.types is not None:
        type_state = model.types.prior(batch_index.numel(), generator=generator)
    return SampleState(frac_coords, velocity, lattice_params, type_state)


def _to_device(state: SampleState, device: torch.device) -> SampleState:
    move = lambda x: None if x is None else x.to(device)  # noqa: E731
    return SampleState(
        move(state.frac_coords), move(state.velocity), move(state.lattice_params),
        move(state.type_state),
    )  # fmt: skip


@torch.inference_mode()
def sample(
    model: KLDM,
    num_atoms: Tensor,
    atomic_numbers: Tensor | None = None,
    sampler: SamplerConfig | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Samples:
    """Run the reverse process for crystals of ``num_atoms`` [B] atoms.

    ``atomic_numbers`` [N] is required for CSP (the composition is given) and ignored for DNG.
    Random draws use ``generator`` (a CPU generator), so a seed fixes the output.
    """
    sampler = sampler or model.config.sampler
    device = next(model.parameters()).device
    num_atoms = num_atoms.to(torch.long).cpu()
    num_crystals = int(num_atoms.numel())
    batch_index, _ = batch_index_from_num_atoms(num_atoms)
    edge_index = fully_connected_edges(num_atoms)
    type_index = None
    if model.types is None:
        if atomic_numbers is None:
            raise ValueError("CSP sampling needs the atomic numbers of every atom")
        type_index = model.element_index(atomic_numbers.to(torch.long).cpu()).to(device)

    state = _to_device(prior_state(model, batch_index, num_crystals, generator), device)
    batch_index, edge_index = batch_index.to(device), edge_index.to(device)
    grid = time_grid(sampler.num_steps, model.config.train.t_min)
    for step in range(sampler.num_steps):
        t, dt = float(grid[step]), float(grid[step + 1] - grid[step])
        t01 = torch.full((num_crystals,), t, device=device, dtype=state.frac_coords.dtype)
        if sampler.method == "pc":
            state = _corrector_step(
                model, t01, dt, state, type_index, batch_index, edge_index, sampler, generator
            )
        state = _predictor_step(
            model, t01, dt, state, type_index, batch_index, edge_index, sampler, generator
        )
        if progress is not None:
            progress(step + 1, sampler.num_steps)
    return _finalize(model, state, type_index, num_atoms)


def _predictor_step(
    model: KLDM,
    t01: Tensor,
    dt: float,
    state: SampleState,
    type_index: Tensor | None,
    batch_index: Tensor,
    edge_index: Tensor,
    sampler: SamplerConfig,
    generator: torch.Generator | None,
) -> SampleState:
    num_crystals = t01.numel()
    out = model.predict(t01, state, type_index, batch_index, edge_index, num_crystals)
    if sampler.method == "pc":
        positions_step, lattice_step = model.positions.step_predictor, model.lattice.step_predictor
    else:
        positions_step, lattice_step = model.positions.step_em, model.lattice.step_em
    frac_coords, velocity = positions_step(
        t01, dt, state.frac_coords, state.velocity, out.velocity, batch_index, num_crystals,
        generator=generator,
    )  # fmt: skip
    lattice_params = lattice_step(t01, dt, state.lattice_params, out.lattice, generator=generator)
    type_state = state.type_state
    if model.types is not None:
        type_state = model.types.step(
            t01[batch_index], dt, type_state, out.types, generator=generator
        )
    return SampleState(frac_coords, velocity, lattice_params, type_state)


def _corrector_step(
    model: KLDM,
    t01: Tensor,
    dt: float,
    state: SampleState,
    type_index: Tensor | None,
    batch_index: Tensor,
    edge_index: Tensor,
    sampler: SamplerConfig,
    generator: torch.Generator | None,
) -> SampleState:
    num_crystals = t01.numel()
    tau = sampler.corrector_tau
    out = model.predict(t01, state, type_index, batch_index, edge_index, num_crystals)
    frac_coords, velocity = model.positions.step_corrector(
        t01, dt, state.frac_coords, state.velocity, out.velocity, batch_index, num_crystals,
        tau=tau, generator=generator,
    )  # fmt: skip
    lattice_params = model.lattice.step_corrector(
        t01, dt, state.lattice_params, out.lattice, tau=tau, generator=generator
    )
    type_state = state.type_state
    corrector = getattr(model.types, "step_corrector", None)
    if corrector is not None:
        type_state = corrector(
            t01[batch_index], dt, type_state, out.types, tau=tau, generator=generator,
            batch_index=batch_index, num_crystals=num_crystals,
        )  # fmt: skip
    return SampleState(frac_coords, velocity, lattice_params, type_state)


def _finalize(
    model: KLDM, state: SampleState, type_index: Tensor | None, num_atoms: Tensor
) -> Samples:
    if model.types is not None:
        type_index = model.types.decode(state.type_state)
    lengths, angles = model.lattice_transform.decode(state.lattice_params.double().cpu(), num_atoms)
    return Samples(
        frac_coords=torch.remainder(state.frac_coords.double().cpu(), 1.0),
        lengths=lengths.double(),
        angles=angles.double(),
        atomic_numbers=model.atomic_numbers(type_index).cpu(),
        num_atoms=num_atoms,
    )


# ---------------------------------------------------------------------- batching
def plan_batches(num_atoms: Sequence[int], atom_budget: int) -> list[list[int]]:
    """Split crystal indices into consecutive batches of at most ``atom_budget`` atoms.

    A crystal larger than the budget gets a batch of its own.
    """
    if atom_budget < 1:
        raise ValueError(f"the atom budget per batch must be positive, got {atom_budget}")
    batches: list[list[int]] = []
    current: list[int] = []
    current_atoms = 0
    for index, count in enumerate(num_atoms):
        if current and current_atoms + count > atom_budget:
            batches.append(current)
            current, current_atoms = [], 0
        current.append(index)
        current_atoms += count
    if current:
        batches.append(current)
    return batches


def batch_generator(seed: int, batch_number: int, device: torch.device | str = "cpu"):
    """The random generator of one batch: fixed by (seed, batch number), so a resumed or
    partial run reproduces exactly the batches an uninterrupted run would have made."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + batch_number)


def samples_to_records(samples: Samples) -> list[CrystalRecord]:
    """Generated tensors → one :class:`CrystalRecord` per crystal."""
    return [
        CrystalRecord(
            frac_coords=coords.numpy(),
            lengths=lengths.numpy(),
            angles=angles.numpy(),
            atomic_numbers=numbers.numpy().astype("int64"),
        )
        for coords, lengths, angles, numbers in samples.split()
    ]
