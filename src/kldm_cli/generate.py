"""De novo generation (DNG): species, fractional coordinates and lattice all generated.

``generate`` plans every crystal's atom count up front (drawn from the training set's
distribution stored in ``config.json``, or fixed by the user), splits them into batches under an
atom budget, and samples batch after batch. Each batch has its own seed-derived generator and is
written and flushed as soon as it finishes, so an interrupted run keeps every finished structure
and ``resume=True`` continues it, producing exactly what an uninterrupted run would have.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from pymatgen.core import Structure

from kldm_cli.config import KLDMConfig
from kldm_cli.device import resolve_device
from kldm_cli.predict import DEFAULT_BATCH_ATOMS, load_model
from kldm_cli.sampling import (
    batch_generator,
    parse_time_grid,
    plan_batches,
    sample,
    samples_to_records,
    set_threads,
)


def parse_num_atoms(spec: str | None) -> tuple[int, int] | None:
    """``"8"`` → (8, 8); ``"4-12"`` → (4, 12); None → None (use the training distribution)."""
    if spec is None:
        return None
    try:
        parts = [int(p) for p in spec.split("-")]
    except ValueError as err:
        raise ValueError(f"--num-atoms must be N or LOW-HIGH, got {spec!r}") from err
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or parts[0] < 1 or parts[1] < parts[0]:
        raise ValueError(f"--num-atoms must be N or LOW-HIGH with 1 <= LOW <= HIGH, got {spec!r}")
    return parts[0], parts[1]


def plan_num_atoms(
    config: KLDMConfig, n: int, seed: int, atom_range: tuple[int, int] | None
) -> list[int]:
    """Atom counts of the ``n`` crystals: from the training distribution (restricted to
    ``atom_range`` if given) or uniform over ``atom_range`` if the training set has none."""
    if atom_range is not None and atom_range[1] > config.max_atoms:
        raise ValueError(
            f"--num-atoms {atom_range[1]} exceeds the {config.max_atoms} atoms per cell the "
            "model was trained on"
        )
    counts = dict(config.num_atoms_counts)
    if atom_range is not None:
        counts = {k: v for k, v in counts.items() if atom_range[0] <= k <= atom_range[1]}
        if not counts:
            counts = {k: 1 for k in range(atom_range[0], atom_range[1] + 1)}
    if not counts:
        raise ValueError("the model's config.json has no atom-count distribution; pass --num-atoms")
    values = torch.tensor(sorted(counts))
    weights = torch.tensor([float(counts[int(k)]) for k in values])
    generator = torch.Generator().manual_seed(seed)
    draws = torch.multinomial(weights, n, replacement=True, generator=generator)
    return values[draws].tolist()


@dataclass
class GenerateResult:
    written: int = 0
    skipped_existing: int = 0
    structures: list[Structure] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    model_source: str = ""
    notice: str | None = None

    def composition_counts(self) -> Counter:
        return Counter(s.composition.reduced_formula for s in self.structures)


def generate(
    n: int,
    *,
    weights: str | None = None,
    out: Path = Path("samples"),
    fmt: str = "cif",
    method: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    num_atoms: str | None = None,
    batch_atoms: int = DEFAULT_BATCH_ATOMS,
    resume: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
    grid: str | None = None,
    threads: int | None = None,
) -> GenerateResult:
    """Generate ``n`` crystals into ``out`` (see the module docstring).

    ``grid`` is the sampler's time grid (``"uniform"``, ``"power[:RHO]"``; default: the model's);
    ``threads`` the CPU threads (default: one per physical core).
    """
    from kldm_cli.data.writers import StructureWriter

    if n < 1:
        raise ValueError(f"the number of structures must be positive, got {n}")
    if fmt not in ("cif", "extxyz"):
        raise ValueError(f"Unknown format {fmt!r}; choose cif or extxyz")
    atom_range = parse_num_atoms(num_atoms)
    if grid is not None:
        parse_time_grid(grid)
    set_threads(threads)
    loaded = load_model(weights, "dng", device)
    config = loaded.model.config
    plan = plan_num_atoms(config, n, seed, atom_range)
    writer = StructureWriter(out, fmt=fmt, prefix="sample")
    existing = writer.existing_indices()
    if existing and not resume:
        raise ValueError(
            f"{out} already holds {len(existing)} generated structures; pass --resume to "
            "continue that run, or choose another --out"
        )
    sampler = replace(
        config.sampler,
        method=method or config.sampler.method,  # type: ignore[arg-type]
        num_steps=steps or config.sampler.num_steps,
        time_grid=grid or config.sampler.time_grid,
    )
    target = resolve_device(device)
    result = GenerateResult(model_source=loaded.source, notice=loaded.notice)
    result.skipped_existing = len(existing & set(range(n)))
    for batch_number, indices in enumerate(plan_batches(plan, batch_atoms)):
        todo = [i for i in indices if i not in existing]
        if not todo:
            continue
        generator = batch_generator(seed, batch_number, target)
        samples = sample(
            loaded.model, torch.tensor([plan[i] for i in indices]), None, sampler, generator
        )
        for index, record in zip(indices, samples_to_records(samples), strict=True):
            if index in existing:
                continue
            structure = record.to_structure()
            metadata = {
                "formula": structure.composition.formula.replace(" ", ""), "sample_index": index,
                "seed": seed, "model": loaded.source, "weights_sha256": loaded.weights_sha256,
                "sampler": sampler.method, "steps": sampler.num_steps, "grid": sampler.time_grid,
            }  # fmt: skip
            result.files.append(writer.write(structure, index, metadata))
            result.structures.append(structure)
            result.written += 1
        if on_batch is not None:
            on_batch(result.written + result.skipped_existing, n)
    return result
