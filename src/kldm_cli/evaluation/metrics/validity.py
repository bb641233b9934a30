"""Structural and compositional validity, as defined by CDVAE (Xie et al., 2022).

- A structure is *structurally valid* when no two atoms — periodic images included — are closer
  than 0.5 Å and the cell volume exceeds 0.1 Å³.
- A composition is *compositionally valid* when SMACT finds oxidation states that make it charge
  neutral and that pass the Pauling electronegativity test (cations less electronegative than
  anions). Single-element compositions and compositions made only of metals (alloys) are valid
  without the test.
"""

from __future__ import annotations

import itertools
import math
from functools import reduce

import numpy as np
from pymatgen.core import Composition, Structure

#: Above this many oxidation-state combinations a composition is declared invalid rather than
#: enumerated (a guard against combinatorial blow-up on many-element samples).
MAX_OXIDATION_COMBINATIONS = 10**7


def structural_validity(
    structure: Structure, min_dist: float = 0.5, min_volume: float = 0.1
) -> bool:
    """True if every interatomic distance (periodic images included) exceeds ``min_dist`` (Å)
    and the cell volume exceeds ``min_volume`` (Å³).

    Distances between different sites use the minimum-image convention; a site's distance to its
    own periodic images is the length of the shortest lattice vector.
    """
    try:
        volume = float(structure.volume)
        if not math.isfinite(volume) or volume <= min_volume:
            return False
        if not np.all(np.isfinite(structure.frac_coords)):
            return False
        if _shortest_lattice_vector(structure.lattice.matrix) <= min_dist:
            return False
        if len(structure) < 2:
            return True
        distances = np.array(structure.distance_matrix, dtype=float)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError):
        return False
    np.fill_diagonal(distances, np.inf)
    return bool(distances.min() > min_dist)


def _shortest_lattice_vector(matrix: np.ndarray) -> float:
    """Length (Å) of the shortest non-zero lattice vector: the LLL-reduced basis and its sums
    and differences, which contain the shortest vector for any LLL-reduced 3D basis in practice.
    """
    from pymatgen.core import Lattice

    reduced = Lattice(matrix).get_lll_reduced_lattice().matrix
    shifts = np.array([s for s in itertools.product((-1, 0, 1), repeat=3) if any(s)])
    return float(np.linalg.norm(shifts @ reduced, axis=1).min())


def compositional_validity(
    composition: Composition | Structure | str,
    *,
    use_pauling_test: bool = True,
    include_alloys: bool = True,
    oxidation_states_set: str = "smact14",
) -> bool:
    """SMACT charge neutrality + Pauling electronegativity test, as in CDVAE.

    ``composition`` is a pymatgen ``Composition``, a formula string or a ``Structure`` (its
    composition is used). Counts are reduced by their greatest common divisor first (Na4Cl4 is
    tested as NaCl). ``oxidation_states_set`` picks SMACT's oxidation-state table; "smact14" is
    the table CDVAE and DiffCSP used (SMACT 2's default).
    """
    import smact
    from smact.screening import pauling_test

    if isinstance(composition, Structure):
        composition = composition.composition
    elif isinstance(composition, str):
        composition = Composition(composition)
    amounts = composition.get_el_amt_dict()
    symbols = list(amounts)
    if not symbols:
        return False
    if len(symbols) == 1:
        return True
    if include_alloys and all(symbol in smact.metals for symbol in symbols):
        return True
    counts = [round(amounts[s]) for s in symbols]
    if any(c < 1 or abs(c - amounts[s]) > 1e-6 for c, s in zip(counts, symbols, strict=True)):
        return False  # fractional occupancies are not a crystal we can judge
    divisor = reduce(math.gcd, counts)
    counts = [c // divisor for c in counts]

    elements = smact.element_dictionary(symbols)
    electronegativities = [elements[s].pauling_eneg for s in symbols]
    attribute = f"oxidation_states_{oxidation_states_set}"
    oxidation_states = [getattr(elements[s], attribute, None) for s in symbols]
    if any(not states for states in oxidation_states):
        return False
    if math.prod(len(states) for states in oxidation_states) > MAX_OXIDATION_COMBINATIONS:
        return False
    for states in itertools.product(*oxidation_states):
        if sum(q * n for q, n in zip(states, counts, strict=True)) != 0:
            continue  # not charge neutral with these oxidation states
        if not use_pauling_test:
            return True
        try:
            if pauling_test(states, electronegativities):
                return True
        except TypeError:  # an element without an electronegativity: accept, as CDVAE does
            return True
    return False


def is_valid(structure: Structure) -> bool:
    """Structurally and compositionally valid (CDVAE's "valid")."""
    return structural_validity(structure) and compositional_validity(structure)
