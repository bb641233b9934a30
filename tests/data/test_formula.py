"""parse_formula: formulas as written, clear errors for everything else."""

from __future__ import annotations

import pytest
from pymatgen.core import Element

from kldm_cli.data.formula import ATOMIC_NUMBERS, ELEMENT_SYMBOLS, element_symbol, parse_formula


def test_element_table_matches_pymatgen():
    assert len(ELEMENT_SYMBOLS) == 118
    for symbol, z in ATOMIC_NUMBERS.items():
        assert Element(symbol).Z == z


@pytest.mark.parametrize(
    ("formula", "formula_units", "expected"),
    [
        ("LiFePO4", 1, [3, 26, 15, 8, 8, 8, 8]),
        ("LiFePO4", 2, [3, 3, 26, 26, 15, 15] + [8] * 8),
        ("Ca(OH)2", 1, [20, 8, 8, 1, 1]),
        ("K4[Fe(CN)6]", 1, [19] * 4 + [26] + [6] * 6 + [7] * 6),
        ("CH3COOH", 1, [6, 6, 1, 1, 1, 1, 8, 8]),
        ("Si", 1, [14]),
        ("  Na Cl ", 1, [11, 17]),
        ("Co", 1, [27]),
        ("CO", 1, [6, 8]),
        ("Sn12O24", 1, [50] * 12 + [8] * 24),
    ],
)
def test_good_formulas(formula, formula_units, expected):
    assert parse_formula(formula, formula_units) == expected


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("", "Empty formula"),
        ("   ", "Empty formula"),
        ("Xx2O", "Unknown element symbol 'Xx'"),
        ("Fe0.5O", "Fractional amount '0.5'"),
        ("Li.5", "Fractional amount"),
        ("Fe0O", "Zero amount"),
        ("lifepo4", "Unexpected character 'l'"),
        ("Fe2+", "Unexpected character '\\+'"),
        ("Ca(OH2", "missing '\\)'"),
        ("CaOH)2", "unexpected '\\)'"),
        ("Ca()2", "Empty brackets"),
        ("2H2O", "does not follow an element"),
        ("Fe 2", "does not follow an element"),
    ],
)
def test_bad_formulas(formula, message):
    with pytest.raises(ValueError, match=message):
        parse_formula(formula)


@pytest.mark.parametrize("formula_units", [0, -1, 1.5, True])
def test_bad_formula_units(formula_units):
    with pytest.raises(ValueError, match="formula_units"):
        parse_formula("NaCl", formula_units)


def test_element_symbol():
    assert element_symbol(26) == "Fe"
    with pytest.raises(ValueError, match="Unknown atomic number"):
        element_symbol(0)
