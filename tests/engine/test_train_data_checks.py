"""What `kldm train` says about its data: skipped rows by name, oversized crystals, the cache."""

import csv
import json

import pytest
from pymatgen.io.cif import CifWriter
from typer.testing import CliRunner

from kldm_cli.cli.main import app
from kldm_cli.data.readers import load_dataset

from .conftest import FIXTURES

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def _flat(output: str) -> str:
    return " ".join(output.split())


def _args(data, out, *extra):
    return ["train", "--data", str(data), "--out", str(out), "--preset", "tiny",
            "--batch-size", "4", "--max-steps", "1", "--no-plot", *extra]  # fmt: skip


def _csv_with(tmp_path, extra_rows):
    """The Perov-5 fixture rows plus ``extra_rows`` (material_id, cif)."""
    with open(FIXTURES / "perov5_small.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    path = tmp_path / "data.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["material_id", "cif"])
        writer.writeheader()
        for row in rows[:12]:
            writer.writerow({"material_id": row.get("material_id", ""), "cif": row["cif"]})
        for material_id, cif in extra_rows:
            writer.writerow({"material_id": material_id, "cif": cif})
    return path


def test_train_names_the_skipped_rows_and_why(tmp_path):
    data = _csv_with(tmp_path, [("bad-1", "not a cif"), ("bad-2", "")])
    result = runner.invoke(app, _args(data, tmp_path / "m", "--cache-dir", str(tmp_path / "c")))
    assert result.exit_code == 0, result.output
    output = _flat(result.output)
    assert "(2 skipped)" in output
    assert "bad-1" in output and "bad-2" in output and "missing or empty 'cif' value" in output


def test_train_leaves_out_a_300_atom_crystal_and_says_how_to_keep_it(tmp_path):
    structure = load_dataset(FIXTURES / "perov5_small.csv").records[0].to_structure()
    big = structure * (5, 5, 3)  # 5 atoms x 75 = 375 atoms
    data = _csv_with(tmp_path, [("huge", str(CifWriter(big)))])
    result = runner.invoke(app, _args(data, tmp_path / "m", "--cache-dir", str(tmp_path / "c")))
    assert result.exit_code == 0, result.output
    output = _flat(result.output)
    assert "more than 100 atoms" in output and f"--max-atoms {len(big)}" in output
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["max_atoms"] <= 100


def test_train_cache_dir_option_is_used(tmp_path):
    cache = tmp_path / "my-cache"
    result = runner.invoke(
        app, _args(FIXTURES / "perov5_small.csv", tmp_path / "m", "--cache-dir", str(cache))
    )
    assert result.exit_code == 0, result.output
    assert list(cache.glob("*.npz"))
