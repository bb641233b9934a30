"""`kldm generate`: counts, validity of shapes, interruption and resume, bad input."""

import pytest
from pymatgen.core import Structure
from typer.testing import CliRunner

from kldm_cli.cli.main import app
from kldm_cli.config import KLDMConfig
from kldm_cli.data.readers import file_sha256, load_dataset
from kldm_cli.generate import generate, parse_num_atoms

runner = CliRunner()


def test_cli_generate_requested_atom_counts(tiny_dng_model, tmp_path):
    out = tmp_path / "samples"
    result = runner.invoke(
        app,
        ["generate", "--n", "4", "--weights", str(tiny_dng_model), "--out", str(out),
         "--steps", "20", "--num-atoms", "5", "--sampler", "em"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.cif"))
    assert len(files) == 4
    elements = set(KLDMConfig.load(tiny_dng_model / "config.json").elements)
    for path in files:
        structure = Structure.from_file(path)
        assert len(structure) == 5
        assert structure.volume > 0
        assert {site.specie.Z for site in structure} <= elements


@pytest.mark.parametrize("fmt", ["cif", "extxyz"])
def test_samples_name_the_weights_that_made_them(tiny_dng_model, tmp_path, fmt):
    out = tmp_path / "samples"
    generate(2, out=out, weights=str(tiny_dng_model), steps=5, seed=1, fmt=fmt)

    source = out if fmt == "cif" else out / "samples.extxyz"
    records = load_dataset(source, use_cache=False).records
    expected = file_sha256(tiny_dng_model / "model.safetensors")
    assert [r.metadata["weights_sha256"] for r in records] == [expected, expected]
    assert {r.metadata["seed"] for r in records} == {1}


class Interrupt(Exception):
    pass


def test_interrupt_and_resume_gives_exactly_n(tiny_dng_model, tmp_path):
    kwargs = dict(weights=str(tiny_dng_model), steps=20, seed=3, batch_atoms=10, method="pc")
    reference = generate(7, out=tmp_path / "straight", **kwargs)
    out = tmp_path / "resumed"

    def stop_after_first_batch(done, total):
        raise Interrupt

    with pytest.raises(Interrupt):
        generate(7, out=out, on_written=stop_after_first_batch, **kwargs)
    first = sorted(p.name for p in out.glob("*.cif"))
    assert 0 < len(first) < 7
    with pytest.raises(ValueError, match="--resume"):
        generate(7, out=out, **kwargs)
    resumed = generate(7, out=out, resume=True, **kwargs)
    assert resumed.skipped_existing == len(first)
    names = sorted(p.name for p in out.glob("*.cif"))
    assert len(names) == len(set(names)) == 7
    for name in names:
        a = Structure.from_file(tmp_path / "straight" / name)
        b = Structure.from_file(out / name)
        assert a.composition == b.composition
        assert abs(a.lattice.volume - b.lattice.volume) < 1e-4
    assert reference.written == 7


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n", "0"], "positive"),
        (["--n", "2", "--num-atoms", "500"], "trained on"),
        (["--n", "2", "--num-atoms", "x"], "--num-atoms"),
    ],
)
def test_cli_generate_refuses_bad_input(tiny_dng_model, tmp_path, args, message):
    result = runner.invoke(
        app, ["generate", *args, "--weights", str(tiny_dng_model), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code != 0
    assert message in result.output


def test_csp_model_refused_for_generate(tiny_csp_model, tmp_path):
    result = runner.invoke(
        app, ["generate", "--n", "2", "--weights", str(tiny_csp_model), "--out", str(tmp_path)]
    )
    assert result.exit_code != 0
    assert "CSP" in result.output


def test_parse_num_atoms():
    assert parse_num_atoms("8") == (8, 8)
    assert parse_num_atoms("4-12") == (4, 12)
    assert parse_num_atoms(None) is None
    for bad in ("0", "5-2", "a-b"):
        with pytest.raises(ValueError):
            parse_num_atoms(bad)


@pytest.mark.parametrize("modality", ["c", "c-ab", "d"])
def test_each_type_modality_trains_and_generates(tmp_path, modality):
    from kldm_cli.training import TrainOptions, train

    from .conftest import FIXTURES

    options = TrainOptions(
        data=FIXTURES / "perov5_small.csv", out=tmp_path / "model", task="dng", types=modality,
        preset="tiny", batch_size=8, max_steps=3, checkpoint_every=3, cache_dir=tmp_path / "c",
    )  # fmt: skip
    train(options)
    config = KLDMConfig.load(options.out / "config.json")
    assert config.types is not None and config.types.modality == modality
    result = generate(3, weights=str(options.out), out=tmp_path / "s", steps=15, method="pc")
    assert result.written == 3
    known = set(config.elements)
    for structure in result.structures:
        assert {site.specie.Z for site in structure} <= known
        assert structure.lattice.volume > 0
