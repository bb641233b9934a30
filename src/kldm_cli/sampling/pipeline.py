"""The generation pipeline of ``kldm predict``, ``kldm generate`` and ``kldm evaluate csp``:

    plan → batches → sample → records → writer

- **plan** (:class:`SamplingPlan`): one entry per sample index, the atom count and (CSP) the
  composition of each cell, checked against the model once when the plan is made;
- **batches** (:func:`plan_batches`): consecutive sample indices filled up to an atom budget, each
  with its own random stream (:func:`batch_generator`, fixed by the seed and the batch number, so
  a resumed or partial run draws exactly what an uninterrupted one would);
- **sample** (:func:`sample_batches`): the reverse process (:func:`kldm_cli.sampling.loop.sample`)
  batch after batch, skipping batches that an earlier run finished;
- **records** (:func:`samples_to_records`): tensors → one :class:`CrystalRecord` per crystal →
  pymatgen ``Structure``;
- **writer** (:class:`SampleWriter`): each batch's files as soon as it finishes, with the run's
  metadata built once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kldm_cli.config import KLDMConfig, SamplerConfig
from kldm_cli.data.records import CrystalRecord
from kldm_cli.device import resolve_device
from kldm_cli.model import KLDM
from kldm_cli.sampling.loop import Samples, sample
from kldm_cli.sampling.models import check_compositions, load_model
from kldm_cli.sampling.shards import Shard

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: Default number of atoms per sampling batch (the fully connected graph grows as atoms²
#: per crystal, so this bounds memory and keeps a laptop responsive).
DEFAULT_BATCH_ATOMS = 4096

#: ``on_batch(indices, structures)``: the sample indices and structures of a finished batch.
BatchCallback = Callable[[list[int], list["Structure"]], None]


# ---------------------------------------------------------------------- plan
def sampler_settings(
    config: KLDMConfig, method: str | None = None, steps: int | None = None, grid: str | None = None
) -> SamplerConfig:
    """The model's sampler with ``method`` / ``steps`` / ``grid`` where given (None: the
    model's)."""
    return replace(
        config.sampler,
        method=method or config.sampler.method,  # type: ignore[arg-type]
        num_steps=steps or config.sampler.num_steps,
        time_grid=grid or config.sampler.time_grid,
    )


@dataclass
class SamplingPlan:
    """What one run samples: per sample index its atom count and, for CSP, its composition.

    Make it with :meth:`csp` or :meth:`dng`, which check it against the model's config.
    """

    num_atoms: list[int]
    #: CSP: the atomic numbers of each sample's cell; DNG: None (the model draws the species).
    atomic_numbers: list[list[int]] | None
    batch_atoms: int = DEFAULT_BATCH_ATOMS
    batches: list[list[int]] = field(init=False)

    def __post_init__(self) -> None:
        self.batches = plan_batches(self.num_atoms, self.batch_atoms)

    @classmethod
    def csp(
        cls,
        config: KLDMConfig,
        compositions: Sequence[Sequence[int]],
        batch_atoms: int = DEFAULT_BATCH_ATOMS,
        label: str = "composition",
    ) -> SamplingPlan:
        """One sample per composition (atomic numbers), each checked once against the model
        (``label`` names them in the error)."""
        check_compositions(config, compositions, label)
        return cls([len(c) for c in compositions], [list(c) for c in compositions], batch_atoms)

    @classmethod
    def dng(
        cls, config: KLDMConfig, num_atoms: Sequence[int], batch_atoms: int = DEFAULT_BATCH_ATOMS
    ) -> SamplingPlan:
        """One crystal of each atom count (from :func:`kldm_cli.generate.plan_num_atoms`, which
        keeps them within the model's range)."""
        return cls(list(num_atoms), None, batch_atoms)

    def __len__(self) -> int:
        return len(self.num_atoms)

    def largest_batch_atoms(self) -> int:
        """Atoms of the largest batch (sizes the CPU threads)."""
        return max((sum(self.num_atoms[i] for i in batch) for batch in self.batches), default=0)


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


# ---------------------------------------------------------------------- sample → records
class StepCounter:
    """Turns each batch's ``progress(step, num_steps)`` into ``on_step(done, total)`` over a
    run of ``total_steps`` sampler steps (all its batches still to sample)."""

    def __init__(self, on_step: Callable[[int, int], None] | None, total_steps: int) -> None:
        self.on_step, self.total_steps, self.finished = on_step, total_steps, 0

    def __call__(self, step: int, num_steps: int) -> None:
        if self.on_step is not None:
            self.on_step(self.finished + step, self.total_steps)
        if step == num_steps:
            self.finished += num_steps


def batches_to_sample(
    plan: SamplingPlan, skip: Collection[int] = (), shard: Shard | None = None
) -> list[list[int]]:
    """The batches of ``plan`` with at least one sample index not in ``skip`` (and, given a
    ``shard``, owned by it)."""
    return [
        batch
        for number, batch in enumerate(plan.batches)
        if not all(i in skip for i in batch) and (shard is None or shard.owns(number))
    ]


def sample_batches(
    model: KLDM,
    plan: SamplingPlan,
    sampler: SamplerConfig,
    *,
    seed: int = 0,
    device: str = "cpu",
    skip: Collection[int] = (),
    progress: Callable[[int, int], None] | None = None,
    first_batch_number: int = 0,
    shard: Shard | None = None,
) -> Iterator[tuple[list[int], list[Structure]]]:
    """Sample the batches of ``plan`` and yield each one's sample indices and structures.

    A batch whose indices are all in ``skip`` (finished by an earlier run), or that belongs to
    another process's ``shard`` (:mod:`kldm_cli.sampling.shards`), is not sampled. Batch ``b``
    draws from :func:`batch_generator` ``(seed, first_batch_number + b)``;
    ``progress(step, num_steps)`` is called after every sampler step.
    """
    target = resolve_device(device)
    for batch_number, indices in enumerate(plan.batches, start=first_batch_number):
        if all(i in skip for i in indices):
            continue
        if shard is not None and not shard.owns(batch_number):
            continue
        numbers = None
        if plan.atomic_numbers is not None:
            numbers = torch.tensor([z for i in indices for z in plan.atomic_numbers[i]])
        samples = sample(
            model, torch.tensor([plan.num_atoms[i] for i in indices]), numbers, sampler,
            batch_generator(seed, batch_number, target), progress,
        )  # fmt: skip
        yield indices, [record.to_structure() for record in samples_to_records(samples)]


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


# ---------------------------------------------------------------------- writer
class SampleWriter:
    """Writes finished batches to ``out`` (``sample_00000.cif`` ... or ``samples.extxyz``), each
    structure with its formula, sample index and the run's ``metadata`` (built once)."""

    def __init__(self, out: Path, fmt: str, metadata: Mapping[str, Any]) -> None:
        from kldm_cli.data.writers import StructureWriter

        self.files = StructureWriter(out, fmt=fmt, prefix="sample")  # type: ignore[arg-type]
        self.metadata = dict(metadata)

    def write(
        self, indices: Sequence[int], structures: Sequence[Structure], skip: Collection[int] = ()
    ) -> list[Path]:
        """Write every structure whose index is not in ``skip``; returns the files written."""
        written = []
        for index, structure in zip(indices, structures, strict=True):
            if index in skip:
                continue
            formula = structure.composition.formula.replace(" ", "")
            written.append(
                self.files.write(structure, index, {"formula": formula, **self.metadata})
            )
        return written


# ---------------------------------------------------------------------- CSP in one call
def sample_model(
    model: KLDM,
    compositions: Sequence[Sequence[int]],
    num_samples: int,
    *,
    method: str = "pc",
    steps: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    batch_atoms: int = DEFAULT_BATCH_ATOMS,
    on_batch: BatchCallback | None = None,
    grid: str | None = None,
    done: Mapping[int, Structure] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> list[list[Structure]]:
    """``num_samples`` candidates for each composition (lists of atomic numbers).

    Job ``c * num_samples + s`` is sample ``s`` of composition ``c``. ``on_batch`` gets the job
    indices and structures of each finished batch; ``on_step(done, total)`` follows the sampler
    steps over all batches still to sample. ``grid`` is the time grid (default: the model's). A
    batch whose jobs are all in ``done`` (job index → structure, from an interrupted run with the
    same arguments) is taken from it instead of sampled.
    """
    plan = SamplingPlan.csp(
        model.config, [list(c) for c in compositions for _ in range(num_samples)], batch_atoms
    )
    sampler = replace(model.config.sampler, method=method, num_steps=steps)  # type: ignore[arg-type]
    if grid is not None:
        sampler = replace(sampler, time_grid=grid)
    done = done or {}
    results: list[Structure | None] = [done.get(i) for i in range(len(plan))]
    counter = StepCounter(on_step, len(batches_to_sample(plan, done)) * sampler.num_steps)
    for indices, structures in sample_batches(
        model, plan, sampler, seed=seed, device=device, skip=done, progress=counter
    ):
        for index, structure in zip(indices, structures, strict=True):
            results[index] = structure
        if on_batch is not None:
            on_batch(indices, structures)
    return [results[i * num_samples : (i + 1) * num_samples] for i in range(len(compositions))]  # type: ignore[misc]


def sample_csp(
    weights: str | None,
    compositions: list[list[int]],
    num_samples: int,
    *,
    sampler: str = "pc",
    steps: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    grid: str | None = None,
    batch_atoms: int = DEFAULT_BATCH_ATOMS,
    on_batch: BatchCallback | None = None,
    done: Mapping[int, Structure] | None = None,
) -> list[list[Structure]]:
    """Load a CSP model and sample ``num_samples`` candidates per composition
    (:func:`sample_model`)."""
    loaded = load_model(weights, "csp", device)
    return sample_model(
        loaded.model, compositions, num_samples, method=sampler, steps=steps, seed=seed,
        device=device, batch_atoms=batch_atoms, on_batch=on_batch, grid=grid, done=done,
    )  # fmt: skip
