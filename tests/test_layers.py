"""Import direction between the layers (docs/architecture.md): the diffusion processes and the
network never import each other; they meet only in :mod:`kldm_cli.model`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "kldm_cli"

#: (package, packages it must never import)
FORBIDDEN = [("diffusion", ("nn",)), ("nn", ("diffusion",))]


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module a file imports (relative imports resolved)."""
    package = ["kldm_cli", *path.relative_to(PACKAGE).parent.parts]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _violations(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in sorted(imported_modules(path)):
            if any(name == f"kldm_cli.{f}" or name.startswith(f"kldm_cli.{f}.") for f in forbidden):
                found.append(f"{path.relative_to(PACKAGE)} imports {name}")
    return found


@pytest.mark.parametrize(("layer", "forbidden"), FORBIDDEN, ids=["diffusion", "nn"])
def test_source_never_imports_the_other_layer(layer, forbidden):
    assert _violations(layer, forbidden) == []


def test_the_import_check_sees_relative_and_absolute_imports(tmp_path, monkeypatch):
    """The checker itself: it flags both spellings of a forbidden import."""
    fake = tmp_path / "kldm_cli"
    (fake / "diffusion").mkdir(parents=True)
    (fake / "diffusion" / "a.py").write_text("from ..nn import CSPNet\n")
    (fake / "diffusion" / "b.py").write_text("import kldm_cli.nn.cspnet\n")
    (fake / "diffusion" / "c.py").write_text("from kldm_cli import config\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert _violations("diffusion", ("nn",)) == [
        "diffusion/a.py imports kldm_cli.nn",
        "diffusion/a.py imports kldm_cli.nn.CSPNet",
        "diffusion/b.py imports kldm_cli.nn.cspnet",
    ]


@pytest.mark.parametrize(("layer", "forbidden"), FORBIDDEN, ids=["diffusion", "nn"])
def test_importing_a_layer_loads_nothing_of_the_other(layer, forbidden):
    """In a fresh interpreter, importing one layer (with every module in it) loads no module of
    the other, not even indirectly."""
    modules = [f"kldm_cli.{layer}"] + [
        f"kldm_cli.{layer}.{path.stem}"
        for path in sorted((PACKAGE / layer).glob("*.py"))
        if path.stem != "__init__"
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"heads = {[['kldm_cli', f] for f in forbidden]!r}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[:2] in heads)\n"
        "print(' '.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == ""


#: The rows of ``evaluation/`` (docs/architecture.md): a module may import its own row and the
#: rows above it, never a row below.
EVALUATION_ROWS = {
    "relax": 0, "records": 0, "candidate_log": 0,
    "metrics": 1,
    "search": 2, "ranked": 2,
    "csp_run": 3, "dng_run": 3,
    "combine": 4, "compare": 4, "breakdown": 4,
}  # fmt: skip


def _evaluation_row(name: str) -> int | None:
    """The row of ``kldm_cli.evaluation.<part>...`` (None for anything else)."""
    parts = name.split(".")
    if parts[:2] != ["kldm_cli", "evaluation"] or len(parts) < 3:
        return None
    return EVALUATION_ROWS[parts[2]]


def test_evaluation_imports_only_its_own_row_and_above():
    package = PACKAGE / "evaluation"
    modules = {p.stem for p in package.glob("*.py")} - {"__init__"}
    modules |= {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    assert modules == set(EVALUATION_ROWS)  # every module has a row
    upward = []
    for path in sorted(package.rglob("*.py")):
        part = path.relative_to(package).parts[0].removesuffix(".py")
        if part == "__init__":
            continue
        for name in sorted(imported_modules(path)):
            row = _evaluation_row(name)
            if row is not None and row > EVALUATION_ROWS[part]:
                upward.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert upward == []
    # the check can fail: metrics importing a run is caught
    assert _evaluation_row("kldm_cli.evaluation.csp_run.evaluate_csp") > EVALUATION_ROWS["metrics"]
