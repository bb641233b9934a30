"""`kldm predict` end to end on a tiny trained model (CLI and library)."""

import pytest
from pymatgen.core import Composition, Structure
from typer.testing import CliRunner

from kldm_cli.cli.main import app
from kldm_cli.config import KLDMConfig
from kldm_cli.data.readers import file_sha256
from kldm_cli.data.writers import parse_cif_metadata
from kldm_cli.predict import plan_compositions, predict

runner = CliRunner()


def _formula(model_dir) -> str:
    """A composition the tiny model was trained on (first Perov-5 fixture row), as written."""
    from kldm_cli.data.readers import load_dataset

    from .conftest import FIXTURES

    record = load_dataset(FIXTURES / "perov5_small.csv").records[0]
    return record.to_structure().composition.formula.replace(" ", "")


@pytest.mark.parametrize("sampler", ["pc", "em"])
def test_cli_predict_writes_cifs(tiny_csp_model, tmp_path, sampler):
    formula = _formula(tiny_csp_model)
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["predict", "--formula", formula, "-n", "3", "--weights", str(tiny_csp_model),
         "--out", str(out), "--steps", "20", "--sampler", sampler, "--seed", "7"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.cif"))
    assert len(files) == 3
    expected = Composition(formula)
    for path in files:
        structure = Structure.from_file(path)
        assert structure.composition == expected
        assert structure.volume > 0
    header = parse_cif_metadata(files[0].read_text())
    assert header["weights_sha256"] == file_sha256(tiny_csp_model / "model.safetensors")
    assert (header["seed"], header["sampler"], header["steps"]) == (7, sampler, 20)


def test_same_seed_same_structures(tiny_csp_model, tmp_path):
    formula = _formula(tiny_csp_model)
    runs = [
        predict(formula, 3, weights=str(tiny_csp_model), out=tmp_path / f"r{i}", steps=3, seed=s)
        for i, s in enumerate([5, 5, 6])
    ]
    same = [a.frac_coords for a in runs[0].structures], [b.frac_coords for b in runs[1].structures]
    for a, b in zip(*same, strict=True):
        assert (a == b).all()
    other = runs[2].structures[0].frac_coords
    assert not (runs[0].structures[0].frac_coords == other).all()


def test_extxyz_output(tiny_csp_model, tmp_path):
    formula = _formula(tiny_csp_model)
    result = predict(
        formula, 2, weights=str(tiny_csp_model), out=tmp_path / "x", fmt="extxyz", steps=2
    )
    from ase.io import read

    frames = read(result.files[0], index=":")
    assert len(frames) == 2
    sha256 = file_sha256(tiny_csp_model / "model.safetensors")
    assert [frame.info["weights_sha256"] for frame in frames] == [sha256, sha256]


@pytest.mark.parametrize(
    "formula, units, message",
    [
        ("NaXx2", "1", "Xx"),
        ("Li2", "1", "never trained"),
        ("", "1", ""),
    ],
)
def test_cli_predict_refuses_bad_input(tiny_csp_model, tmp_path, formula, units, message):
    result = runner.invoke(
        app,
        ["predict", "--formula", formula, "-n", "2", "--weights", str(tiny_csp_model),
         "--out", str(tmp_path / "o"), "--steps", "2", "--formula-units", units],
    )  # fmt: skip
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not list((tmp_path / "o").glob("*.cif")) if (tmp_path / "o").exists() else True


def test_too_many_atoms_refused_before_sampling(tiny_csp_model):
    config = KLDMConfig.load(tiny_csp_model / "config.json")
    formula = _formula(tiny_csp_model)
    with pytest.raises(ValueError, match="at most") as refused:
        plan_compositions(config, formula, 2, formula_units=config.max_atoms)
    per_unit = len(plan_compositions(config, formula, 1)[0])
    largest = config.max_atoms // per_unit
    assert f"the largest Z that fits is {largest} (--formula-units {largest})" in str(refused.value)


def test_formula_units_auto_stays_in_range(tiny_csp_model):
    config = KLDMConfig.load(tiny_csp_model / "config.json")
    plan = plan_compositions(config, _formula(tiny_csp_model), 4, formula_units="auto")
    assert len(plan) == 4
    assert all(config.min_atoms <= len(c) <= config.max_atoms for c in plan)


def test_unwritable_output_folder(tiny_csp_model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = runner.invoke(
        app,
        ["predict", "--formula", _formula(tiny_csp_model), "-n", "1", "--weights",
         str(tiny_csp_model), "--out", str(blocker / "sub"), "--steps", "2"],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "Error" in result.output


def test_dng_model_refused_for_predict(tiny_dng_model, tmp_path):
    result = runner.invoke(
        app,
        ["predict", "--formula", "SrTiO3", "-n", "1", "--weights", str(tiny_dng_model),
         "--out", str(tmp_path / "o")],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "DNG" in result.output
