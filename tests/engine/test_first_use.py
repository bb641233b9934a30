"""What a first-time user trips over in `predict` / `generate` (issue 36): overwrites, resumes
that mix settings, progress, formula sanity, file permissions."""

import os
import stat

import pytest
from typer.testing import CliRunner

from kldm_cli.cli.main import app
from kldm_cli.generate import generate
from kldm_cli.predict import predict

from .test_predict import _formula

runner = CliRunner()


def _flat(output: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(output.split())


# ---------------------------------------------------------------------- predict never overwrites
@pytest.mark.parametrize("fmt", ["cif", "extxyz"])
def test_predict_refuses_a_folder_holding_an_earlier_run(tiny_csp_model, tmp_path, fmt):
    formula, out = _formula(tiny_csp_model), tmp_path / "lfp"
    first = predict(formula, 3, weights=str(tiny_csp_model), out=out, fmt=fmt, steps=2)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = runner.invoke(
        app,
        ["predict", "--formula", formula, "-n", "2", "--weights", str(tiny_csp_model),
         "--out", str(out), "--format", fmt, "--steps", "2", "--seed", "9"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "already holds 3 structures" in _flat(result.output) and "--out" in result.output
    assert "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert len(first.structures) == 3


def test_predict_into_a_folder_of_other_files_is_fine(tiny_csp_model, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "README.txt").write_text("my notes")
    result = predict(_formula(tiny_csp_model), 1, weights=str(tiny_csp_model), out=out, steps=2)
    assert len(result.files) == 1


# ---------------------------------------------------------------------- generate --resume
def _interrupted(tiny_dng_model, out, **kwargs):
    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop

    with pytest.raises(Stop):
        generate(5, out=out, on_written=stop, **kwargs)


BASE = dict(steps=4, seed=3, batch_atoms=10, method="em")


@pytest.mark.parametrize(
    "change, named",
    [
        ({"seed": 4}, "--seed 3 there, 4 now"),
        ({"steps": 5}, "--steps 4 there, 5 now"),
        ({"method": "pc"}, "--sampler em there, pc now"),
        ({"grid": "power"}, "--grid uniform there, power now"),
        ({"batch_atoms": 20}, "--batch-atoms 10 there, 20 now"),
    ],
)
def test_resume_refuses_other_settings(tiny_dng_model, tmp_path, change, named):
    out = tmp_path / "s"
    _interrupted(tiny_dng_model, out, weights=str(tiny_dng_model), **BASE)
    kept = sorted(p.name for p in out.iterdir())
    with pytest.raises(ValueError, match="other settings") as err:
        generate(5, out=out, weights=str(tiny_dng_model), resume=True, **{**BASE, **change})
    assert named in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == kept


def test_resume_refuses_other_weights(tiny_dng_model, tmp_path):
    import shutil

    other = tmp_path / "other-model"
    shutil.copytree(tiny_dng_model, other)
    from safetensors.torch import load_file, save_file

    tensors = load_file(other / "model.safetensors")
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, other / "model.safetensors")
    out = tmp_path / "s"
    _interrupted(tiny_dng_model, out, weights=str(tiny_dng_model), **BASE)
    with pytest.raises(ValueError, match="--weights"):
        generate(5, out=out, weights=str(other), resume=True, **BASE)


@pytest.mark.parametrize("fmt", ["cif", "extxyz"])
def test_resume_on_a_finished_run_reports_the_whole_folder(tiny_dng_model, tmp_path, fmt):
    out = tmp_path / "s"
    args = ["generate", "--n", "3", "--weights", str(tiny_dng_model), "--out", str(out),
            "--steps", "4", "--sampler", "em", "--format", fmt]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    output = _flat(again.output)
    assert "0 new structures" in output and "3 kept from before" in output
    assert "/3 (the whole folder)" in output


def test_resume_with_the_same_settings_still_works(tiny_dng_model, tmp_path):
    out = tmp_path / "s"
    _interrupted(tiny_dng_model, out, weights=str(tiny_dng_model), **BASE)
    result = generate(5, out=out, weights=str(tiny_dng_model), resume=True, **BASE)
    assert result.written + result.skipped_existing == 5
    assert len(result.all_structures) == 5


# ---------------------------------------------------------------------- progress by step
def test_predict_reports_every_sampler_step_of_every_batch(tiny_csp_model, tmp_path):
    formula = _formula(tiny_csp_model)
    atoms = len(__import__("kldm_cli.data.formula").data.formula.parse_formula(formula))
    events = []
    predict(
        formula, 3, weights=str(tiny_csp_model), out=tmp_path / "o", steps=4,
        batch_atoms=2 * atoms, on_step=lambda done, total: events.append(("step", done, total)),
        on_written=lambda done, total: events.append(("batch", done, total)),
    )  # fmt: skip
    steps = [e for e in events if e[0] == "step"]
    assert steps == [("step", k, 8) for k in range(1, 9)]  # 2 batches x 4 steps
    # the first batch's steps are reported before any structure is finished
    assert events.index(("step", 4, 8)) < events.index(("batch", 2, 3))


def test_generate_reports_every_sampler_step(tiny_dng_model, tmp_path):
    seen = []
    generate(
        2, out=tmp_path / "g", weights=str(tiny_dng_model), steps=3, method="em",
        num_atoms="5", on_step=lambda done, total: seen.append((done, total)),
    )  # fmt: skip
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_cli_progress_counts_steps(tiny_csp_model, tmp_path):
    result = runner.invoke(
        app,
        ["predict", "--formula", _formula(tiny_csp_model), "-n", "2", "--weights",
         str(tiny_csp_model), "--out", str(tmp_path / "o"), "--steps", "3"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "step 3/3" in result.output and "2/2 structures" in _flat(result.output)


# ---------------------------------------------------------------------- formula sanity
@pytest.mark.parametrize(
    "formula, warned",
    [("LiFePO", True), ("LiFePO4", False), ("Fe3O4", False), ("Cu3Au", False), ("NaCl3", True)],
)
def test_charge_balance_warning(formula, warned):
    from kldm_cli.data.formula import charge_balance_warning

    assert (charge_balance_warning(formula) is not None) == warned


@pytest.mark.parametrize("formula, warned", [("GaAsO2F", False), ("InSiN3", True)])
def test_predict_warns_about_a_formula_without_charge_balance(
    tiny_csp_model, tmp_path, formula, warned
):
    """Both are Perov-5 fixture compositions the tiny model knows; InSiN3 does not balance."""
    result = runner.invoke(
        app,
        ["predict", "--formula", formula, "-n", "1", "--weights", str(tiny_csp_model),
         "--out", str(tmp_path / "a"), "--steps", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output  # a warning, never a refusal
    assert ("Warning" in result.output) == warned
    assert ("no charge-balanced" in _flat(result.output)) == warned
    assert ("not charge-balanced" in _flat(result.output)) == warned  # the table says so too


# ---------------------------------------------------------------------- permissions
@pytest.mark.parametrize("fmt", ["cif", "extxyz"])
def test_output_files_respect_the_umask(tiny_csp_model, tmp_path, fmt):
    old = os.umask(0o022)
    try:
        result = predict(
            _formula(tiny_csp_model), 1, weights=str(tiny_csp_model), out=tmp_path / "o",
            fmt=fmt, steps=2,
        )  # fmt: skip
    finally:
        os.umask(old)
    assert stat.S_IMODE(result.files[0].stat().st_mode) == 0o644


def test_model_folder_and_checkpoint_respect_the_umask(tmp_path):
    from kldm_cli.training import TrainOptions, train

    from .conftest import FIXTURES

    options = TrainOptions(
        data=FIXTURES / "perov5_small.csv", out=tmp_path / "model", task="csp", preset="tiny",
        batch_size=8, max_steps=2, checkpoint_every=2, cache_dir=tmp_path / "cache", plot=False,
    )  # fmt: skip
    old = os.umask(0o022)
    try:
        train(options)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in options.out.iterdir() if p.is_file()}
    assert any("checkpoint" in name for name in modes), modes
    assert set(modes.values()) == {0o644}, modes


# ---------------------------------------------------------------------- the README's first command
def test_readme_first_command_writes_into_an_ignored_folder():
    import re
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    readme = (root / "README.md").read_text()
    setup = readme[readme.index("## Set-up") :]
    out = re.search(r"kldm predict [^\n`]*--out (\S+)", setup).group(1)
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", f"{out.rstrip('/')}/sample_00000.cif"], cwd=root
    )
    assert ignored.returncode == 0, f"{out} is not ignored by git"
