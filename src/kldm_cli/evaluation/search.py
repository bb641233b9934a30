"""Ranked CSP search: many cheap candidates, duplicates removed, CHGNet relaxation, ranked.

One composition's candidates (pymatgen Structures, e.g. from :func:`kldm_cli.predict.sample_model`)
go through four stages:

1. **unique**: a candidate that matches an earlier one (``StructureMatcher`` with pymatgen's
   default tolerances, :data:`DEDUPE_MATCHER_SETTINGS`) is dropped before any energy is computed;
   Structurally invalid candidates (atoms closer than 0.5 Å, a cell of almost no volume: see
   :func:`kldm_cli.evaluation.metrics.validity.structural_validity`) are dropped first;
2. **screen**: CHGNet single-point energies of the unique candidates; only the ``screen`` lowest
   in energy per atom go on (``screen=0``: all of them);
3. **relax**: FIRE on a Fréchet cell filter (as ``kldm relax``), at most ``relax_steps`` steps,
   stopping when every force and stress component is below ``fmax`` eV/Å, in ``workers``
   processes;
4. **rank**: relaxed structures by energy per atom, lowest first, a structure matching a
   lower-energy one dropped. With a ``frequency_weight`` w (eV/atom) the order is by
   ``E/atom - w ln n`` instead, n the number of candidates that were this structure before
   relaxation (:func:`ranking_score`): a structure the model samples often is preferred to a
   rarely sampled one a few meV/atom lower.

Energies are CHGNet's (eV/atom, MP2020-compatible GGA/GGA+U scale). CHGNet was trained on MPtrj,
relaxation trajectories of Materials Project structures, which include the MP-20 and MPTS-52 test
structures: its ranking of those is not a blind test (see docs/evaluation.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pymatgen.core import Structure

from kldm_cli.evaluation.metrics.validity import structural_validity
from kldm_cli.evaluation.relax import DEFAULT_FMAX, RelaxResult, same_structure

#: Tolerances used to call two candidates the same structure (pymatgen's defaults).
DEDUPE_MATCHER_SETTINGS: dict[str, float] = {"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0}

#: ``SpacegroupAnalyzer`` tolerance (Å) for the space group reported with each result.
DEFAULT_SYMPREC = 0.1

Status = Literal[
    "ranked", "invalid", "duplicate", "screened out", "failed", "duplicate after relaxation"
]
#: The statuses of the candidates that passed the screen and were relaxed.
RELAXED_STATUSES: frozenset[Status] = frozenset({"ranked", "failed", "duplicate after relaxation"})


@dataclass(frozen=True)
class SearchSettings:
    """How one composition's candidates are sampled and processed (see the module docstring).

    ``sampler``/``steps``/``grid`` are the reverse-diffusion settings of the candidates (None:
    the model's);
    ``screen`` the number of unique candidates relaxed (lowest single-point energy first; 0: all);
    ``relax_steps`` and ``fmax`` (eV/Å) the FIRE limits; ``workers`` the relaxation processes
    (0 or 1: in this process); ``frequency_weight`` (eV/atom) how much a structure's sampling
    frequency counts in the ranking (0: energy alone; :func:`ranking_score`).
    """

    candidates: int = 20
    sampler: str | None = "em"
    steps: int | None = 100
    grid: str | None = "power:3"
    screen: int = 5
    relax_steps: int = 100
    fmax: float = DEFAULT_FMAX
    symprec: float = DEFAULT_SYMPREC
    workers: int = 1
    frequency_weight: float = 0.01

    def __post_init__(self) -> None:
        if self.candidates < 1:
            raise ValueError(f"candidates must be at least 1, got {self.candidates}")
        if self.screen < 0:
            raise ValueError(f"screen must be 0 (relax all) or positive, got {self.screen}")
        if self.relax_steps < 0:
            raise ValueError(f"relax_steps must be >= 0, got {self.relax_steps}")
        if not self.fmax > 0:
            raise ValueError(f"fmax must be positive (eV/Å), got {self.fmax}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not self.frequency_weight >= 0:
            raise ValueError(
                f"frequency_weight must be >= 0 (eV/atom), got {self.frequency_weight}"
            )


@dataclass
class CandidateOutcome:
    """What became of candidate ``sample_index``: its ``status``, the candidate it duplicates
    (``duplicate_of``: before relaxation, or for a duplicate after relaxation the ranked one it
    relaxed into), how many candidates were this structure (``samples``, unique candidates
    only), its single-point energy and, once relaxed, its relaxation and rank."""

    sample_index: int
    status: Status
    duplicate_of: int | None = None
    samples: int | None = None
    single_point_energy_per_atom: float | None = None
    relaxation: RelaxResult | None = None
    rank: int | None = None


@dataclass
class RankedStructure:
    """One entry of the ranked list: the relaxed structure and where it came from.

    Energies in eV/atom; ``energy_above_best`` is relative to the lowest energy of the list (rank
    1 unless a ``frequency_weight`` reordered it); ``samples`` is how many candidates were this
    structure before relaxation; ``spacegroup`` is the international symbol found at ``symprec``
    (None if spglib failed).
    """

    rank: int
    sample_index: int
    structure: Structure
    unrelaxed: Structure
    energy_per_atom: float
    energy_above_best: float
    single_point_energy_per_atom: float | None
    relax_steps: int
    converged: bool
    spacegroup: str | None
    spacegroup_number: int | None
    samples: int


@dataclass
class SearchResult:
    ranking: list[RankedStructure]
    candidates: list[CandidateOutcome]
    timing_s: dict[str, float] = field(default_factory=dict)
    frequency_weight: float = 0.0

    def counts(self) -> dict[str, int]:
        """How many candidates ended in each status."""
        counts: dict[str, int] = {}
        for outcome in self.candidates:
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
        return counts


# ---------------------------------------------------------------------- stages
def unique_candidates(
    structures: Sequence[Structure | None], matcher_settings: dict[str, float] | None = None
) -> list[int | None]:
    """For each structure, the index of the earlier structure it duplicates (None: unique).

    A missing structure (None) is never a duplicate and is reported unique; callers drop it.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher(**(matcher_settings or DEDUPE_MATCHER_SETTINGS))
    kept: list[int] = []
    duplicate_of: list[int | None] = []
    for index, structure in enumerate(structures):
        match = None
        if structure is not None:
            match = next(
                (k for k in kept if same_structure(matcher, structures[k], structure)), None
            )
            if match is None:
                kept.append(index)
        duplicate_of.append(match)
    return duplicate_of


def sample_counts(duplicate_of: Sequence[int | None], valid: Sequence[bool]) -> dict[int, int]:
    """For each valid unique candidate, how many valid candidates are that structure (itself and
    its duplicates), from :func:`unique_candidates`' answer."""
    counts = {i: 1 for i, d in enumerate(duplicate_of) if d is None and valid[i]}
    for i, d in enumerate(duplicate_of):
        if d is not None and valid[i]:
            counts[d] += 1
    return counts


def ranking_score(energy_per_atom: float, samples: int, frequency_weight: float) -> float:
    """``E/atom - w ln n`` (eV/atom): lower ranks first. With w > 0 a structure sampled n times
    may sit up to ``w ln n`` above a once-sampled one and still rank before it."""
    return energy_per_atom - frequency_weight * math.log(samples)


def screen_lowest(energies: Sequence[float | None], keep: int) -> list[int]:
    """Positions of the ``keep`` lowest energies (all finite ones when ``keep`` is 0), in order
    of energy; ties go to the lower position, and a failed (None) energy is never kept."""
    finite = sorted(
        (energy, position) for position, energy in enumerate(energies) if energy is not None
    )
    chosen = finite if keep == 0 else finite[:keep]
    return [position for _, position in chosen]


def spacegroup_of(structure: Structure, symprec: float) -> tuple[str | None, int | None]:
    """International symbol and number of ``structure`` at ``symprec`` Å (None, None on error)."""
    import warnings

    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # spglib's DeprecationWarning about error handling
            analyzer = SpacegroupAnalyzer(structure, symprec=symprec)
            return analyzer.get_space_group_symbol(), int(analyzer.get_space_group_number())
    except Exception:  # noqa: BLE001 - spglib failure: no symmetry reported
        return None, None


# ---------------------------------------------------------------------- relaxation
_WORKER_MODEL: dict[str, Any] = {}


def _relax_in_worker(structure: Structure, steps: int, fmax: float) -> RelaxResult:
    """Relax one structure with a CHGNet loaded once per worker process (one thread)."""
    import torch

    from kldm_cli.evaluation.relax import relax_structures

    if "chgnet" not in _WORKER_MODEL:
        torch.set_num_threads(1)
        from kldm_cli.evaluation.relax import load_chgnet

        _WORKER_MODEL["chgnet"] = load_chgnet("cpu")
    return relax_structures([structure], steps=steps, fmax=fmax, model=_WORKER_MODEL["chgnet"])[0]


def relax_many(
    structures: Sequence[Structure],
    *,
    steps: int,
    fmax: float,
    workers: int,
    model: Any,
    device: str = "cpu",
    timeout: float | None = None,
) -> list[RelaxResult]:
    """Relax ``structures`` with CHGNet, in ``workers`` processes when more than one (each with
    its own CHGNet on the CPU and one thread; a relaxation past ``timeout`` seconds fails)."""
    from kldm_cli.evaluation.relax import relax_structures

    if workers <= 1 or len(structures) <= 1 or device != "cpu":
        return relax_structures(structures, steps=steps, fmax=fmax, model=model, device=device)
    from kldm_cli.evaluation.metrics._parallel import run_tasks

    outcomes = run_tasks(
        _relax_in_worker,
        [(structure, steps, fmax) for structure in structures],
        workers=workers,
        timeout=timeout,
    )
    results = []
    for index, (structure, outcome) in enumerate(zip(structures, outcomes, strict=True)):
        if outcome.status == "ok":
            outcome.value.index = index
            results.append(outcome.value)
        else:
            reason = outcome.error or f"relaxation ran past {timeout} s"
            results.append(RelaxResult.failure(index, structure, reason))
    return results


# ---------------------------------------------------------------------- the search
def search_structures(
    candidates: Sequence[Structure | None],
    settings: SearchSettings,
    *,
    model: Any,
    device: str = "cpu",
    on_stage: Callable[[str], None] | None = None,
) -> SearchResult:
    """Rank one composition's ``candidates`` (position = sample index) as the module says.

    ``model`` is a loaded CHGNet (:func:`kldm_cli.evaluation.relax.load_chgnet`); ``on_stage`` is
    told the name of each stage as it starts (progress).
    """
    from kldm_cli.evaluation.relax import (
        drop_relaxed_duplicates,
        predict_energies,
        rank_candidates,
    )

    stage = on_stage or (lambda name: None)
    timing: dict[str, float] = {}
    clock = time.perf_counter()

    stage("removing duplicates")
    valid = [s if s is not None and structural_validity(s) else None for s in candidates]
    duplicate_of = unique_candidates(valid)
    outcomes = [
        CandidateOutcome(i, "duplicate" if d is not None else "screened out", duplicate_of=d)
        for i, d in enumerate(duplicate_of)
    ]
    unique = [i for i, d in enumerate(duplicate_of) if d is None and valid[i] is not None]
    for i, structure in enumerate(valid):
        if structure is None:
            outcomes[i].status = "invalid"
    samples = sample_counts(duplicate_of, [structure is not None for structure in valid])
    for i, count in samples.items():
        outcomes[i].samples = count
    timing["dedupe"], clock = time.perf_counter() - clock, time.perf_counter()

    stage("screening by single-point energy")
    if settings.screen and settings.screen < len(unique):
        energies = predict_energies([candidates[i] for i in unique], model=model, device=device)
        for i, energy in zip(unique, energies, strict=True):
            outcomes[i].single_point_energy_per_atom = energy
        survivors = [unique[p] for p in screen_lowest(energies, settings.screen)]
    else:
        survivors = list(unique)
    timing["screen"], clock = time.perf_counter() - clock, time.perf_counter()

    stage(f"relaxing {len(survivors)} candidates")
    relaxed = relax_many(
        [candidates[i] for i in survivors],  # type: ignore[misc]
        steps=settings.relax_steps, fmax=settings.fmax, workers=settings.workers,
        model=model, device=device,
    )  # fmt: skip
    for result, i in zip(relaxed, survivors, strict=True):
        result.index = i
        outcomes[i].relaxation = result
        outcomes[i].status = "failed" if result.structure is None else "duplicate after relaxation"
        if outcomes[i].single_point_energy_per_atom is None:
            outcomes[i].single_point_energy_per_atom = result.initial_energy_per_atom
    timing["relax"], clock = time.perf_counter() - clock, time.perf_counter()

    stage("ranking")
    ranked, merged = drop_relaxed_duplicates(
        rank_candidates(relaxed, dedupe=False), DEDUPE_MATCHER_SETTINGS
    )
    for i, kept in merged.items():
        outcomes[i].duplicate_of = kept
    score = {
        r.index: ranking_score(r.energy_per_atom, samples[r.index], settings.frequency_weight)  # type: ignore[arg-type]
        for r in ranked
    }
    ranked.sort(key=lambda r: (score[r.index], r.energy_per_atom, r.index))
    lowest = min((r.energy_per_atom for r in ranked), default=0.0)
    ranking = []
    for rank, result in enumerate(ranked, start=1):
        outcome = outcomes[result.index]
        outcome.status, outcome.rank = "ranked", rank
        symbol, number = spacegroup_of(result.structure, settings.symprec)  # type: ignore[arg-type]
        ranking.append(
            RankedStructure(
                rank=rank, sample_index=result.index, structure=result.structure,  # type: ignore[arg-type]
                unrelaxed=result.initial_structure,
                energy_per_atom=float(result.energy_per_atom),  # type: ignore[arg-type]
                energy_above_best=float(result.energy_per_atom - lowest),  # type: ignore[operator]
                single_point_energy_per_atom=outcome.single_point_energy_per_atom,
                relax_steps=result.num_steps, converged=result.converged,
                spacegroup=symbol, spacegroup_number=number, samples=samples[result.index],
            )
        )  # fmt: skip
    timing["rank"] = time.perf_counter() - clock
    return SearchResult(ranking, outcomes, timing, settings.frequency_weight)
