"""Model folders: round trip, and a clear ModelLoadError naming the file for every defect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kldm_cli import hub
from kldm_cli.config import CONFIG_FORMAT_VERSION, KLDMConfig
from kldm_cli.hub import ModelLoadError, load_state_dict_strict, read_model_folder

from .conftest import tiny_state_dict


def test_round_trip(make_model_folder) -> None:
    folder = make_model_folder(task="dng")
    config, state_dict = read_model_folder(folder)
    assert config == KLDMConfig(task="dng")
    expected = tiny_state_dict()
    assert state_dict.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(state_dict[name], tensor, rtol=0, atol=0)
    assert sorted(p.name for p in folder.iterdir()) == sorted(hub.MODEL_FILES)  # no temp files
    assert hub.card_metrics(folder) == {"match_rate": 0.5573, "rmse": 0.0518}


def test_write_saves_tied_and_non_contiguous_tensors(tmp_path: Path) -> None:
    weight = torch.arange(6.0).reshape(2, 3)
    state = {"a": weight, "tied": weight, "transposed": weight.t()}
    folder = hub.write_model_folder(tmp_path / "m", state, KLDMConfig(), "# card")
    _, loaded = read_model_folder(folder)
    torch.testing.assert_close(loaded["transposed"], weight.t(), rtol=0, atol=0)
    torch.testing.assert_close(loaded["tied"], weight, rtol=0, atol=0)


def test_write_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        hub.write_model_folder(tmp_path / "m", {}, KLDMConfig(), "# card")
    with pytest.raises(ValueError, match="not tensors"):
        hub.write_model_folder(tmp_path / "m", {"w": [1.0]}, KLDMConfig(), "# card")  # type: ignore[dict-item]


@pytest.mark.parametrize("name", [hub.WEIGHTS_NAME, hub.CONFIG_NAME])
def test_missing_file_is_named(make_model_folder, name: str) -> None:
    folder = make_model_folder()
    (folder / name).unlink()
    with pytest.raises(ModelLoadError, match=f"{name}: missing"):
        read_model_folder(folder)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a model folder"):
        read_model_folder(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) - 7], "truncated: its tensors need"),
        (lambda data: data[:5], "truncated or not a safetensors file"),
        (lambda data: b"\xff" * 8 + data[8:], "truncated or not a safetensors file"),
        (lambda data: data[:8] + b"{garbage" + data[16:], "corrupt safetensors header"),
        (lambda data: b"", "truncated or not a safetensors file"),
    ],
    ids=["truncated-data", "truncated-prefix", "bad-length", "bad-json", "empty"],
)
def test_damaged_weights_are_named(make_model_folder, damage, message: str) -> None:
    folder = make_model_folder()
    weights = folder / hub.WEIGHTS_NAME
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(ModelLoadError, match=message) as info:
        read_model_folder(folder)
    assert str(weights) in str(info.value)


def test_config_not_json(make_model_folder) -> None:
    folder = make_model_folder()
    (folder / hub.CONFIG_NAME).write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON") as info:
        read_model_folder(folder)
    assert str(folder / hub.CONFIG_NAME) in str(info.value)


@pytest.mark.parametrize("content", ["[1, 2]", '{"task": "csp"}'], ids=["list", "incomplete"])
def test_config_not_a_kldm_config(make_model_folder, content: str) -> None:
    folder = make_model_folder()
    (folder / hub.CONFIG_NAME).write_text(content)
    with pytest.raises(ModelLoadError, match=hub.CONFIG_NAME):
        read_model_folder(folder)


def test_config_from_newer_kldm(make_model_folder) -> None:
    folder = make_model_folder()
    path = folder / hub.CONFIG_NAME
    data = json.loads(path.read_text())
    data["format_version"] = CONFIG_FORMAT_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="newer than this kldm") as info:
        read_model_folder(folder)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------ strict loading
def _mutated(change: str) -> dict[str, torch.Tensor]:
    state = tiny_state_dict(seed=1)
    if change == "missing":
        del state["bias"]
    elif change == "unexpected":
        state["extra.weight"] = torch.zeros(1)
    elif change == "shape":
        state["weight"] = torch.zeros(2, 4)
    return state


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing", r"1 missing: bias"),
        ("unexpected", r"1 unexpected: extra\.weight"),
        ("shape", r"1 with the wrong shape: weight \[2, 4\] \(model expects \[2, 3\]\)"),
    ],
)
def test_strict_load_refuses_partial_loads(change: str, message: str) -> None:
    module = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(ModelLoadError, match=message) as info:
        load_state_dict_strict(module, _mutated(change), "some/model.safetensors")
    assert "some/model.safetensors" in str(info.value)
    for name, tensor in module.state_dict().items():  # nothing was loaded
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0)


def test_strict_load_lists_only_the_first_names() -> None:
    module = torch.nn.Sequential(*[torch.nn.Linear(1, 1) for _ in range(4)])
    with pytest.raises(ModelLoadError, match=r"8 missing: 0\.weight, .*, 2\.weight, …"):
        load_state_dict_strict(module, {"other": torch.zeros(1)}, "src")


def test_strict_load_loads_everything() -> None:
    module = torch.nn.Linear(3, 2)
    state = tiny_state_dict(seed=2)
    load_state_dict_strict(module, state, "src")
    for name, tensor in module.state_dict().items():
        torch.testing.assert_close(tensor, state[name], rtol=0, atol=0)


# ------------------------------------------------------------------------ model cards
def test_card_without_front_matter_has_no_metrics(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# just a title\n")
    assert hub.card_metrics(tmp_path) == {}
    assert hub.card_metrics(tmp_path / "absent") == {}


def test_card_with_broken_yaml(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("---\nkldm_metrics: [unclosed\n---\n")
    with pytest.raises(ModelLoadError, match="README.md"):
        hub.read_card_metadata(tmp_path)
