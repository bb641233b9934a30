"""A ``.csv.gz`` that is not (or not all) gzip: one clear line from every command that reads it."""

import gzip

import pytest
from typer.testing import CliRunner

from kldm_cli.cli.main import app
from kldm_cli.data.readers import load_dataset

runner = CliRunner()

GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"


def _flat(output: str) -> str:
    return " ".join(output.split())


@pytest.fixture
def bad_files(tmp_path):
    garbage = tmp_path / "garbage.csv.gz"
    garbage.write_bytes(GZIP_HEADER + b"this is not deflate data at all" * 10)
    plain = tmp_path / "plain.csv.gz"
    plain.write_text("material_id,cif\nmp-1,data_x\n")
    truncated = tmp_path / "truncated.csv.gz"
    truncated.write_bytes(gzip.compress(b"material_id,cif\n" + b"mp-1,x\n" * 2000)[:40])
    return {"garbage": garbage, "plain": plain, "truncated": truncated}


@pytest.mark.parametrize(
    "name, message",
    [("garbage", "corrupt or truncated gzip"), ("plain", "not a gzip file"),
     ("truncated", "corrupt or truncated gzip")],
)  # fmt: skip
def test_load_dataset_names_the_gzip_problem(bad_files, tmp_path, name, message):
    with pytest.raises(ValueError, match=message):
        load_dataset(bad_files[name], cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("name", ["garbage", "plain", "truncated"])
@pytest.mark.parametrize("command", ["data stats", "train"])
def test_commands_give_one_line_not_a_traceback(bad_files, tmp_path, name, command):
    path = str(bad_files[name])
    args = (
        ["data", "stats", path, "--cache-dir", str(tmp_path / "c")]
        if command == "data stats"
        else ["train", "--data", path, "--out", str(tmp_path / "m"), "--cache-dir", str(tmp_path)]
    )
    result = runner.invoke(app, args)
    assert result.exit_code in (1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert "gzip" in _flat(result.output)
