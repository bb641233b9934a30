"""Crystal structure prediction (CSP): composition given, coordinates and lattice generated.

Library entry points behind ``kldm predict``:

- :func:`load_model` — resolve ``--weights`` (folder, ``hf://``, release name) and rebuild the
  model from its ``config.json``, loading ``model.safetensors`` strictly;
- :func:`plan_compositions` — a formula and ``--formula-units`` → one atom list per sample,
  refused before any computation if the model cannot handle it;
- :func:`sample_model` / :func:`sample_csp` — batched reverse sampling → pymatgen Structures;
- :func:`predict` — all of the above, writing each batch's files as soon as it finishes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from pymatgen.core import Structure

from kldm_cli.config import KLDMConfig, SamplerConfig
from kldm_cli.data.formula import parse_formula
from kldm_cli.data.readers import file_sha256
from kldm_cli.device import resolve_device
from kldm_cli.model import KLDM
from kldm_cli.sampling import (
    batch_generator,
    parse_time_grid,
    plan_batches,
    sample,
    samples_to_records,
)
from kldm_cli.search import SearchSettings
from kldm_cli.threads import set_threads

#: Default number of atoms per sampling batch (the fully connected graph grows as atoms²
#: per crystal, so this bounds memory and keeps a laptop responsive).
DEFAULT_BATCH_ATOMS = 4096


@dataclass
class LoadedModel:
    model: KLDM
    source: str  # where the weights came from (folder path or release)
    notice: str | None = None
    weights_sha256: str | None = None


def load_model(weights: str | None, task: str, device: str = "cpu") -> LoadedModel:
    """Resolve and load a model folder for ``task`` ("csp" or "dng")."""
    from kldm_cli.hub import load_state_dict_strict, read_model_folder, resolve_weights

    resolved = resolve_weights(weights, task)
    config, state_dict = read_model_folder(resolved.path)
    if config.task != task:
        raise ValueError(
            f"the model in {resolved.path} was trained for {config.task.upper()}, "
            f"not {task.upper()}; pass a {task.upper()} model with --weights"
        )
    model = KLDM(config)
    load_state_dict_strict(model.network, state_dict, str(resolved.path / "model.safetensors"))
    model = model.to(resolve_device(device)).eval()
    return LoadedModel(model, str(resolved.path), resolved.notice, _sha256(resolved.path))


def _sha256(folder: Path) -> str | None:
    path = Path(folder) / "model.safetensors"
    return file_sha256(path) if path.exists() else None


# ---------------------------------------------------------------------- compositions
def check_composition(config: KLDMConfig, atomic_numbers: Sequence[int], label: str) -> None:
    """Refuse a composition the model cannot generate (unknown element, too many atoms)."""
    from pymatgen.core import Element

    unknown = sorted(set(atomic_numbers) - set(config.elements))
    if unknown:
        symbols = ", ".join(Element.from_Z(z).symbol for z in unknown)
        raise ValueError(f"{label}: the model was never trained on {symbols}")
    if len(atomic_numbers) > config.max_atoms:
        raise ValueError(
            f"{label}: {len(atomic_numbers)} atoms per cell, but the model was trained on "
            f"cells of at most {config.max_atoms} atoms"
        )


def plan_compositions(
    config: KLDMConfig, formula: str, num_samples: int, formula_units: str | int = 1
) -> list[list[int]]:
    """One atom list per sample for ``formula`` × Z.

    ``formula_units="auto"`` spreads the samples round-robin over every Z whose cell stays
    within the model's trained atom range.
    """
    if num_samples < 1:
        raise ValueError(f"the number of samples must be positive, got {num_samples}")
    atoms = parse_formula(formula)
    if formula_units == "auto":
        low, high = config.min_atoms, config.max_atoms
        options = [z for z in range(1, high // len(atoms) + 1) if low <= z * len(atoms) <= high]
        if not options:
            options = [z for z in range(1, high // len(atoms) + 1)]
        if not options:
            check_composition(config, atoms, formula)  # raises: too many atoms even for Z=1
        plan = [atoms * options[i % len(options)] for i in range(num_samples)]
    else:
        try:
            units = int(formula_units)
        except ValueError as err:
            raise ValueError(
                f"--formula-units must be a positive integer or 'auto', got {formula_units!r}"
            ) from err
        if units < 1:
            raise ValueError(f"--formula-units must be a positive integer or 'auto', got {units}")
        plan = [atoms * units] * num_samples
    for composition in {tuple(c) for c in plan}:
        if len(composition) > config.max_atoms:
            largest = config.max_atoms // len(atoms)
            fits = (
                f"the largest Z that fits is {largest} (--formula-units {largest})"
                if largest >= 1
                else "even one formula unit does not fit"
            )
            raise ValueError(
                f"{formula} × {len(composition) // len(atoms)} = {len(composition)} atoms per "
                f"cell, but the model was trained on cells of at most {config.max_atoms} atoms; "
                f"{fits}"
            )
        check_composition(config, composition, f"{formula} ({len(composition)} atoms)")
    return plan


# ---------------------------------------------------------------------- sampling
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
    on_batch: Callable[[list[int], list[Structure]], None] | None = None,
    grid: str | None = None,
    done: Mapping[int, Structure] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> list[list[Structure]]:
    """``num_samples`` candidates for each composition (lists of atomic numbers).

    ``on_step(done, total)`` is called after every sampler step, counted over all the batches
    still to sample (``total`` = those batches × steps).

    Candidates are sampled in batches of at most ``batch_atoms`` atoms; ``on_batch`` gets the
    flat job indices (composition index * num_samples + sample index) and structures of each
    finished batch. ``grid`` is the time grid (``"uniform"``, ``"power[:RHO]"``; default: the
    model's). A batch whose jobs are all in ``done`` (job index → structure, from an interrupted
    run with the same arguments) is taken from it instead of sampled; each batch has its own
    random stream, so the other batches draw what they would have drawn in one run.
    """
    jobs = [list(c) for c in compositions for _ in range(num_samples)]
    for composition in {tuple(c) for c in jobs}:
        check_composition(model.config, composition, "composition")
    sampler = replace(model.config.sampler, method=method, num_steps=steps)  # type: ignore[arg-type]
    if grid is not None:
        sampler = replace(sampler, time_grid=grid)
    results: list[Structure | None] = [None] * len(jobs)
    target = resolve_device(device)
    done = done or {}
    batches = plan_batches([len(j) for j in jobs], batch_atoms)
    step_counter = _StepCounter(on_step, sum(1 for b in batches if not all(i in done for i in b)))
    for batch_number, indices in enumerate(batches):
        if all(i in done for i in indices):
            for i in indices:
                results[i] = done[i]
            continue
        structures = sample_batch(
            model, [jobs[i] for i in indices], sampler,
            batch_generator(seed, batch_number, target), progress=step_counter,
        )  # fmt: skip
        for i, structure in zip(indices, structures, strict=True):
            results[i] = structure
        if on_batch is not None:
            on_batch(indices, structures)
    return [results[i * num_samples : (i + 1) * num_samples] for i in range(len(compositions))]  # type: ignore[misc]


def sample_batch(
    model: KLDM,
    compositions: Sequence[Sequence[int]],
    sampler: SamplerConfig,
    generator: torch.Generator,
    progress: Callable[[int, int], None] | None = None,
) -> list[Structure]:
    """One reverse-sampling run for a batch of compositions → Structures (``progress(step,
    num_steps)`` after each sampler step)."""
    num_atoms = torch.tensor([len(c) for c in compositions])
    atomic_numbers = torch.tensor([z for c in compositions for z in c])
    samples = sample(model, num_atoms, atomic_numbers, sampler, generator, progress)
    return [record.to_structure() for record in samples_to_records(samples)]


class _StepCounter:
    """Turns each batch's ``progress(step, num_steps)`` into ``on_step(done, total)`` over the
    ``num_batches`` batches of a run."""

    def __init__(self, on_step: Callable[[int, int], None] | None, num_batches: int) -> None:
        self.on_step, self.num_batches, self.finished = on_step, num_batches, 0

    def __call__(self, step: int, num_steps: int) -> None:
        if self.on_step is not None:
            self.on_step(self.finished + step, self.num_batches * num_steps)
        if step == num_steps:
            self.finished += num_steps


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
    on_batch: Callable[[list[int], list[Structure]], None] | None = None,
    done: Mapping[int, Structure] | None = None,
) -> list[list[Structure]]:
    """Load a CSP model and sample ``num_samples`` candidates per composition.

    ``grid``, ``batch_atoms``, ``on_batch`` and ``done`` are those of :func:`sample_model`.
    """
    loaded = load_model(weights, "csp", device)
    return sample_model(
        loaded.model, compositions, num_samples, method=sampler, steps=steps, seed=seed,
        device=device, batch_atoms=batch_atoms, on_batch=on_batch, grid=grid, done=done,
    )  # fmt: skip


# ---------------------------------------------------------------------- the command
@dataclass
class PredictResult:
    files: list[Path] = field(default_factory=list)
    structures: list[Structure] = field(default_factory=list)
    model_source: str = ""
    notice: str | None = None
    #: The ranked search (``--candidates`` / ``--relax``), else None.
    search: Any = None
    #: Files of the ranked structures (``rank_001_<formula>.cif``, ...) and ``summary.csv``.
    ranked_files: list[Path] = field(default_factory=list)
    summary: Path | None = None
    #: Set when the formula has no charge-balanced oxidation states (a typo?); not an error.
    formula_warning: str | None = None


def predict(
    formula: str,
    num_samples: int,
    *,
    weights: str | None = None,
    out: Path = Path("predictions"),
    fmt: str = "cif",
    method: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    formula_units: str | int = 1,
    batch_atoms: int = DEFAULT_BATCH_ATOMS,
    relax: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
    grid: str | None = None,
    threads: int | None = None,
    search: SearchSettings | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> PredictResult:
    """Predict ``num_samples`` structures of ``formula`` and write them to ``out``.

    Everything that can be checked is checked before sampling: the formula, the output folder,
    the model (task, elements, atom range). ``grid`` is the sampler's time grid (default: the
    model's); ``threads`` the CPU threads (default: :func:`kldm_cli.threads.default_threads`);
    ``on_step(done, total)`` follows the sampler steps (see :func:`sample_model`). An ``out``
    that already holds samples of ``fmt`` (or a ranked search) is refused (the runs would mix).

    With ``search`` (a ranked search, :mod:`kldm_cli.search`), ``search.candidates`` candidates
    are sampled with the search's sampler settings (``method``/``steps``/``grid`` override them)
    and written to ``out/candidates/``; the best ``num_samples`` after relaxation go to ``out``
    as ``rank_001_<formula>.cif`` ... with ``summary.csv``. ``relax=True`` without ``search``
    relaxes and ranks all ``num_samples`` samples (no screening, the model's sampler).
    """
    from kldm_cli.data.formula import charge_balance_warning
    from kldm_cli.data.writers import StructureWriter

    if fmt not in ("cif", "extxyz"):
        raise ValueError(f"Unknown format {fmt!r}; choose cif or extxyz")
    parse_formula(formula)  # a bad formula is refused before the model is even loaded
    if grid is not None:
        parse_time_grid(grid)
    if relax and search is None:  # relax every sample, made with the model's sampler
        search = SearchSettings(
            candidates=num_samples, sampler=None, steps=None, grid=None, screen=0
        )
    chgnet = None
    if search is not None:
        from kldm_cli.relax import load_chgnet

        chgnet = load_chgnet(device)  # without the [relax] extra: refused before sampling
    loaded = load_model(weights, "csp", device)
    config = loaded.model.config
    defaults = search or SearchSettings(sampler=None, steps=None, grid=None)
    method = method or defaults.sampler or config.sampler.method
    steps = steps or defaults.steps or config.sampler.num_steps
    grid = grid or defaults.grid or config.sampler.time_grid
    num_candidates = search.candidates if search is not None else num_samples
    plan = plan_compositions(config, formula, num_candidates, formula_units)
    set_threads(threads, work_atoms=min(sum(len(c) for c in plan), batch_atoms))
    sample_dir = Path(out) / "candidates" if search is not None else Path(out)
    writer = StructureWriter(sample_dir, fmt=fmt, prefix="sample")
    writer.refuse_existing()
    if search is not None:
        refuse_existing_search(Path(out))
    result = PredictResult(model_source=loaded.source, notice=loaded.notice)
    result.formula_warning = charge_balance_warning(formula)

    def write_batch(indices: list[int], structures: list[Structure]) -> None:
        for index, structure in zip(indices, structures, strict=True):
            metadata = {
                "formula": structure.composition.formula.replace(" ", ""),
                "requested_formula": formula, "sample_index": index, "seed": seed,
                "model": loaded.source, "weights_sha256": loaded.weights_sha256,
                "sampler": method, "steps": steps, "grid": grid,
            }  # fmt: skip
            result.files.append(writer.write(structure, index, metadata))
            result.structures.append(structure)
        if on_batch is not None:
            on_batch(len(result.structures), num_candidates)

    samples = sample_model(
        loaded.model, plan, 1, method=method, steps=steps, seed=seed, device=device,
        batch_atoms=batch_atoms, on_batch=write_batch, grid=grid, on_step=on_step,
    )  # fmt: skip
    if search is not None:
        from kldm_cli.search import search_structures

        candidates = [structures[0] for structures in samples]
        result.search = search_structures(
            candidates, search, model=chgnet, device=device, on_stage=on_stage
        )
        provenance = {
            "requested_formula": formula, "seed": seed, "model": loaded.source,
            "weights_sha256": loaded.weights_sha256, "sampler": method, "steps": steps,
            "grid": grid,
        }  # fmt: skip
        result.ranked_files, result.summary = write_search(
            result.search, Path(out), num_samples, fmt=fmt, provenance=provenance,
            candidate_files=result.files, symprec=search.symprec,
        )  # fmt: skip
    return result


# ---------------------------------------------------------------------- ranked outputs
def refuse_existing_search(out: Path) -> None:
    """Raise ``ValueError`` if ``out`` holds the ranked files of an earlier search."""
    earlier = sorted(out.glob("rank_*.cif")) + sorted(out.glob("ranked*.extxyz"))
    if (out / "summary.csv").exists() or earlier:
        raise ValueError(
            f"{out} already holds a ranked search ({len(earlier)} ranked files, summary.csv); "
            "choose another --out (or remove them): writing here would mix two runs"
        )


SEARCH_SUMMARY_COLUMNS = (
    "rank", "file", "sample_index", "candidate_file", "status", "duplicate_of", "formula",
    "spacegroup", "energy_per_atom_eV", "energy_above_best_eV", "single_point_energy_per_atom_eV",
    "relax_steps", "converged",
)  # fmt: skip


def write_search(
    search: Any,
    out: Path,
    num_best: int,
    *,
    fmt: str = "cif",
    provenance: Mapping[str, Any] | None = None,
    candidate_files: Sequence[Path] = (),
    symprec: float = 0.1,
) -> tuple[list[Path], Path]:
    """Write the best ``num_best`` structures of a :class:`~kldm_cli.search.SearchResult` to
    ``out`` (``rank_001_<formula>.cif`` ..., or ``ranked.extxyz``), each with its energy per atom,
    energy above the best, relaxation steps, converged flag, space group (at ``symprec``) and
    sample index as metadata, and ``summary.csv`` with one row per candidate."""
    import csv

    from kldm_cli.data.writers import StructureWriter
    from kldm_cli.relax import cell_formula

    files: list[Path] = []
    writer = StructureWriter(out, fmt=fmt, prefix="ranked") if fmt == "extxyz" else None
    width = max(3, len(str(num_best)))
    file_of: dict[int, Path] = {}
    for entry in search.ranking[:num_best]:
        metadata = {
            **dict(provenance or {}), "rank": entry.rank, "sample_index": entry.sample_index,
            "energy_per_atom_eV": entry.energy_per_atom,
            "energy_above_best_eV": entry.energy_above_best,
            "single_point_energy_per_atom_eV": entry.single_point_energy_per_atom,
            "relax_steps": entry.relax_steps, "converged": entry.converged,
            "spacegroup": entry.spacegroup, "spacegroup_number": entry.spacegroup_number,
            "symprec": symprec, "potential": "CHGNet",
        }  # fmt: skip
        if writer is not None:
            path = writer.write(entry.structure, entry.rank - 1, metadata)
        else:
            path = _write_ranked_cif(
                out / f"rank_{entry.rank:0{width}d}_{cell_formula(entry.structure)}.cif",
                entry.structure, metadata,
            )  # fmt: skip
        file_of[entry.sample_index] = path
        if path not in files:
            files.append(path)
    ranked = {entry.sample_index: entry for entry in search.ranking}
    order = sorted(search.candidates, key=lambda c: (c.rank is None, c.rank or 0, c.sample_index))
    summary = Path(out) / "summary.csv"
    with open(summary, "w", newline="") as handle:
        table = csv.writer(handle)
        table.writerow(SEARCH_SUMMARY_COLUMNS)
        for outcome in order:
            entry = ranked.get(outcome.sample_index)
            relaxation = outcome.relaxation
            path = file_of.get(outcome.sample_index)
            candidate = (
                candidate_files[outcome.sample_index].name
                if outcome.sample_index < len(candidate_files)
                else ""
            )
            table.writerow(
                [
                    outcome.rank or "", path.name if path else "", outcome.sample_index,
                    candidate, outcome.status,
                    "" if outcome.duplicate_of is None else outcome.duplicate_of,
                    cell_formula(entry.structure) if entry else "",
                    (entry.spacegroup or "") if entry else "",
                    _number(relaxation.energy_per_atom if relaxation else None),
                    _number(entry.energy_above_best if entry else None),
                    _number(outcome.single_point_energy_per_atom),
                    relaxation.num_steps if relaxation else "",
                    relaxation.converged if relaxation else "",
                ]
            )  # fmt: skip
    return files, summary


def _write_ranked_cif(path: Path, structure: Structure, metadata: Mapping[str, Any]) -> Path:
    from pymatgen.io.cif import CifWriter

    from kldm_cli.data.writers import format_cif_metadata

    path.write_text(format_cif_metadata(dict(metadata)) + str(CifWriter(structure)))
    return path


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"
