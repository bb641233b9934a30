"""Chemical formulas and element symbols.

:func:`parse_formula` turns a formula as a user writes it (``LiFePO4``, ``Ca(OH)2``) into the
atomic numbers of one cell, which is what crystal structure prediction (CSP) needs.
The element table is built in so that parsing a formula does not import pymatgen.
"""

from __future__ import annotations

import re
from collections import Counter

#: Element symbols in order of atomic number (index 0 is hydrogen, Z = 1).
ELEMENT_SYMBOLS: tuple[str, ...] = (
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl",
    "Ar", "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As",
    "Se", "Br", "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In",
    "Sn", "Sb", "Te", "I", "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb",
    "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl",
    "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th", "Pa", "U", "Np", "Pu", "Am", "Cm", "Bk",
    "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf", "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn",
    "Nh", "Fl", "Mc", "Lv", "Ts", "Og",
)  # fmt: skip

#: Element symbol -> atomic number.
ATOMIC_NUMBERS: dict[str, int] = {symbol: z for z, symbol in enumerate(ELEMENT_SYMBOLS, start=1)}

_TOKEN = re.compile(r"\s*(?:([A-Z][a-z]?)|([(\[])|([)\]])|(\d+(?:\.\d*)?|\.\d+))")
_AMOUNT = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_CLOSING = {"(": ")", "[": "]"}


def element_symbol(atomic_number: int) -> str:
    """Symbol of an element (``26 -> "Fe"``); ``ValueError`` if Z is not in 1..118."""
    if not 1 <= int(atomic_number) <= len(ELEMENT_SYMBOLS):
        raise ValueError(f"Unknown atomic number {atomic_number!r} (expected 1..118)")
    return ELEMENT_SYMBOLS[int(atomic_number) - 1]


def parse_formula(formula: str, formula_units: int = 1) -> list[int]:
    """Atomic numbers of the atoms in ``formula_units`` copies of ``formula``.

    The formula is taken as written: ``LiFePO4`` is one cell of 7 atoms, ``Li2Fe2P2O8`` one of 14.
    Parentheses and brackets may be nested (``Ca(OH)2``, ``K4[Fe(CN)6]``) and whitespace between
    groups is ignored. Elements come out grouped, in order of first appearance::

        parse_formula("Ca(OH)2") == [20, 8, 8, 1, 1]

    Raises ``ValueError`` naming the problem for an empty formula, an unknown element symbol,
    a fractional or zero amount, unbalanced brackets or any other character.
    """
    if not isinstance(formula, str) or not formula.strip():
        raise ValueError(f"Empty formula {formula!r}")
    if isinstance(formula_units, bool) or not isinstance(formula_units, int) or formula_units < 1:
        raise ValueError(f"formula_units must be a positive integer, got {formula_units!r}")

    counts = _parse_group(formula, 0, closing=None)[0]
    atomic_numbers: list[int] = []
    for symbol, count in counts.items():
        atomic_numbers.extend([ATOMIC_NUMBERS[symbol]] * (count * formula_units))
    return atomic_numbers


def _parse_group(formula: str, pos: int, closing: str | None) -> tuple[Counter[str], int]:
    """Parse from ``pos`` up to the bracket ``closing`` (or the end); returns counts, position."""
    counts: Counter[str] = Counter()
    while True:
        if pos >= len(formula) or not formula[pos:].strip():
            if closing is not None:
                raise ValueError(f"Unbalanced brackets in formula {formula!r}: missing {closing!r}")
            if not counts:
                raise ValueError(f"No elements in formula {formula!r}")
            return counts, len(formula)
        match = _TOKEN.match(formula, pos)
        if match is None:
            bad = formula[pos:].lstrip()[0]
            raise ValueError(
                f"Unexpected character {bad!r} at position {formula.index(bad, pos)} "
                f"in formula {formula!r}"
            )
        symbol, opening, close, number = match.groups()
        pos = match.end()
        if number is not None:
            raise ValueError(
                f"Amount {number!r} at position {match.start(4)} in formula {formula!r} "
                "does not follow an element or a bracket"
            )
        if close is not None:
            if close != closing:
                raise ValueError(
                    f"Unbalanced brackets in formula {formula!r}: unexpected {close!r}"
                )
            if not counts:
                raise ValueError(f"Empty brackets in formula {formula!r}")
            return counts, pos
        if opening is not None:
            inner, pos = _parse_group(formula, pos, closing=_CLOSING[opening])
            amount, pos = _parse_amount(formula, pos)
            for inner_symbol, inner_count in inner.items():
                counts[inner_symbol] += inner_count * amount
            continue
        if symbol not in ATOMIC_NUMBERS:
            raise ValueError(f"Unknown element symbol {symbol!r} in formula {formula!r}")
        amount, pos = _parse_amount(formula, pos)
        counts[symbol] += amount


def _parse_amount(formula: str, pos: int) -> tuple[int, int]:
    """The integer right after an element or a closing bracket (1 when there is none)."""
    match = _AMOUNT.match(formula, pos)
    if match is None:
        return 1, pos
    text = match.group()
    if not text.isdigit():
        raise ValueError(
            f"Fractional amount {text!r} in formula {formula!r}: a formula must count whole "
            "atoms, so multiply it out (e.g. Fe0.5O -> FeO2)"
        )
    if int(text) == 0:
        raise ValueError(f"Zero amount {text!r} in formula {formula!r}")
    return int(text), match.end()


def charge_balance_warning(formula: str) -> str | None:
    """A warning when no charge-balanced assignment of oxidation states exists for ``formula``
    (SMACT, pymatgen's common oxidation states, mixed valence allowed, no electronegativity
    test; all-metal formulas count as alloys), else ``None``.

    Often a typo (``LiFePO`` for ``LiFePO4``); covalent and intermetallic compounds (SiC, MgB2)
    are real exceptions, so this only warns.
    """
    import warnings

    from smact.screening import smact_validity

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            balanced = smact_validity(
                formula, use_pauling_test=False, include_alloys=True,
                oxidation_states_set="pymatgen_sp", mixed_valence=True,
            )  # fmt: skip
    except Exception:  # noqa: BLE001  (a formula SMACT cannot read: no opinion)
        return None
    if balanced:
        return None
    return (
        f"{formula} has no charge-balanced set of common oxidation states (SMACT): check the "
        "formula for a typo; covalent or intermetallic compounds can still be right"
    )
