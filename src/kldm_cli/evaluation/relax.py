"""Relax generated structures with the CHGNet universal potential and rank them by energy.

CHGNet (Deng et al., 2023; pretrained weights ship with its PyPI package, no download) predicts
energies compatible with Materials Project GGA/GGA+U total energies (MP2020 corrections), in
eV/atom. Relaxation moves atoms and cell together: ASE's FIRE optimizer on a
``FrechetCellFilter`` of the structure, stopping when every force (and stress component,
scaled to eV/Å) is below ``fmax`` or after ``steps`` steps.

``RelaxResult.rmsd`` is the root-mean-square *site displacement* in Å between the generated and
the relaxed structure: sites are paired by index (relaxation keeps their order), each
fractional displacement is wrapped to the nearest periodic image, converted to Cartesian with
the relaxed lattice, and the mean (rigid) translation is removed. It does not include the cell
change, which ``volume_change`` reports.

CHGNet is an optional dependency: ``pip install "kldm-cli[relax]"``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

#: CHGNet's default relaxation length; generated structures are usually close to a minimum.
DEFAULT_STEPS = 500
DEFAULT_FMAX = 0.1  # eV/Å

_INSTALL_HINT = 'CHGNet is not installed; install it with: pip install "kldm-cli[relax]"'


@dataclass
class RelaxResult:
    """One structure before and after relaxation.

    Energies in eV/atom (CHGNet); ``rmsd`` in Å (see the module docstring); ``volume_change``
    is V_relaxed / V_initial − 1. ``structure`` and the energies are None, and ``error`` says
    why, when CHGNet could not handle the structure (e.g. an isolated atom).
    """

    index: int
    initial_structure: Structure
    structure: Structure | None
    initial_energy_per_atom: float | None
    energy_per_atom: float | None
    rmsd: float | None
    volume_change: float | None
    num_steps: int
    converged: bool
    error: str | None = None

    @classmethod
    def failure(cls, index: int, structure: Structure, error: str) -> RelaxResult:
        """The result for a structure that could not be relaxed, ``error`` saying why."""
        return cls(index, structure, None, None, None, None, None, 0, False, error)

    @property
    def formula(self) -> str:
        return self.initial_structure.composition.reduced_formula


def chgnet_device(device: str) -> str:
    """``device`` (cpu, cuda, cuda:N) checked like every other ``--device`` of kldm, as the
    string CHGNet takes; a ValueError naming it where it is unknown or absent."""
    from kldm_cli.device import resolve_device

    return str(resolve_device(device))


def load_chgnet(device: str = "cpu") -> Any:
    """The pretrained CHGNet model on ``device``; a clear ImportError if chgnet is missing."""
    device = chgnet_device(device)
    try:
        from chgnet.model import CHGNet
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CHGNet.load(use_device=device, verbose=False)


def _calculator(model: Any, device: str) -> Any:
    from chgnet.model.dynamics import CHGNetCalculator

    with contextlib.redirect_stdout(io.StringIO()):
        return CHGNetCalculator(
            model=model, use_device=chgnet_device(device), on_isolated_atoms="error"
        )


def predict_energies(
    structures: Sequence[Structure],
    *,
    device: str = "cpu",
    batch_size: int = 16,
    model: Any = None,
) -> list[float | None]:
    """Single-point CHGNet energies in eV/atom (None where CHGNet fails on a structure)."""
    model = model or load_chgnet(device)
    energies: list[float | None] = []
    for start in range(0, len(structures), batch_size):
        batch = list(structures[start : start + batch_size])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                predictions = model.predict_structure(batch, task="e", batch_size=batch_size)
            energies.extend(float(p["e"]) for p in predictions)
        except Exception:  # noqa: BLE001 - one bad structure: retry the batch one by one
            for structure in batch:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        energies.append(float(model.predict_structure(structure, task="e")["e"]))
                except Exception:  # noqa: BLE001
                    energies.append(None)
    return energies


def site_rmsd(initial: Structure, relaxed: Structure) -> float:
    """RMS site displacement (Å) between two structures with the same sites in the same order:
    minimum-image fractional displacements in the relaxed lattice, mean translation removed."""
    if len(initial) != len(relaxed):
        raise ValueError(f"{len(initial)} sites before relaxation but {len(relaxed)} after")
    displacement = relaxed.frac_coords - initial.frac_coords
    displacement -= np.round(displacement)
    cartesian = relaxed.lattice.get_cartesian_coords(displacement)
    cartesian -= cartesian.mean(axis=0)
    return float(np.sqrt((cartesian**2).sum(axis=1).mean()))


def relax_structures(
    structures: Sequence[Structure],
    *,
    steps: int = DEFAULT_STEPS,
    fmax: float = DEFAULT_FMAX,
    device: str = "cpu",
    relax_cell: bool = True,
    model: Any = None,
    on_result: Callable[[RelaxResult], None] | None = None,
) -> list[RelaxResult]:
    """Relax every structure with CHGNet (FIRE, at most ``steps`` steps, forces below ``fmax``
    eV/Å). ``model`` reuses an already loaded CHGNet; ``on_result`` is called after each
    structure (progress). Returns one :class:`RelaxResult` per input, in input order."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if fmax <= 0:
        raise ValueError(f"fmax must be positive (eV/Å), got {fmax}")
    calculator = _calculator(model or load_chgnet(device), device)
    results = []
    for index, structure in enumerate(structures):
        result = _relax_one(index, structure, calculator, steps, fmax, relax_cell)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _relax_one(
    index: int,
    structure: Structure,
    calculator: Any,
    steps: int,
    fmax: float,
    relax_cell: bool,
) -> RelaxResult:
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = calculator
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            initial_energy = atoms.get_potential_energy() / len(atoms)
            optimizer = FIRE(FrechetCellFilter(atoms) if relax_cell else atoms, logfile=None)
            converged = bool(optimizer.run(fmax=fmax, steps=steps))
            final_energy = atoms.get_potential_energy() / len(atoms)
        relaxed = AseAtomsAdaptor.get_structure(atoms)
        for name in list(relaxed.site_properties):
            relaxed.remove_site_property(name)
        if not np.isfinite(final_energy):
            raise ValueError("CHGNet returned a non-finite energy")
    except Exception as error:  # noqa: BLE001 - one structure's failure is recorded, not raised
        message = f"{type(error).__name__}: {error}"
        return RelaxResult.failure(index, structure, message)
    return RelaxResult(
        index=index,
        initial_structure=structure,
        structure=relaxed,
        initial_energy_per_atom=float(initial_energy),
        energy_per_atom=float(final_energy),
        rmsd=site_rmsd(structure, relaxed),
        volume_change=relaxed.volume / structure.volume - 1.0,
        num_steps=int(optimizer.nsteps),
        converged=converged,
    )


def rank_candidates(
    results: Sequence[RelaxResult],
    dedupe: bool = True,
    *,
    matcher_settings: dict[str, float] | None = None,
) -> list[RelaxResult]:
    """Successful relaxations ordered by energy per atom (lowest first). With ``dedupe``, a
    relaxed structure that matches a lower-energy one (``StructureMatcher``, pymatgen's default
    tolerances unless ``matcher_settings``) is dropped. Failed relaxations are left out."""
    ranked = sorted(
        (r for r in results if r.structure is not None and r.energy_per_atom is not None),
        key=lambda r: (r.energy_per_atom, r.index),
    )
    if not dedupe:
        return ranked
    return drop_relaxed_duplicates(ranked, matcher_settings)[0]


def drop_relaxed_duplicates(
    ranked: Sequence[RelaxResult], matcher_settings: dict[str, float] | None = None
) -> tuple[list[RelaxResult], dict[int, int]]:
    """Keep each result of ``ranked`` (lowest energy first) that matches no earlier kept one.

    Returns the kept results and, for each dropped result's ``index``, the ``index`` of the kept
    result it matches (``StructureMatcher``, pymatgen's defaults unless ``matcher_settings``).
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher(**(matcher_settings or {}))
    kept: list[RelaxResult] = []
    duplicate_of: dict[int, int] = {}
    for result in ranked:
        match = next(
            (other for other in kept if same_structure(matcher, result.structure, other.structure)),
            None,
        )
        if match is None:
            kept.append(result)
        else:
            duplicate_of[result.index] = match.index
    return kept, duplicate_of


#: Seconds one structure comparison may take: StructureMatcher can spend minutes (or forever)
#: reducing a pathological generated cell.
MATCH_TIME_LIMIT_S = 10.0


def same_structure(matcher: Any, first: Structure | None, second: Structure | None) -> bool:
    """``matcher.fit`` of two structures of one reduced composition (False if either is missing,
    the matcher fails, or it runs past :data:`MATCH_TIME_LIMIT_S` in the main thread)."""
    if first is None or second is None:
        return False
    if first.composition.reduced_composition != second.composition.reduced_composition:
        return False
    try:
        with time_limit(MATCH_TIME_LIMIT_S):
            return bool(matcher.fit(first, second))
    except Exception:  # noqa: BLE001 - cannot compare (or too slow): keep both
        return False


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`TimeoutError` in the block after ``seconds`` (a SIGALRM timer; in threads
    other than the main one, or where there is no SIGALRM, the block runs without a limit)."""
    import signal
    import threading

    if (
        not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------- the command
@dataclass
class RelaxRun:
    """What :func:`relax_path` did: every result (input order), the ranking that was written,
    the files, and the inputs that could not be read (``SkippedRow``-like, with ``location`` and
    ``reason``)."""

    results: list[RelaxResult]
    ranking: list[RelaxResult]
    files: list[Path]
    summary: Path
    skipped: list[Any]
    names: list[str]


SUMMARY_COLUMNS = (
    "rank", "file", "input", "formula", "num_atoms", "initial_energy_per_atom_eV",
    "energy_per_atom_eV", "delta_energy_per_atom_eV", "rmsd_A", "volume_change", "steps",
    "converged",
)  # fmt: skip


def relax_path(
    source: str | Path,
    out: str | Path,
    *,
    steps: int = DEFAULT_STEPS,
    fmax: float = DEFAULT_FMAX,
    device: str = "cpu",
    dedupe: bool = False,
    on_result: Callable[[RelaxResult], None] | None = None,
) -> RelaxRun:
    """Relax the structures of a CIF file or folder, extXYZ file or CSV, and write them ranked by
    energy per atom to ``out``: ``rank_001_<formula>.cif``, ... (with ``# kldm.<key>`` comment
    lines holding the energies) and ``summary.csv`` (one row per input, failed relaxations
    included with an empty rank)."""
    from pymatgen.io.cif import CifWriter

    from kldm_cli.data.readers import load_dataset
    from kldm_cli.data.writers import format_cif_metadata

    chgnet_device(device)  # a bad --device fails before any reading
    dataset = load_dataset(source, niggli=False, use_cache=False)
    if not dataset.records:
        raise ValueError(f"{source} holds no readable structure")
    names = [r.material_id or f"structure_{i}" for i, r in enumerate(dataset.records)]
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    structures = [r.to_structure() for r in dataset.records]
    results = relax_structures(
        structures, steps=steps, fmax=fmax, device=device, on_result=on_result
    )
    ranking = rank_candidates(results, dedupe=dedupe)
    width = max(3, len(str(len(ranking))))
    files: list[Path] = []
    rank_of: dict[int, tuple[int, Path]] = {}
    for rank, result in enumerate(ranking, start=1):
        if result.structure is None:  # rank_candidates keeps successful results only
            continue
        formula = cell_formula(result.structure)
        path = out / f"rank_{rank:0{width}d}_{formula}.cif"
        metadata = {
            "rank": rank, "input": names[result.index], "formula": formula,
            "energy_per_atom_eV": result.energy_per_atom,
            "initial_energy_per_atom_eV": result.initial_energy_per_atom,
            "rmsd_A": result.rmsd, "steps": result.num_steps, "converged": result.converged,
            "potential": "CHGNet",
        }  # fmt: skip
        path.write_text(format_cif_metadata(metadata) + str(CifWriter(result.structure)))
        files.append(path)
        rank_of[result.index] = (rank, path)

    summary = out / "summary.csv"
    with open(summary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SUMMARY_COLUMNS)
        order = [r.index for r in ranking] + [r.index for r in results if r.index not in rank_of]
        for index in order:
            result = results[index]
            rank, path = rank_of.get(index, (None, None))
            delta = (
                None
                if result.energy_per_atom is None or result.initial_energy_per_atom is None
                else result.energy_per_atom - result.initial_energy_per_atom
            )
            writer.writerow(
                [
                    "" if rank is None else rank, "" if path is None else path.name,
                    names[index], result.formula, len(result.initial_structure),
                    _fmt(result.initial_energy_per_atom), _fmt(result.energy_per_atom),
                    _fmt(delta), _fmt(result.rmsd), _fmt(result.volume_change),
                    result.num_steps, result.converged,
                ]
            )  # fmt: skip
    return RelaxRun(results, ranking, files, summary, list(dataset.skipped), names)


def cell_formula(structure: Structure) -> str:
    """Formula of the whole cell without 1s, e.g. ``Na2Cl2``, ``NaCl``, ``LiFePO4``."""
    amounts = structure.composition.get_el_amt_dict()
    return "".join(f"{el}{'' if n == 1 else f'{n:g}'}" for el, n in amounts.items())


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"
