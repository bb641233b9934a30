"""``kldm weights list`` / ``kldm weights download`` through Typer's CliRunner."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kldm_cli import hub
from kldm_cli.cli.main import app
from kldm_cli.hub import Release

from .conftest import folder_files
from .fake_hub import FakeHub

runner = CliRunner()


def test_list_shows_releases_bundled_and_metrics(
    bundled_dir: Path, make_model_folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    shutil.copytree(make_model_folder(), bundled_dir / "kldm-csp-mp20")
    result = runner.invoke(app, ["weights", "list"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines() if "│ kldm-" in line}
    assert set(lines) == set(hub.RELEASES)
    bundled = lines["kldm-csp-mp20"]
    assert " yes " in bundled and " B " in bundled
    assert " yes " not in lines["kldm-csp-perov5"]
    assert "kldm-csp-mp20: match_rate=0.5573" in result.output


def test_list_never_cuts_a_metric_at_80_columns(
    bundled_dir: Path, make_model_folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    folder = bundled_dir / "kldm-csp-mp20"
    shutil.copytree(make_model_folder(), folder)
    metrics = {f"mp20_test_long_metric_name_{i}": 0.5 + i / 100 for i in range(8)}
    card = (folder / "README.md").read_text()
    lines = "".join(f"  {key}: {value}\n" for key, value in metrics.items())
    (folder / "README.md").write_text(card.replace("kldm_metrics:\n", "kldm_metrics:\n" + lines, 1))
    result = runner.invoke(app, ["weights", "list"])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    for key, value in metrics.items():
        assert f"{key}={value:.4g}" in result.output


def test_download_offline_is_a_clear_error(closed_endpoint: str) -> None:
    result = runner.invoke(app, ["weights", "download", "kldm-dng-mp20"])
    assert result.exit_code == 1
    assert "cannot reach the Hub" in result.output and "Traceback" not in result.output


def test_download_unknown_release(closed_endpoint: str) -> None:
    result = runner.invoke(app, ["weights", "download", "nope"])
    assert result.exit_code == 1
    assert "Unknown release 'nope'" in result.output


def test_download_then_listed_as_cached(
    fake_hub: FakeHub, make_model_folder, bundled_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    sha = fake_hub.add_repo("kldm/dng", folder_files(make_model_folder(task="dng")))
    monkeypatch.setitem(
        hub.RELEASES, "kldm-dng-mp20", Release("kldm-dng-mp20", "dng", "kldm/dng", sha, "t", 20)
    )
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    result = runner.invoke(app, ["weights", "download", "kldm-dng-mp20"])
    assert result.exit_code == 0, result.output
    assert "kldm-dng-mp20: downloaded at" in result.output
    again = runner.invoke(app, ["weights", "download", "kldm-dng-mp20"])
    assert "already cached" in again.output
    listing = runner.invoke(app, ["weights", "list"])
    line = next(line for line in listing.output.splitlines() if "│ kldm-dng-mp20" in line)
    assert " yes " in line and "kldm-dng-mp20: match_rate=0.5573" in listing.output
