"""Thermodynamic stability of generated crystals from CHGNet energies: E_hull, stable %, S.U.N. %.

The convex hull is built from the *reference set* (normally the training set), with every
energy from CHGNet so that samples and hull share one energy model:

1. Only reference structures that can matter are evaluated: those whose elements are a subset
   of some sample's elements (a hull over A–B–C only involves phases made of A, B and C).
2. Each such reference structure gets a CHGNet energy: a single-point energy of the stored
   (DFT-relaxed) structure by default, or the energy after ``reference_relax_steps`` CHGNet
   relaxation steps. A structure CHGNet cannot handle is left out (and counted).
3. Each becomes a pymatgen ``PDEntry(composition, E_total)`` with E_total = CHGNet energy per
   atom × number of atoms (eV). Elemental references are the lowest-energy single-element
   structures of the reference set, plus (by default) the reference crystal of each sample
   element from ASE's ``reference_states`` (bcc Fe, hcp Ti, diamond Si, ...), relaxed with
   CHGNet. Training sets such as MP-20 hold a single-element structure for only a few dozen
   elements, so without these most hulls would be undefined. Adding candidates can only lower an
   elemental reference, so this never makes a sample look more stable than the dataset's own
   elemental phases would.
4. A sample's energy above the hull is ``PhaseDiagram.get_e_above_hull(entry,
   allow_negative=True)`` for the phase diagram of its own chemical system (negative: below the
   reference hull). Its energy is the CHGNet energy of the sample after CHGNet relaxation.
5. If one of the sample's elements has no single-element structure in the reference set, the
   hull of its chemical system is undefined and its E_hull is reported as unknown (None).

This hull is a *proxy*: the bundled data files hold a small part of the known compounds, and
their energies are CHGNet single points, so samples can land far below it. Its records name it
"proxy hull: N structures of the bundled data files" and report, next to the rates, the share
of samples below it, below it by more than 0.1 eV/atom, and with no hull at all. A hull that can
be compared with the papers' comes from DFT reference entries
(:mod:`kldm_cli.evaluation.metrics.reference_entries`).

A sample is *stable* when E_hull ≤ 0.1 eV/atom (MatterGen's definition; unknown counts as not
stable, and the number of unknowns is reported). S.U.N. = stable, unique and novel; every rate
divides by all samples.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pymatgen.core import Structure

#: E_hull at or below this (eV/atom) counts as stable (MatterGen's definition).
STABILITY_THRESHOLD = 0.1


def proxy_hull_name(num_structures: int) -> str:
    """How records and tables name the built-in hull."""
    return f"proxy hull: {num_structures:,} structures of the bundled data files"


#: CHGNet relaxation steps for the ASE elemental crystals (1–4 atoms: a few seconds each).
ELEMENTAL_RELAX_STEPS = 200


def chemical_system(structure: Structure) -> frozenset[str]:
    """The set of element symbols of a structure."""
    return frozenset(element.symbol for element in structure.composition.elements)


def relevant_reference(samples: Sequence[Structure], reference: Sequence[Structure]) -> list[int]:
    """Indices of reference structures whose elements are a subset of some sample's elements."""
    systems = {chemical_system(s) for s in samples}
    kept = []
    for index, structure in enumerate(reference):
        elements = chemical_system(structure)
        if any(elements <= system for system in systems):
            kept.append(index)
    return kept


@dataclass
class HullReference:
    """CHGNet energies (eV/atom) of the reference structures that were evaluated.

    ``energies[i]`` belongs to ``structures[i]``; None where CHGNet failed (left out of the
    hull). ``energy_kind`` is "single-point" or "relaxed (N steps)" (for the reference set);
    ``elemental_crystals`` names the elements whose ASE reference crystal was added."""

    structures: list[Structure]
    energies: list[float | None]
    energy_kind: str
    elemental_crystals: list[str] = field(default_factory=list)

    @property
    def num_failed(self) -> int:
        return sum(e is None for e in self.energies)

    def elements_with_reference(self) -> set[str]:
        """Elements that have a single-element structure with an energy."""
        return {
            next(iter(chemical_system(s)))
            for s, e in zip(self.structures, self.energies, strict=True)
            if e is not None and len(chemical_system(s)) == 1
        }


def elemental_crystals(elements: Iterable[str]) -> dict[str, Structure]:
    """ASE's reference crystal (``ase.build.bulk`` from ``ase.data.reference_states``) of each
    element that has one; elements without one (H, N, O, halogens, ...) are left out."""
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    crystals = {}
    for symbol in sorted(set(elements)):
        try:
            atoms = bulk(symbol)
        except (ValueError, KeyError, RuntimeError, NotImplementedError):
            continue  # no crystal reference state in ASE
        crystals[symbol] = AseAtomsAdaptor.get_structure(atoms)
    return crystals


def build_hull_reference(
    samples: Sequence[Structure],
    reference: Sequence[Structure],
    *,
    reference_relax_steps: int = 0,
    add_elemental_crystals: bool = True,
    elemental_relax_steps: int = ELEMENTAL_RELAX_STEPS,
    fmax: float = 0.1,
    device: str = "cpu",
    model: object = None,
) -> HullReference:
    """CHGNet energies of the reference structures relevant to ``samples`` and, with
    ``add_elemental_crystals``, of ASE's crystal of each sample element after
    ``elemental_relax_steps`` of CHGNet relaxation (see module doc)."""
    from kldm_cli.evaluation.relax import load_chgnet, predict_energies, relax_structures

    structures = [reference[i] for i in relevant_reference(samples, reference)]
    model = model or load_chgnet(device)
    if reference_relax_steps > 0:
        results = relax_structures(
            structures, steps=reference_relax_steps, fmax=fmax, device=device, model=model
        )
        energies = [r.energy_per_atom for r in results]
        kind = f"relaxed ({reference_relax_steps} steps)"
    else:
        energies = predict_energies(structures, device=device, model=model)
        kind = "single-point"
    hull = HullReference(structures, energies, kind)
    if add_elemental_crystals:
        crystals = elemental_crystals(set().union(*map(chemical_system, samples)))
        relaxed = relax_structures(
            list(crystals.values()), steps=elemental_relax_steps, fmax=fmax, device=device,
            model=model,
        )  # fmt: skip
        hull.structures.extend(r.structure or r.initial_structure for r in relaxed)
        hull.energies.extend(r.energy_per_atom for r in relaxed)
        hull.elemental_crystals = list(crystals)
    return hull


def energies_above_hull(
    structures: Sequence[Structure],
    energies_per_atom: Sequence[float | None],
    hull: HullReference,
) -> list[float | None]:
    """E_hull (eV/atom) of each structure with the given energy (eV/atom) against ``hull``;
    None where the energy is None or the hull of its chemical system is undefined."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram

    if len(structures) != len(energies_per_atom):
        raise ValueError(f"{len(structures)} structures but {len(energies_per_atom)} energies")
    entries = [
        (chemical_system(s), PDEntry(s.composition, e * len(s)))
        for s, e in zip(hull.structures, hull.energies, strict=True)
        if e is not None
    ]
    with_reference = hull.elements_with_reference()
    by_system: dict[frozenset[str], list[int]] = defaultdict(list)
    for index, (structure, energy) in enumerate(zip(structures, energies_per_atom, strict=True)):
        if energy is not None:
            by_system[chemical_system(structure)].append(index)

    result: list[float | None] = [None] * len(structures)
    for system, indices in by_system.items():
        if not system <= with_reference:
            continue  # an element without an elemental reference: the hull is undefined
        diagram = PhaseDiagram([entry for elements, entry in entries if elements <= system])
        for index in indices:
            structure = structures[index]
            sample = PDEntry(structure.composition, energies_per_atom[index] * len(structure))
            result[index] = float(diagram.get_e_above_hull(sample, allow_negative=True))
    return result


@dataclass
class StabilityResult:
    """``stable_rate``, ``sun_rate``, ``below_hull_rate`` (E_hull < 0), ``far_below_hull_rate``
    (E_hull < −``threshold``) and ``no_hull_rate`` (E_hull unknown) are fractions of all
    samples (0–1); ``e_above_hull`` per sample in eV/atom (None = unknown)."""

    e_above_hull: list[float | None]
    is_stable: list[bool]
    is_sun: list[bool]
    stable_rate: float
    sun_rate: float
    num_unknown: int
    threshold: float
    below_hull_rate: float = 0.0
    far_below_hull_rate: float = 0.0
    no_hull_rate: float = 0.0

    @property
    def mean_e_above_hull(self) -> float | None:
        """Mean E_hull (eV/atom) of the samples whose E_hull is known; None if none is."""
        known = [e for e in self.e_above_hull if e is not None]
        return sum(known) / len(known) if known else None


def stability_metrics(
    e_above_hull: Sequence[float | None],
    is_unique: Sequence[bool],
    is_novel: Sequence[bool],
    *,
    threshold: float = STABILITY_THRESHOLD,
) -> StabilityResult:
    """Stable % (E_hull ≤ ``threshold``), S.U.N. % (stable, unique and novel) and the shares
    below the hull, below it by more than ``threshold`` and with no hull."""
    if not len(e_above_hull) == len(is_unique) == len(is_novel):
        raise ValueError(
            f"lengths differ: {len(e_above_hull)} E_hull, {len(is_unique)} uniqueness flags, "
            f"{len(is_novel)} novelty flags"
        )
    stable = [e is not None and e <= threshold for e in e_above_hull]
    sun = [s and u and n for s, u, n in zip(stable, is_unique, is_novel, strict=True)]
    total = len(e_above_hull)

    def share(count: int) -> float:
        return count / total if total else 0.0

    known = [e for e in e_above_hull if e is not None]
    return StabilityResult(
        e_above_hull=list(e_above_hull),
        is_stable=stable,
        is_sun=sun,
        stable_rate=sum(stable) / total if total else 0.0,
        sun_rate=sum(sun) / total if total else 0.0,
        num_unknown=sum(e is None for e in e_above_hull),
        threshold=threshold,
        below_hull_rate=share(sum(e < 0 for e in known)),
        far_below_hull_rate=share(sum(e < -threshold for e in known)),
        no_hull_rate=share(total - len(known)),
    )
