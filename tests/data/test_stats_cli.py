"""dataset_stats and ``kldm data stats`` (through Typer's CliRunner)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from kldm_cli.cli.main import app
from kldm_cli.data.readers import read_csv
from kldm_cli.data.stats import dataset_stats, element_vocabulary, num_atoms_counts

runner = CliRunner()


def test_dataset_stats(bad_rows_csv, mp20_small_csv):
    dataset = read_csv(mp20_small_csv)
    stats = dataset_stats(dataset)
    assert stats.num_structures == 40 and stats.num_skipped == 0
    assert stats.num_atoms_counts == dict(Counter(r.num_atoms for r in dataset.records))
    assert list(stats.num_atoms_counts) == list(range(1, 21))
    symbols = [s for r in dataset.records for s in r.to_structure().symbol_set]
    assert stats.element_structure_counts == dict(Counter(symbols)) | stats.element_structure_counts
    assert set(stats.element_structure_counts) == set(symbols)
    assert sum(stats.element_atom_counts.values()) == sum(r.num_atoms for r in dataset.records)
    volumes = [r.to_structure().volume for r in dataset.records]
    assert stats.lattice_ranges["volume"].min == pytest.approx(min(volumes))
    assert stats.lattice_ranges["volume"].max == pytest.approx(max(volumes))
    assert stats.lattice_ranges["a"].mean == pytest.approx(
        np.mean([r.lengths[0] for r in dataset.records])
    )

    bad = dataset_stats(read_csv(bad_rows_csv))
    assert bad.num_structures == 3 and bad.num_skipped == 8
    assert bad.skipped_kinds == {
        "missing_cif": 2, "invalid_cell": 2, "invalid_cif": 1, "no_atoms": 1, "disordered": 1,
        "malformed_row": 1,
    }  # fmt: skip
    assert num_atoms_counts(dataset.records) == stats.num_atoms_counts
    assert element_vocabulary(dataset.records) == sorted(
        {z for r in dataset.records for z in r.atomic_numbers.tolist()}
    )


def test_cli_stats_then_cache(mp20_small_csv, tmp_path):
    result = runner.invoke(app, ["data", "stats", str(mp20_small_csv)])
    assert result.exit_code == 0, result.output
    assert "40 structures, 0 skipped" in result.output
    assert "parsed; cache written to" in result.output
    for heading in ("Atoms per cell", "Elements", "Lattice parameters", "volume (Å³)", "gamma (°)"):
        assert heading in result.output
    assert re.search(r"^\s+20\s+\d+\s+█", result.output, re.MULTILINE)  # histogram row
    assert "Skipped" not in result.output
    again = runner.invoke(app, ["data", "stats", str(mp20_small_csv)])
    assert again.exit_code == 0 and "loaded from the cache" in again.output
    assert any((tmp_path / "kldm-cache").iterdir())  # KLDM_CACHE_DIR from conftest


def test_cli_cache_options(perov5_small_csv, tmp_path):
    result = runner.invoke(
        app, ["data", "stats", str(perov5_small_csv), "--cache-dir", str(tmp_path / "mine")]
    )
    assert result.exit_code == 0 and "20 structures" in result.output
    assert len(list((tmp_path / "mine").iterdir())) == 1
    uncached = runner.invoke(app, ["data", "stats", str(perov5_small_csv), "--no-cache"])
    assert uncached.exit_code == 0 and "cache disabled" in uncached.output
    assert not (tmp_path / "kldm-cache").exists()


def test_cli_reports_skipped_rows(bad_rows_csv):
    result = runner.invoke(app, ["data", "stats", str(bad_rows_csv)])
    assert result.exit_code == 0, result.output
    assert "3 structures, 8 skipped (11 inputs read)" in result.output
    assert "bad_rows.csv:row 1 (bad-broken-cif): invalid CIF" in result.output
    assert "bad_rows.csv:row 6 (bad-zero-volume)" in result.output  # the 5th one shown
    assert "bad_rows.csv:row 7" not in result.output  # the 6th is only counted
    assert "... and 3 more" in result.output
    assert re.search(r"missing_cif: 2", result.output)
    assert re.search(r"malformed_row: 1", result.output)


def flat(output: str) -> str:
    """CLI output without the error panel's borders and line wrapping."""
    return " ".join(output.replace("│", " ").split())


def test_cli_errors_are_clean(tmp_path):
    missing = runner.invoke(app, ["data", "stats", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2
    assert "No such file or folder" in flat(missing.output)
    assert "Traceback" not in missing.output and isinstance(missing.exception, SystemExit)
    no_cif = tmp_path / "no_cif.csv"
    no_cif.write_text("material_id,structure\nmp-1,abc\n")
    result = runner.invoke(app, ["data", "stats", str(no_cif)])
    assert result.exit_code == 2 and "no 'cif' column" in flat(result.output)
    assert "Usage: kldm data stats" in result.output


def test_cli_help():
    result = runner.invoke(app, ["data", "stats", "--help"])
    assert result.exit_code == 0
    for text in ("--no-cache", "--cache-dir", "KLDM_CACHE_DIR", "~/.cache/kldm/datasets"):
        assert text in flat(result.output)
