"""Crystal structure prediction (CSP): composition given, coordinates and lattice generated.

Library entry points behind ``kldm predict``:

- :func:`plan_compositions` — a formula and ``--formula-units`` → one atom list per sample,
  refused before any computation if the model cannot handle it;
- :func:`route_formula` — without ``--weights``, each cell (formula × Z) goes to the smallest
  release that covers it (:func:`kldm_cli.sampling.models.route_cell`);
- :func:`predict` — the above, then the generation pipeline (:mod:`kldm_cli.sampling.pipeline`)
  writing each batch's files as soon as it finishes, and the ranked search if asked.

``load_model`` and ``sample_model`` live in :mod:`kldm_cli.sampling` (imported here too for
callers that still look for them in this module).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from kldm_cli.config import KLDMConfig
from kldm_cli.data.formula import parse_formula
from kldm_cli.evaluation.search import SearchSettings
from kldm_cli.sampling.loop import parse_time_grid
from kldm_cli.sampling.models import (
    LoadedModel,
    load_model,
    route_cell,
    size_routed_releases,
)
from kldm_cli.sampling.pipeline import (
    DEFAULT_BATCH_ATOMS,
    SampleWriter,
    SamplingPlan,
    StepCounter,
    batches_to_sample,
    sample_batches,
    sample_csp,
    sample_model,
    sampler_settings,
)
from kldm_cli.threads import set_threads

__all__ = [
    "DEFAULT_BATCH_ATOMS", "LoadedModel", "PredictResult", "Route", "load_model",
    "plan_compositions", "predict", "route_formula", "sample_csp", "sample_model", "write_search",
]  # fmt: skip


# ---------------------------------------------------------------------- compositions
def formula_units_options(
    atoms: Sequence[int], formula_units: str | int, low: int, high: int
) -> list[int]:
    """The Z values to sample: ``[Z]`` for an integer, or (``"auto"``) every Z whose cell of
    ``Z * len(atoms)`` atoms lies in ``[low, high]`` (every Z up to ``high`` if none does)."""
    if formula_units == "auto":
        options = [z for z in range(1, high // len(atoms) + 1) if low <= z * len(atoms) <= high]
        return options or list(range(1, high // len(atoms) + 1)) or [1]
    try:
        units = int(formula_units)
    except ValueError as err:
        raise ValueError(
            f"--formula-units must be a positive integer or 'auto', got {formula_units!r}"
        ) from err
    if units < 1:
        raise ValueError(f"--formula-units must be a positive integer or 'auto', got {units}")
    return [units]


def _refuse_too_large(formula: str, atoms: Sequence[int], units: int, limit: int, what: str):
    largest = limit // len(atoms)
    fits = (
        f"the largest Z that fits is {largest} (--formula-units {largest})"
        if largest >= 1
        else "even one formula unit does not fit"
    )
    raise ValueError(
        f"{formula} × {units} = {units * len(atoms)} atoms per cell, but {what} cells of at most "
        f"{limit} atoms; {fits}"
    )


def plan_compositions(
    config: KLDMConfig,
    formula: str,
    num_samples: int,
    formula_units: str | int = 1,
    atoms: Sequence[int] | None = None,
) -> list[list[int]]:
    """One atom list per sample for ``formula`` × Z (``atoms``: the formula already parsed).

    ``formula_units="auto"`` spreads the samples round-robin over every Z whose cell stays
    within the model's trained atom range.
    """
    if num_samples < 1:
        raise ValueError(f"the number of samples must be positive, got {num_samples}")
    atoms = list(atoms) if atoms is not None else parse_formula(formula)
    options = formula_units_options(atoms, formula_units, config.min_atoms, config.max_atoms)
    for units in options:
        if units * len(atoms) > config.max_atoms:
            _refuse_too_large(formula, atoms, units, config.max_atoms, "the model was trained on")
    return [atoms * options[i % len(options)] for i in range(num_samples)]


# ---------------------------------------------------------------------- routing
@dataclass
class Route:
    """The samples of one model: their indices and compositions, and the model that makes them."""

    loaded: LoadedModel
    indices: list[int]
    compositions: list[list[int]]
    #: The release chosen by cell size (None with ``--weights``).
    release: str | None = None

    def describe(self, formula: str, formula_size: int) -> str:
        """``NaCl × 1 (2 atoms), 4 samples: kldm-csp-mp20 (weights/kldm-csp-mp20)``."""
        cells = sorted({len(c) for c in self.compositions})
        zs = ", ".join(f"{formula} × {n // formula_size} ({n} atoms)" for n in cells)
        name = f"{self.release} ({self.loaded.source})" if self.release else self.loaded.source
        return f"{zs}, {len(self.indices)} sample(s): {name}"


def route_formula(
    formula: str,
    atoms: Sequence[int],
    num_samples: int,
    formula_units: str | int,
    *,
    weights: str | None,
    device: str = "cpu",
) -> list[Route]:
    """Which model samples which sample index of ``formula`` × Z.

    With ``weights``: that model, for every sample (:func:`plan_compositions`). Without: each
    cell goes to the smallest release of :func:`size_routed_releases` that covers it;
    ``"auto"`` tries every Z up to the largest release's ``max_atoms``. A cell beyond every
    release is refused with the largest Z that fits.
    """
    if weights is not None or not (releases := size_routed_releases("csp")):
        loaded = load_model(weights, "csp", device)
        plan = plan_compositions(loaded.model.config, formula, num_samples, formula_units, atoms)
        return [Route(loaded, list(range(num_samples)), plan)]
    if num_samples < 1:
        raise ValueError(f"the number of samples must be positive, got {num_samples}")
    largest = releases[-1].max_atoms
    options = formula_units_options(atoms, formula_units, 1, largest)
    for units in options:
        if units * len(atoms) > largest:
            _refuse_too_large(formula, atoms, units, largest, "the largest release covers")
    release_of = {z: route_cell(z * len(atoms), releases) for z in options}
    loaded = {}
    for release in dict.fromkeys(release_of.values()):
        loaded[release.name] = load_model(release.name, "csp", device)  # type: ignore[union-attr]
    if formula_units == "auto":  # each model's smallest cells, as with one model
        kept = [
            z for z in options
            if z * len(atoms) >= loaded[release_of[z].name].model.config.min_atoms  # type: ignore[union-attr]
        ]  # fmt: skip
        options = kept or options
    routes: dict[str, Route] = {}
    for index in range(num_samples):
        units = options[index % len(options)]
        name = release_of[units].name  # type: ignore[union-attr]
        route = routes.setdefault(name, Route(loaded[name], [], [], release=name))
        route.indices.append(index)
        route.compositions.append(list(atoms) * units)
    return list(routes.values())


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
    #: Which model sampled which cells: one line per model (:meth:`Route.describe`).
    routes: list[str] = field(default_factory=list)


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
    on_written: Callable[[int, int], None] | None = None,
    grid: str | None = None,
    threads: int | None = None,
    search: SearchSettings | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> PredictResult:
    """Predict ``num_samples`` structures of ``formula`` and write them to ``out``.

    Everything that can be checked is checked before sampling: the formula, the output folder,
    the model (task, elements, atom range). Without ``weights`` each cell goes to the release
    that fits it (:func:`route_formula`). ``grid`` is the sampler's time grid (default: the
    model's); ``threads`` the CPU threads (default: :func:`kldm_cli.threads.default_threads`);
    ``on_written(written, total)`` follows the files, ``on_step(done, total)`` the sampler steps.
    An ``out`` that already holds samples of ``fmt`` (or a ranked search) is refused (the runs
    would mix).

    With ``search`` (a ranked search, :mod:`kldm_cli.evaluation.search`), ``search.candidates``
    candidates are sampled with the search's sampler settings (``method``/``steps``/``grid``
    override them) and written to ``out/candidates/``; the best ``num_samples`` after relaxation go
    to ``out`` as ``rank_001_<formula>.cif`` ... with ``summary.csv``. ``relax=True`` without
    ``search`` relaxes and ranks all ``num_samples`` samples (no screening, the model's sampler).
    """
    from kldm_cli.data.formula import charge_balance_warning

    if fmt not in ("cif", "extxyz"):
        raise ValueError(f"Unknown format {fmt!r}; choose cif or extxyz")
    atoms = parse_formula(formula)  # a bad formula is refused before the model is even loaded
    if grid is not None:
        parse_time_grid(grid)
    if relax and search is None:  # relax every sample, made with the model's sampler
        search = SearchSettings(
            candidates=num_samples, sampler=None, steps=None, grid=None, screen=0
        )
    chgnet = None
    if search is not None:
        from kldm_cli.evaluation.relax import load_chgnet

        chgnet = load_chgnet(device)  # without the [relax] extra: refused before sampling
    num_candidates = search.candidates if search is not None else num_samples
    routes = route_formula(
        formula, atoms, num_candidates, formula_units, weights=weights, device=device
    )
    defaults = search or SearchSettings(sampler=None, steps=None, grid=None)
    jobs = []  # (route, plan, sampler, writer) of each model
    for route in routes:
        config = route.loaded.model.config
        plan = SamplingPlan.csp(config, route.compositions, batch_atoms, label=formula)
        sampler = sampler_settings(
            config, method or defaults.sampler, steps or defaults.steps, grid or defaults.grid
        )
        jobs.append((route, plan, sampler))
    set_threads(threads, work_atoms=min(sum(len(c) for r in routes for c in r.compositions),
                                        batch_atoms))  # fmt: skip
    sample_dir = Path(out) / "candidates" if search is not None else Path(out)
    writers = [
        SampleWriter(
            sample_dir,
            fmt,
            {
                "requested_formula": formula,
                "seed": seed,
                "model": route.loaded.source,
                "weights_sha256": route.loaded.weights_sha256,
                "sampler": sampler.method,
                "steps": sampler.num_steps,
                "grid": sampler.time_grid,
            },
        )  # fmt: skip
        for route, _, sampler in jobs
    ]
    writers[0].files.refuse_existing()
    if search is not None:
        refuse_existing_search(Path(out))
    result = PredictResult(
        model_source=", ".join(r.loaded.source for r in routes),
        notice="; ".join(dict.fromkeys(r.loaded.notice for r in routes if r.loaded.notice)) or None,
        formula_warning=charge_balance_warning(formula),
        routes=[route.describe(formula, len(atoms)) for route in routes],
    )

    found: dict[int, tuple[Structure, Path]] = {}
    counter = StepCounter(
        on_step, sum(len(batches_to_sample(plan)) * sampler.num_steps for _, plan, sampler in jobs)
    )
    first_batch = 0
    for (route, plan, sampler), writer in zip(jobs, writers, strict=True):
        for indices, structures in sample_batches(
            route.loaded.model, plan, sampler, seed=seed, device=device, progress=counter,
            first_batch_number=first_batch,
        ):  # fmt: skip
            sample_indices = [route.indices[i] for i in indices]
            files = writer.write(sample_indices, structures)
            found.update(zip(sample_indices, zip(structures, files, strict=True), strict=True))
            if on_written is not None:
                on_written(len(found), num_candidates)
        first_batch += len(plan.batches)
    result.structures = [found[i][0] for i in sorted(found)]
    result.files = [found[i][1] for i in sorted(found)]
    if search is not None:
        from kldm_cli.evaluation.search import search_structures

        result.search = search_structures(
            result.structures, search, model=chgnet, device=device, on_stage=on_stage
        )
        provenance = {
            key: writers[0].metadata[key] if len(writers) == 1 else
            [writer.metadata[key] for writer in writers]
            for key in ("requested_formula", "seed", "model", "weights_sha256", "sampler",
                        "steps", "grid")
        }  # fmt: skip
        provenance["requested_formula"], provenance["seed"] = formula, seed
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
    "rank", "file", "sample_index", "candidate_file", "status", "duplicate_of", "samples",
    "formula", "spacegroup", "energy_per_atom_eV", "energy_above_best_eV",
    "single_point_energy_per_atom_eV", "relax_steps", "converged",
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
    """Write the best ``num_best`` structures of a :class:`~kldm_cli.evaluation.search.SearchResult`
    to ``out`` (``rank_001_<formula>.cif`` ..., or ``ranked.extxyz``), each with its energy per
    atom, energy above the best, relaxation steps, converged flag, space group (at ``symprec``) and
    sample index as metadata, and ``summary.csv`` with one row per candidate."""
    import csv

    from kldm_cli.data.writers import StructureWriter
    from kldm_cli.evaluation.relax import cell_formula

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
            "samples": entry.samples, "spacegroup": entry.spacegroup,
            "spacegroup_number": entry.spacegroup_number, "symprec": symprec, "potential": "CHGNet",
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
                    "" if outcome.samples is None else outcome.samples,
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
