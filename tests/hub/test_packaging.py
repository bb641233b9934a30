"""weights/ is shipped inside the package, and every subpackage is listed in pyproject.toml."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import CARD, tiny_state_dict

ROOT = Path(__file__).resolve().parents[2]

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


def _setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_subpackage_is_listed_in_pyproject() -> None:
    config = _setuptools_config()
    found = {
        ".".join(path.parent.relative_to(ROOT / "src").parts)
        for path in (ROOT / "src" / "kldm_cli").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    missing = sorted(found - set(config["packages"]))
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
    assert config["package-dir"]["kldm_cli.bundled_weights"] == "weights"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="needs setuptools")
def test_wheel_ships_bundled_weights(tmp_path: Path) -> None:
    """Build a wheel (nothing is installed anywhere) and find a bundled model from it."""
    from kldm_cli.config import KLDMConfig
    from kldm_cli.hub import write_model_folder

    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", source / "src", ignore=ignore)
    shutil.copytree(ROOT / "weights", source / "weights", ignore=ignore)
    write_model_folder(source / "weights" / "kldm-csp-mp20", tiny_state_dict(), KLDMConfig(), CARD)

    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(installed)
        shipped = [Path(name) for name in archive.namelist() if "/bundled_weights/" in name]
    # a model folder ships its three files; evaluation records stay in the repository
    in_folders = {path.name for path in shipped if path.parent.name != "bundled_weights"}
    assert in_folders == {"model.safetensors", "config.json", "README.md"}, in_folders

    probe = (
        "import kldm_cli, kldm_cli.hub as hub;"
        "print(kldm_cli.__file__);"
        "print(hub.bundled_release_dir('kldm-csp-mp20'));"
        "print(hub.resolve_weights(None, 'csp').origin)"
    )
    env = {**os.environ, "PYTHONPATH": str(installed), "HF_HUB_OFFLINE": "1"}
    env["HF_HOME"] = str(tmp_path / "hf_home")
    run = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120,
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    package_file, bundled, origin = run.stdout.split()
    assert Path(package_file).is_relative_to(installed)
    assert Path(bundled) == installed / "kldm_cli" / "bundled_weights" / "kldm-csp-mp20"
    assert origin == "bundled"
