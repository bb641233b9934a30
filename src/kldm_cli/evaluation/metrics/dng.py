"""De novo generation metrics: uniqueness, novelty, coverage and Wasserstein distances.

- **Uniqueness** — the fraction of samples that match no *earlier* sample (the first member of
  every group of duplicates counts as unique).
- **Novelty** — the fraction of samples that match no structure of a reference set (the training
  set).
  Both use pymatgen's ``StructureMatcher`` with its default tolerances (ltol=0.2, stol=0.3,
  angle_tol=5), as FlowMM and MatterGen do, and only compare structures with the same reduced
  formula (the matcher never matches different ones).
- **Disorder-aware novelty** (:func:`matches_any_disorder_aware`, the novelty that S.U.N. uses) —
  as MatterGen defines it: a sample also matches a known structure when it is the same crystal up
  to the ordering of elements that can substitute for each other (atomic radii within 30 % of
  their mean and Pauling electronegativities within 1.0). Those elements' sites are merged into
  disordered sites (each holding the elements in their proportions in the sample) and matched with
  ``OrderDisorderElementComparator`` (``attempt_supercell=True``); a disordered reference
  structure is compared with samples of the same fractional composition.
- **Coverage** (CDVAE) — COV-R: the fraction of reference structures that have a sample within
  both cutoffs; COV-P: the fraction of samples within both cutoffs of some reference structure.
  Distances are Euclidean between fingerprints: the CrystalNN structure fingerprint (matminer
  ``CrystalNNFingerprint.from_preset("ops")`` averaged over sites, not normalized) and the Magpie
  composition fingerprint (``ElementProperty.from_preset("magpie")``, standardized feature by
  feature; NaN → 0 after standardizing). CDVAE standardizes with the MP-20 *training* set's
  means and standard deviations; here :class:`CompositionScaler` is fit on the set you pass
  (``kldm evaluate dng`` fits it on ``--reference``, the training set). Cutoffs: MP-20 0.4 / 10,
  Carbon-24 and Perov-5 0.2 / 4 (:data:`COVERAGE_CUTOFFS`).
- **Wasserstein distances** (scipy ``wasserstein_distance``) between the samples' and the
  reference's distributions of density (g/cm³) and of the number of distinct elements.

Fingerprints and matching run in worker processes with a per-task time limit
(:func:`~kldm_cli.evaluation.metrics._parallel.run_tasks`); nothing is cached between calls —
compute the fingerprints once with :func:`structure_fingerprints` and pass them to
:func:`coverage_from_fingerprints` to reuse them.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure

from kldm_cli.evaluation.metrics._parallel import run_tasks
from kldm_cli.evaluation.metrics.validity import compositional_validity, structural_validity

#: Coverage cutoffs (structure fingerprint distance, composition fingerprint distance) per
#: benchmark, as published with CDVAE.
COVERAGE_CUTOFFS: dict[str, tuple[float, float]] = {
    "mp_20": (0.4, 10.0),
    "carbon_24": (0.2, 4.0),
    "perov_5": (0.2, 4.0),
}

#: StructureMatcher settings for uniqueness and novelty: pymatgen's defaults.
DNG_MATCHER_SETTINGS: dict[str, float] = {"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0}


# ---------------------------------------------------------------------- uniqueness / novelty
@dataclass
class UniquenessResult:
    """``rate`` = number of unique samples / number of samples. ``is_unique[i]`` is False for a
    sample that matches an earlier one, and for every member but the first of a group whose
    comparison timed out (``num_timeouts`` counts such groups)."""

    rate: float
    is_unique: list[bool]
    num_timeouts: int


@dataclass
class NoveltyResult:
    """``rate`` = number of novel samples / number of samples. A sample whose comparison timed
    out counts as not novel (``num_timeouts``)."""

    rate: float
    is_novel: list[bool]
    num_timeouts: int


def first_occurrences(structures: Sequence[Structure], settings: dict[str, float]) -> list[bool]:
    """For structures of one reduced formula: True where a structure matches none before it."""
    matcher = StructureMatcher(**settings)
    representatives: list[Structure] = []
    flags = []
    for structure in structures:
        duplicate = any(_fits(matcher, structure, other) for other in representatives)
        if not duplicate:
            representatives.append(structure)
        flags.append(not duplicate)
    return flags


def matches_any(
    structure: Structure, references: Sequence[Structure], settings: dict[str, float]
) -> bool:
    """True if ``structure`` matches one of ``references`` (``StructureMatcher(**settings)``)."""
    matcher = StructureMatcher(**settings)
    return any(_fits(matcher, structure, reference) for reference in references)


def _substitutes(first: Any, second: Any) -> bool:
    """True if two elements can substitute for each other (MatterGen's rule: atomic radii within
    30 % of their mean, Pauling electronegativities within 1.0)."""
    with warnings.catch_warnings():  # noble gases: no Pauling electronegativity (NaN)
        warnings.simplefilter("ignore", UserWarning)
        x_1, x_2 = float(first.X), float(second.X)
    radius_1, radius_2 = first.atomic_radius, second.atomic_radius
    if radius_1 is None or radius_2 is None or x_1 != x_1 or x_2 != x_2:
        return False  # no radius or electronegativity (NaN): never merged
    mean = (float(radius_1) + float(radius_2)) / 2
    return abs(float(radius_1) - float(radius_2)) <= 0.3 * mean and abs(x_1 - x_2) <= 1.0


def disordered_version(structure: Structure) -> Structure | None:
    """``structure`` with the sites of mutually substitutable elements (connected groups) made
    disordered sites holding each group's elements in their proportions; None if no two of its
    elements substitute."""
    elements = sorted(structure.composition.elements)
    groups: list[set[Any]] = [{element} for element in elements]
    for first, second in ((a, b) for i, a in enumerate(elements) for b in elements[i + 1 :]):
        if _substitutes(first, second):
            merged = [g for g in groups if first in g or second in g]
            groups = [g for g in groups if g not in merged] + [set().union(*merged)]
    groups = [g for g in groups if len(g) > 1]
    if not groups:
        return None
    composition = structure.composition
    occupancy = {}
    for group in groups:
        total = sum(composition[e] for e in group)
        for element in group:
            occupancy[element] = {e: composition[e] / total for e in group}
    species = [occupancy.get(site.specie, {site.specie: 1.0}) for site in structure]
    return Structure(structure.lattice, species, structure.frac_coords)


def matches_any_disorder_aware(
    structure: Structure, references: Sequence[Structure], settings: dict[str, float]
) -> bool:
    """True if ``structure`` (ordered) matches one of ``references``: an ordered reference of
    its reduced formula with the ordered matcher, or — after :func:`disordered_version` — with
    ``OrderDisorderElementComparator`` (``attempt_supercell=True``); a disordered reference of
    its fractional composition with that comparator."""
    from pymatgen.analysis.structure_matcher import OrderDisorderElementComparator

    ordered = StructureMatcher(**settings)
    disordered = StructureMatcher(
        **settings, comparator=OrderDisorderElementComparator(), attempt_supercell=True
    )  # a merged cell may reduce to a smaller primitive cell than the ordered one
    merged = disordered_version(structure)
    formula = structure.composition.reduced_formula
    fraction = structure.composition.fractional_composition
    for reference in references:
        if reference.is_ordered:
            if reference.composition.reduced_formula != formula:
                continue
            if _fits(ordered, structure, reference):
                return True
            if merged is not None and _fits(disordered, merged, reference):
                return True
        elif reference.composition.fractional_composition.almost_equals(fraction, atol=1e-3):
            if _fits(disordered, structure if merged is None else merged, reference):
                return True
    return False


def _fits(matcher: Any, first: Structure, second: Structure) -> bool:
    try:
        return bool(matcher.fit(first, second))
    except Exception:  # noqa: BLE001 - a structure the matcher cannot handle matches nothing
        return False


def _elements(structure: Structure) -> frozenset[str]:
    return frozenset(element.symbol for element in structure.composition.elements)


def _group_by_formula(structures: Sequence[Structure]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, structure in enumerate(structures):
        groups[structure.composition.reduced_formula].append(index)
    return groups


def uniqueness(
    structures: Sequence[Structure],
    *,
    workers: int = 2,
    timeout: float | None = 300.0,
    matcher_settings: dict[str, float] | None = None,
) -> UniquenessResult:
    """Uniqueness of ``structures`` among themselves; one task per reduced formula, each under
    ``timeout`` seconds."""
    settings = dict(DNG_MATCHER_SETTINGS if matcher_settings is None else matcher_settings)
    is_unique = [True] * len(structures)
    groups = [g for g in _group_by_formula(structures).values() if len(g) > 1]
    outcomes = run_tasks(
        first_occurrences,
        [([structures[i] for i in group], settings) for group in groups],
        workers=workers,
        timeout=timeout,
    )
    num_timeouts = 0
    for group, outcome in zip(groups, outcomes, strict=True):
        if outcome.status == "ok":
            flags = outcome.value
        else:
            num_timeouts += 1
            flags = [True] + [False] * (len(group) - 1)
        for index, flag in zip(group, flags, strict=True):
            is_unique[index] = flag
    rate = sum(is_unique) / len(structures) if structures else 0.0
    return UniquenessResult(rate, is_unique, num_timeouts)


def novelty(
    structures: Sequence[Structure],
    reference: Sequence[Structure],
    *,
    workers: int = 2,
    timeout: float | None = 60.0,
    matcher_settings: dict[str, float] | None = None,
    disorder_aware: bool = False,
) -> NoveltyResult:
    """Novelty of ``structures`` with respect to ``reference``; one task per sample whose
    reduced formula occurs in the reference (or, with ``disorder_aware``, that has a disordered
    reference structure of its chemical system), each under ``timeout`` seconds."""
    settings = dict(DNG_MATCHER_SETTINGS if matcher_settings is None else matcher_settings)
    ordered_reference = [i for i, s in enumerate(reference) if s.is_ordered or not disorder_aware]
    reference_groups = _group_by_formula([reference[i] for i in ordered_reference])
    reference_groups = {k: [ordered_reference[j] for j in v] for k, v in reference_groups.items()}
    disordered_groups: dict[frozenset[str], list[int]] = defaultdict(list)
    if disorder_aware:
        for index, structure in enumerate(reference):
            if not structure.is_ordered:
                disordered_groups[_elements(structure)].append(index)
    is_novel = [True] * len(structures)
    tasks, to_check = [], []
    for i, structure in enumerate(structures):
        group = reference_groups.get(structure.composition.reduced_formula, [])
        group = group + disordered_groups.get(_elements(structure), [])
        if group:
            to_check.append(i)
            tasks.append((structure, [reference[j] for j in group], settings))
    match = matches_any_disorder_aware if disorder_aware else matches_any
    outcomes = run_tasks(match, tasks, workers=workers, timeout=timeout)
    num_timeouts = 0
    for i, outcome in zip(to_check, outcomes, strict=True):
        if outcome.status == "ok":
            is_novel[i] = not outcome.value
        else:
            num_timeouts += outcome.status == "timeout"
            is_novel[i] = False
    rate = sum(is_novel) / len(structures) if structures else 0.0
    return NoveltyResult(rate, is_novel, num_timeouts)


# ---------------------------------------------------------------------- fingerprints
def require_matminer() -> None:
    """Raise a clear ImportError when matminer (the ``eval`` extra) is missing."""
    try:
        import matminer  # noqa: F401
    except ImportError as error:
        raise ImportError(
            'coverage needs matminer; install it with: pip install "kldm-cli[eval]"'
        ) from error


def structure_fingerprint(structure: Structure) -> np.ndarray | None:
    """CrystalNN "ops" site fingerprints averaged over sites, ``[61]``; None if it fails."""
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    featurizer = CrystalNNFingerprint.from_preset("ops")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sites = [featurizer.featurize(structure, i) for i in range(len(structure))]
    except Exception:  # noqa: BLE001 - CDVAE: no fingerprint, the sample is not covered
        return None
    return np.asarray(sites, dtype=float).mean(axis=0)


def structure_fingerprints(
    structures: Sequence[Structure], *, workers: int = 2, timeout: float | None = 120.0
) -> list[np.ndarray | None]:
    """:func:`structure_fingerprint` of each structure in worker processes (``timeout`` seconds
    per structure; a failure or timeout gives None)."""
    require_matminer()
    outcomes = run_tasks(
        structure_fingerprint, [(s,) for s in structures], workers=workers, timeout=timeout
    )
    return [o.value if o.status == "ok" else None for o in outcomes]


def composition_fingerprints(compositions: Sequence[Composition | Structure]) -> np.ndarray:
    """Magpie ``ElementProperty`` fingerprints, ``[num_compositions, 132]`` (NaN where Magpie has
    no data). Computed once per distinct reduced composition (the features depend only on the
    atomic fractions)."""
    require_matminer()
    from matminer.featurizers.composition.composite import ElementProperty

    featurizer = ElementProperty.from_preset("magpie")
    reduced = [
        (c.composition if isinstance(c, Structure) else Composition(c)).reduced_composition
        for c in compositions
    ]
    features: dict[Composition, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for composition in reduced:
            if composition not in features:
                features[composition] = np.asarray(featurizer.featurize(composition), float)
    if not reduced:
        return np.zeros((0, len(featurizer.feature_labels())))
    return np.stack([features[c] for c in reduced])


@dataclass
class CompositionScaler:
    """Feature-wise standardization of composition fingerprints (CDVAE's ``StandardScaler``):
    NaN-aware means and standard deviations; a zero or undefined deviation becomes 1, an
    undefined mean 0, and NaN features become 0 after scaling."""

    means: np.ndarray
    stds: np.ndarray

    @classmethod
    def fit(cls, fingerprints: np.ndarray) -> CompositionScaler:
        values = np.asarray(fingerprints, dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            means = np.nanmean(values, axis=0)
            stds = np.nanstd(values, axis=0)
        means = np.where(np.isnan(means), 0.0, means)
        stds = np.where(np.isnan(stds) | (stds == 0), 1.0, stds)
        return cls(means, stds)

    def transform(self, fingerprints: np.ndarray) -> np.ndarray:
        scaled = (np.asarray(fingerprints, dtype=float) - self.means) / self.stds
        return np.where(np.isnan(scaled), 0.0, scaled)


# ---------------------------------------------------------------------- coverage
@dataclass
class CoverageResult:
    """COV-R / COV-P (fractions, 0–1) and the mean minimum fingerprint distances (AMSD:
    structure, AMCD: composition) in both directions. ``num_samples`` counts every sample (the
    COV-P denominator); ``num_samples_fingerprinted`` those with both fingerprints;
    ``num_reference_fingerprinted`` the reference structures used (COV-R denominator)."""

    cov_recall: float
    cov_precision: float
    amsd_recall: float
    amsd_precision: float
    amcd_recall: float
    amcd_precision: float
    struct_cutoff: float
    comp_cutoff: float
    num_samples: int
    num_samples_fingerprinted: int
    num_reference: int
    num_reference_fingerprinted: int


def coverage_from_fingerprints(
    sample_struct_fps: Sequence[np.ndarray | None],
    sample_comp_fps: Sequence[np.ndarray | None],
    reference_struct_fps: Sequence[np.ndarray | None],
    reference_comp_fps: Sequence[np.ndarray | None],
    *,
    struct_cutoff: float = 0.4,
    comp_cutoff: float = 10.0,
    comp_scaler: CompositionScaler,
) -> CoverageResult:
    """Coverage from precomputed fingerprints (None = no fingerprint: the structure takes part
    in no distance, and a sample without one still counts in COV-P's denominator)."""
    from scipy.spatial.distance import cdist

    def usable(struct_fps: Sequence[Any], comp_fps: Sequence[Any]) -> tuple[np.ndarray, ...]:
        keep = [i for i, (s, c) in enumerate(zip(struct_fps, comp_fps, strict=True))
                if s is not None and c is not None]  # fmt: skip
        if not keep:
            return np.zeros((0, 1)), np.zeros((0, 1))
        struct = np.stack([struct_fps[i] for i in keep])
        comp = comp_scaler.transform(np.stack([comp_fps[i] for i in keep]))
        return struct, comp

    sample_struct, sample_comp = usable(sample_struct_fps, sample_comp_fps)
    reference_struct, reference_comp = usable(reference_struct_fps, reference_comp_fps)
    num_samples = len(sample_struct_fps)
    if len(reference_struct) == 0:
        raise ValueError("no reference structure has both fingerprints; coverage is undefined")
    if len(sample_struct) == 0:
        nan = float("nan")
        counts = (num_samples, 0, len(reference_struct_fps), len(reference_struct))
        return CoverageResult(0.0, 0.0, nan, nan, nan, nan, struct_cutoff, comp_cutoff, *counts)
    struct_dist = cdist(sample_struct, reference_struct)  # [num_samples, num_reference]
    comp_dist = cdist(sample_comp, reference_comp)
    struct_recall, struct_precision = struct_dist.min(axis=0), struct_dist.min(axis=1)
    comp_recall, comp_precision = comp_dist.min(axis=0), comp_dist.min(axis=1)
    recalled = (struct_recall <= struct_cutoff) & (comp_recall <= comp_cutoff)
    precise = (struct_precision <= struct_cutoff) & (comp_precision <= comp_cutoff)
    return CoverageResult(
        cov_recall=float(recalled.mean()),
        cov_precision=float(precise.sum() / num_samples),
        amsd_recall=float(struct_recall.mean()),
        amsd_precision=float(struct_precision.mean()),
        amcd_recall=float(comp_recall.mean()),
        amcd_precision=float(comp_precision.mean()),
        struct_cutoff=struct_cutoff,
        comp_cutoff=comp_cutoff,
        num_samples=num_samples,
        num_samples_fingerprinted=len(sample_struct),
        num_reference=len(reference_struct_fps),
        num_reference_fingerprinted=len(reference_struct),
    )


def coverage(
    samples: Sequence[Structure],
    reference: Sequence[Structure],
    *,
    struct_cutoff: float = 0.4,
    comp_cutoff: float = 10.0,
    comp_scaler: CompositionScaler | None = None,
    valid_only: bool = True,
    workers: int = 2,
    timeout: float | None = 120.0,
) -> CoverageResult:
    """COV-R and COV-P of ``samples`` against ``reference`` (CDVAE).

    With ``valid_only`` (the KLDM reference implementation's rule) a sample gets a structure
    fingerprint only if it is structurally and compositionally valid, and a composition
    fingerprint only if compositionally valid; the others are never covered. ``comp_scaler``
    defaults to one fit on ``reference``'s composition fingerprints.
    """
    sample_comp = list(composition_fingerprints(samples))
    reference_comp = composition_fingerprints(reference)
    scaler = comp_scaler or CompositionScaler.fit(reference_comp)
    to_fingerprint = list(range(len(samples)))
    if valid_only:
        comp_valid = [compositional_validity(s) for s in samples]
        sample_comp = [fp if ok else None for fp, ok in zip(sample_comp, comp_valid, strict=True)]
        to_fingerprint = [i for i in to_fingerprint if comp_valid[i]]
        to_fingerprint = [i for i in to_fingerprint if structural_validity(samples[i])]
    sample_struct: list[np.ndarray | None] = [None] * len(samples)
    computed = structure_fingerprints(
        [samples[i] for i in to_fingerprint], workers=workers, timeout=timeout
    )
    for i, fingerprint in zip(to_fingerprint, computed, strict=True):
        sample_struct[i] = fingerprint
    reference_struct = structure_fingerprints(reference, workers=workers, timeout=timeout)
    return coverage_from_fingerprints(
        sample_struct,
        sample_comp,
        reference_struct,
        list(reference_comp),
        struct_cutoff=struct_cutoff,
        comp_cutoff=comp_cutoff,
        comp_scaler=scaler,
    )


# ---------------------------------------------------------------------- distributions
def wasserstein_density(samples: Sequence[Structure], reference: Sequence[Structure]) -> float:
    """1-Wasserstein distance between the density distributions (g/cm³) of the two sets."""
    from scipy.stats import wasserstein_distance

    _require_both(samples, reference)
    return float(wasserstein_distance([s.density for s in samples], [s.density for s in reference]))


def wasserstein_num_elements(samples: Sequence[Structure], reference: Sequence[Structure]) -> float:
    """1-Wasserstein distance between the distributions of the number of distinct elements."""
    from scipy.stats import wasserstein_distance

    _require_both(samples, reference)
    return float(
        wasserstein_distance(
            [len(s.composition.elements) for s in samples],
            [len(s.composition.elements) for s in reference],
        )
    )


def _require_both(samples: Sequence[Structure], reference: Sequence[Structure]) -> None:
    if not samples or not reference:
        raise ValueError(
            f"a Wasserstein distance needs two non-empty sets, got {len(samples)} samples "
            f"and {len(reference)} reference structures"
        )
