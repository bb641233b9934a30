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
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pymatgen.core import Structure

from kldm_cli.config import KLDMConfig
from kldm_cli.device import resolve_device
from kldm_cli.sampling.loop import parse_time_grid
from kldm_cli.sampling.models import load_model
from kldm_cli.sampling.pipeline import (
    DEFAULT_BATCH_ATOMS,
    SampleWriter,
    SamplingPlan,
    StepCounter,
    batches_to_sample,
    sample_batches,
    sampler_settings,
)
from kldm_cli.sampling.shards import END_TIMEOUT, Shard, barrier, process_group, shard_from_env
from kldm_cli.threads import set_threads


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
    #: With ``resume``: the structures an earlier run had already written (read back), and how
    #: many of its files could not be read back (counted as not valid).
    kept_structures: list[Structure] = field(default_factory=list)
    kept_unreadable: int = 0
    #: Under torchrun, on rank 0: the structures the other ranks wrote (read back at the end).
    other_ranks: list[Structure] = field(default_factory=list)

    @property
    def all_structures(self) -> list[Structure]:
        """Every structure of the run: kept from before, then new (this process's, then the
        other ranks')."""
        return self.kept_structures + self.structures + self.other_ranks

    def composition_counts(self) -> Counter:
        return Counter(s.composition.reduced_formula for s in self.all_structures)


#: Metadata that decide what a run samples, with the option that sets each: ``--resume``
#: continues a folder only where they all match (else two kinds of samples would be mixed).
RESUME_SETTINGS = {
    "seed": "--seed", "weights_sha256": "--weights", "sampler": "--sampler", "steps": "--steps",
    "grid": "--grid", "batch_atoms": "--batch-atoms", "num_atoms_requested": "--num-atoms",
}  # fmt: skip


def check_resume_settings(
    existing: dict[int, dict], settings: dict[str, object], out: Path
) -> None:
    """Refuse to resume ``out`` when its samples' metadata differ from this run's ``settings``.

    ``existing`` maps sample index → metadata (:meth:`StructureWriter.existing_metadata`); a key
    an older file does not record is not compared. Raises ``ValueError`` naming every difference.
    """

    def plain(value: object) -> str | None:
        return None if value in (None, "null", "None") else str(value)

    differences = []
    for key, option in RESUME_SETTINGS.items():
        before = {plain(meta[key]) for meta in existing.values() if key in meta}
        now = plain(settings.get(key))
        if before and before != {now}:
            was = " and ".join(sorted(str(v) for v in before))
            differences.append(f"{option} {was} there, {now} now")
    if differences:
        raise ValueError(
            f"--resume: the structures in {out} were made with other settings ("
            + "; ".join(differences)
            + "); resume with the same options, or choose another --out"
        )


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
    on_written: Callable[[int, int], None] | None = None,
    grid: str | None = None,
    threads: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
    shard: Shard | None = None,
) -> GenerateResult:
    """Generate ``n`` crystals into ``out`` (see the module docstring).

    ``grid`` is the sampler's time grid (``"uniform"``, ``"power[:RHO]"``; default: the model's);
    ``threads`` the CPU threads (default: :func:`kldm_cli.threads.default_threads`);
    ``on_step(done, total)`` is called after every sampler step, counted over all batches still
    to sample. With ``resume``, the folder's samples must have been made with the same settings.

    ``shard`` (default: from the ``torchrun`` environment, :func:`shard_from_env`) samples only
    this process's batches (:mod:`kldm_cli.sampling.shards`); the files are those of a
    one-process run. Rank 0's result then also holds what the other ranks wrote
    (``other_ranks``).
    """
    shard = shard or shard_from_env()
    if shard.world_size > 1:
        if fmt != "cif":
            raise ValueError(
                "--format extxyz appends every structure to one file; under torchrun use "
                "--format cif (one file per sample)"
            )
        device = str(resolve_device(device, shard.local_rank))
    with process_group(shard):  # nothing for one process
        return _generate(
            n, weights=weights, out=out, fmt=fmt, method=method, steps=steps, seed=seed,
            device=device, num_atoms=num_atoms, batch_atoms=batch_atoms, resume=resume,
            on_written=on_written, grid=grid, threads=threads, on_step=on_step, shard=shard,
        )  # fmt: skip


def _generate(
    n: int,
    *,
    weights: str | None,
    out: Path,
    fmt: str,
    method: str | None,
    steps: int | None,
    seed: int,
    device: str,
    num_atoms: str | None,
    batch_atoms: int,
    resume: bool,
    on_written: Callable[[int, int], None] | None,
    grid: str | None,
    threads: int | None,
    on_step: Callable[[int, int], None] | None,
    shard: Shard,
) -> GenerateResult:
    if n < 1:
        raise ValueError(f"the number of structures must be positive, got {n}")
    if fmt not in ("cif", "extxyz"):
        raise ValueError(f"Unknown format {fmt!r}; choose cif or extxyz")
    atom_range = parse_num_atoms(num_atoms)
    if grid is not None:
        parse_time_grid(grid)
    loaded = load_model(weights, "dng", device)
    config = loaded.model.config
    plan = SamplingPlan.dng(config, plan_num_atoms(config, n, seed, atom_range), batch_atoms)
    set_threads(threads, work_atoms=plan.largest_batch_atoms())
    sampler = sampler_settings(config, method, steps, grid)
    settings = {
        "seed": seed, "weights_sha256": loaded.weights_sha256, "sampler": sampler.method,
        "steps": sampler.num_steps, "grid": sampler.time_grid, "batch_atoms": batch_atoms,
        "num_atoms_requested": num_atoms or "training distribution",
    }  # fmt: skip
    writer = SampleWriter(out, fmt, {"model": loaded.source, **settings})
    if not resume:
        writer.files.refuse_existing("pass --resume to continue that run")
    existing_metadata = writer.files.existing_metadata() if resume else {}
    existing = set(existing_metadata)
    check_resume_settings(existing_metadata, settings, out)
    barrier(shard)  # every rank has looked at the folder before any writes to it
    result = GenerateResult(model_source=loaded.source, notice=loaded.notice)
    kept = sorted(existing & set(range(n)))
    result.skipped_existing = len(kept)
    read_back = writer.files.read_structures(kept) if kept else []
    result.kept_structures = [s for s in read_back if s is not None]
    result.kept_unreadable = len(read_back) - len(result.kept_structures)
    todo = batches_to_sample(plan, existing, shard)
    counter = StepCounter(on_step, len(todo) * sampler.num_steps)
    for indices, structures in sample_batches(
        loaded.model, plan, sampler, seed=seed, device=device, skip=existing, progress=counter,
        shard=shard,
    ):  # fmt: skip
        result.files += writer.write(indices, structures, skip=existing)
        result.structures += [
            s for i, s in zip(indices, structures, strict=True) if i not in existing
        ]
        result.written = len(result.structures)
        if on_written is not None:
            on_written(result.written + result.skipped_existing, n)
    barrier(shard, END_TIMEOUT)  # every rank has written its batches
    if shard.world_size > 1 and shard.is_main:
        mine = {i for batch in todo for i in batch}
        others = sorted(set(range(n)) - existing - mine)
        read_back = writer.files.read_structures(others) if others else []
        result.other_ranks = [s for s in read_back if s is not None]
        result.kept_unreadable += len(read_back) - len(result.other_ranks)
    return result
