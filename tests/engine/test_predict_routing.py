"""`kldm predict` without --weights routes each cell (formula × Z) to the smallest release that
covers it; with --weights it never does.

Two fake releases are registered: ``kldm-csp-mp20`` (cells up to 20 atoms) and
``kldm-csp-mpts52`` (up to 52), both copies of the tiny CSP model with ``max_atoms`` changed, served
as bundled copies with the Hub offline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pymatgen.core import Structure
from typer.testing import CliRunner

from kldm_cli import hub
from kldm_cli.cli.main import app
from kldm_cli.data.writers import parse_cif_metadata
from kldm_cli.predict import predict, route_formula

from .conftest import FIXTURES

runner = CliRunner()
SMALL, LARGE = "kldm-csp-mp20", "kldm-csp-mpts52"


def _formula() -> str:
    """A 5-atom composition the tiny model was trained on (first Perov-5 fixture row)."""
    from kldm_cli.data.readers import load_dataset

    record = load_dataset(FIXTURES / "perov5_small.csv").records[0]
    return record.to_structure().composition.formula.replace(" ", "")


def _atoms(formula: str) -> list[int]:
    from kldm_cli.data.formula import parse_formula

    return parse_formula(formula)


@pytest.fixture
def two_releases(tiny_csp_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Bundled folder with both fake releases; the registry knows them, the Hub is offline."""
    bundled = tmp_path / "bundled"
    for name, max_atoms in ((SMALL, 20), (LARGE, 52)):
        folder = bundled / name
        shutil.copytree(tiny_csp_model, folder)
        config = json.loads((folder / "config.json").read_text())
        config["max_atoms"] = max_atoms
        (folder / "config.json").write_text(json.dumps(config))
    releases = {
        SMALL: hub.Release(SMALL, "csp", "kldm-test/small", "v0", "test", max_atoms=20),
        LARGE: hub.Release(LARGE, "csp", "kldm-test/large", "v0", "test", max_atoms=52),
    }
    monkeypatch.setattr(hub.releases, "RELEASES", releases)
    monkeypatch.setattr(hub.releases, "SIZE_ROUTED_RELEASES", {"csp": (LARGE, SMALL)})  # any order
    monkeypatch.setattr(hub.releases, "DEFAULT_RELEASES", {"csp": SMALL, "dng": SMALL})
    monkeypatch.setattr(hub.releases, "bundled_weights_dir", lambda: bundled)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return bundled


def _routes(formula_units, n=4):
    formula = _formula()
    routes = route_formula(formula, _atoms(formula), n, formula_units, weights=None)
    return {route.release: sorted({len(c) // 5 for c in route.compositions}) for route in routes}


def test_each_cell_goes_to_the_smallest_release_that_fits(two_releases):
    assert _routes(1) == {SMALL: [1]}
    assert _routes(4) == {SMALL: [4]}  # 20 atoms: the 20-atom release still covers it
    assert _routes(5) == {LARGE: [5]}  # 25 atoms
    assert _routes(10) == {LARGE: [10]}  # 50 atoms


def test_auto_tries_every_z_up_to_the_largest_release_each_routed(two_releases):
    assert _routes("auto", n=10) == {SMALL: [1, 2, 3, 4], LARGE: [5, 6, 7, 8, 9, 10]}


def test_cli_says_which_model_each_composition_used(two_releases, tmp_path):
    formula, out = _formula(), tmp_path / "out"
    result = runner.invoke(
        app,
        ["predict", "--formula", formula, "-n", "2", "--formula-units", "5", "--steps", "2",
         "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"Model: {formula} × 5 (25 atoms), 2 sample(s): {LARGE}" in " ".join(
        result.output.split()
    )
    for path in sorted(out.glob("*.cif")):
        assert len(Structure.from_file(path)) == 25
        assert parse_cif_metadata(path.read_text())["model"] == str(two_releases / LARGE)


def test_auto_samples_with_both_models(two_releases, tmp_path):
    result = predict(_formula(), 10, out=tmp_path / "out", steps=2, formula_units="auto", seed=1)
    models = [parse_cif_metadata(p.read_text())["model"] for p in result.files]
    sizes = [len(s) for s in result.structures]
    assert sizes == [5 * z for z in range(1, 11)]  # sample i has Z = i + 1, in index order
    assert models == [str(two_releases / (SMALL if n <= 20 else LARGE)) for n in sizes]
    assert len(result.routes) == 2
    assert [p.name for p in result.files] == [f"sample_{i:05d}.cif" for i in range(10)]


def test_a_cell_beyond_every_release_is_refused_with_the_largest_z(two_releases, tmp_path):
    result = runner.invoke(
        app,
        ["predict", "--formula", _formula(), "-n", "2", "--formula-units", "11", "--steps", "2",
         "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code != 0
    text = " ".join(result.output.split())
    assert "55 atoms per cell" in text
    assert "at most 52 atoms" in text
    assert "the largest Z that fits is 10 (--formula-units 10)" in text
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_explicit_weights_are_never_rerouted(two_releases, tiny_csp_model, tmp_path):
    formula = _formula()
    routes = route_formula(formula, _atoms(formula), 2, 1, weights=str(tiny_csp_model))
    assert [(r.release, r.loaded.source) for r in routes] == [(None, str(tiny_csp_model))]
    # a cell the given model cannot take is refused for that model, not sent to a larger one
    with pytest.raises(ValueError, match="the model was trained on cells of at most 5 atoms"):
        route_formula(formula, _atoms(formula), 2, 5, weights=str(tiny_csp_model))
    # auto stays within the given model's range
    routes = route_formula(formula, _atoms(formula), 3, "auto", weights=str(tiny_csp_model))
    assert {len(c) for c in routes[0].compositions} == {5}


def test_a_search_ranks_the_candidates_of_every_model(two_releases, tmp_path, monkeypatch):
    """With --candidates the routing is the same; the search gets every model's candidates in
    sample order (the search itself is faked: only the sampling side is tested here)."""
    from types import SimpleNamespace

    import kldm_cli.evaluation.relax
    import kldm_cli.evaluation.search
    from kldm_cli.evaluation.search import SearchSettings

    seen = {}

    def fake_search(candidates, settings, **_):
        seen["sizes"] = [len(c) for c in candidates]
        return SimpleNamespace(ranking=[], candidates=[])

    monkeypatch.setattr(kldm_cli.evaluation.relax, "load_chgnet", lambda device: "fake CHGNet")
    monkeypatch.setattr(kldm_cli.evaluation.search, "search_structures", fake_search)
    out = tmp_path / "out"
    result = predict(
        _formula(), 2, out=out, steps=2, formula_units="auto",
        search=SearchSettings(candidates=10, steps=2),
    )  # fmt: skip
    assert seen["sizes"] == [5 * z for z in range(1, 11)]
    assert len(result.routes) == 2
    assert len(list((out / "candidates").glob("*.cif"))) == 10
