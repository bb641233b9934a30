"""``kldm weights push`` / ``push_model_folder`` against the fake Hub on 127.0.0.1.

The round trip is the point: what is pushed must come back through ``--weights hf://…@COMMIT``
tensor for tensor, with its card (metrics) and config (data hash); a folder that would not load
is refused before anything is sent; failures say what the Hub holds afterwards.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kldm_cli import hub
from kldm_cli.cli.main import app
from kldm_cli.config import KLDMConfig, LatticeStats, NetworkConfig
from kldm_cli.hub import HubPushError, ModelLoadError, push_model_folder
from kldm_cli.model import KLDM
from kldm_cli.sampling import load_model

from .conftest import CARD, tiny_state_dict
from .fake_hub import FakeHub

runner = CliRunner()
ELEMENTS = [3, 8, 26, 29]
DATA_SHA256 = "0123456789abcdef" * 4
TOKEN = "hf_alice_write"


def tiny_config(task: str = "csp") -> KLDMConfig:
    return KLDMConfig(
        task=task,  # type: ignore[arg-type]
        network=NetworkConfig.preset("tiny", node_input_dim=len(ELEMENTS), type_output_dim=0),
        lattice_stats=LatticeStats(
            length_loc={n: [1.5] * 3 for n in (1, 3, 5)},
            length_scale={n: [0.2] * 3 for n in (1, 3, 5)},
        ),
        elements=ELEMENTS,
        num_atoms_counts={1: 1, 3: 2, 5: 1},
        max_atoms=8,
        provenance={"train_data": "mp_20/train.csv", "train_data_sha256": DATA_SHA256},
    )


def write_run(folder: Path, seed: int = 0, card: str | None = CARD) -> Path:
    """A training run's output: the model folder plus the files that must never be pushed."""
    config = tiny_config()
    torch.manual_seed(seed)
    network = KLDM(config).network.state_dict()
    hub.write_model_folder(folder, network, config, card or "")
    if card is None:
        (folder / hub.CARD_NAME).unlink()
    (folder / "checkpoint.safetensors").write_bytes(b"optimizer state, never uploaded")
    (folder / "train_log.jsonl").write_text('{"step": 1200, "epoch": 7, "loss": 0.5}\n')
    (folder / "best").mkdir()
    return folder


@pytest.fixture
def hub_user(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """The fake Hub as HF_ENDPOINT; user alice (and org kldm-lab) logged in by HF_TOKEN."""
    fake_hub.add_user("alice", TOKEN, orgs=("kldm-lab",))
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return fake_hub


def network_tensors(reference: str) -> dict[str, torch.Tensor]:
    return load_model(reference, "csp").model.network.state_dict()


# ------------------------------------------------------------------------ round trip
def test_push_then_load_by_reference_is_identical(hub_user: FakeHub, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    result = push_model_folder(run, "hf://alice/kldm-csp")

    assert result.created and not result.unchanged and result.branch == "main"
    assert result.reference == f"hf://alice/kldm-csp@{result.commit}"
    assert any("checkpoint.safetensors" in notice for notice in result.notices)
    on_hub = hub_user.files_at("alice/kldm-csp", result.commit)
    assert sorted(on_hub) == sorted([".gitattributes", *hub.MODEL_FILES])  # no checkpoint, logs
    assert [c[4] for c in hub_user.commits] == [list(hub.MODEL_FILES)]  # one commit

    loaded = load_model(result.reference, "csp")
    expected = hub.read_safetensors(run / hub.WEIGHTS_NAME)
    pushed = loaded.model.network.state_dict()
    assert pushed.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(pushed[name], tensor, rtol=0, atol=0)
    folder = Path(loaded.source)
    assert hub.card_metrics(folder) == {"match_rate": 0.5573, "rmse": 0.0518}
    assert hub.read_card_metadata(folder)["kldm_metrics_command"].startswith("kldm evaluate")
    config = KLDMConfig.load(folder / hub.CONFIG_NAME)
    assert config.provenance["train_data_sha256"] == DATA_SHA256
    assert config == KLDMConfig.load(run / hub.CONFIG_NAME)


def test_push_again_and_a_new_version(hub_user: FakeHub, tmp_path: Path) -> None:
    first = push_model_folder(write_run(tmp_path / "v1"), "hf://alice/m")
    again = push_model_folder(tmp_path / "v1", "hf://alice/m")
    assert again.unchanged and again.commit == first.commit and not again.created
    assert len(hub_user.commits) == 1

    second = push_model_folder(write_run(tmp_path / "v2", seed=1), "hf://alice/m", message="v2")
    assert second.commit != first.commit and hub_user.commits[-1][3] == "v2"
    old, new = network_tensors(first.reference), network_tensors(second.reference)
    v1 = hub.read_safetensors(tmp_path / "v1" / hub.WEIGHTS_NAME)
    assert all(torch.equal(old[name], v1[name]) for name in v1)  # the old pin still holds v1
    assert not all(torch.equal(old[name], new[name]) for name in v1)


def test_push_to_a_branch_and_an_org(hub_user: FakeHub, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    main = push_model_folder(run, "hf://kldm-lab/shared")
    dev = push_model_folder(
        write_run(tmp_path / "dev", seed=2), "hf://kldm-lab/shared", revision="dev"
    )
    assert dev.branch == "dev" and hub_user.repos["kldm-lab/shared"].branches["dev"] == dev.commit
    assert hub_user.repos["kldm-lab/shared"].branches["main"] == main.commit
    network_tensors(dev.reference)


def test_private_repository_needs_the_token_to_load(
    hub_user: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = push_model_folder(write_run(tmp_path / "run"), "hf://alice/secret", private=True)
    assert hub_user.repos["alice/secret"].private
    network_tensors(result.reference)
    shutil.rmtree(hub.hub_cache_dir())
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ModelLoadError, match="no such model repository"):
        load_model(result.reference, "csp")


def test_missing_card_is_written_from_the_run(hub_user: FakeHub, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", card=None)
    result = push_model_folder(run, "hf://alice/nocard")
    assert (run / hub.CARD_NAME).is_file()
    assert any("README.md: was missing" in notice for notice in result.notices)
    card = hub_user.files_at("alice/nocard")[hub.CARD_NAME].decode()
    assert card == (run / hub.CARD_NAME).read_text()
    assert "task: csp" in card and DATA_SHA256[:16] in card and "- steps: 1200" in card


def test_token_from_the_login_cache(hub_user: FakeHub, tmp_path: Path, hf_env: Path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    hf_env.mkdir(parents=True, exist_ok=True)
    (hf_env / "token").write_text(TOKEN + "\n")
    push_model_folder(write_run(tmp_path / "run"), "hf://alice/cached-login")
    assert "alice/cached-login" in hub_user.repos


# ------------------------------------------------------------------------ refused before upload
def _refused(fake_hub: FakeHub, folder: Path, match: str) -> None:
    with pytest.raises(ModelLoadError, match=match):
        push_model_folder(folder, "hf://alice/refused")
    assert fake_hub.requests == [] and "alice/refused" not in fake_hub.repos


def test_truncated_weights_are_refused_before_upload(hub_user: FakeHub, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    weights = run / hub.WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-100])
    _refused(hub_user, run, r"model\.safetensors: truncated")


def test_mismatched_weights_are_refused_before_upload(hub_user: FakeHub, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    hub.write_model_folder(run, tiny_state_dict(), tiny_config(), CARD)  # a Linear(3, 2)
    _refused(hub_user, run, r"weights do not fit the model built from its config\.json")


def test_non_finite_weights_and_a_wrong_card_are_refused(hub_user: FakeHub, tmp_path: Path):
    run = write_run(tmp_path / "run")
    state = hub.read_safetensors(run / hub.WEIGHTS_NAME)
    name = sorted(state)[0]
    state[name] = torch.full_like(state[name], float("nan"))
    hub.write_model_folder(run, state, tiny_config(), CARD)
    _refused(hub_user, run, f"NaN or infinite values in {name}")
    write_run(tmp_path / "dng-card", card=CARD.replace("task: csp", "task: dng"))
    _refused(hub_user, tmp_path / "dng-card", "the card says task 'dng', config.json 'csp'")


def test_missing_config_and_bad_destination(hub_user: FakeHub, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    (run / hub.CONFIG_NAME).unlink()
    _refused(hub_user, run, r"config\.json: missing")
    with pytest.raises(ValueError, match="a branch goes in --revision"):
        push_model_folder(run, "hf://alice/m@main")
    with pytest.raises(ValueError, match="expected hf://OWNER/REPO"):
        push_model_folder(run, "hf://alice")
    assert hub_user.requests == []


# ------------------------------------------------------------------------ auth and network
def test_no_token(fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    with pytest.raises(HubPushError, match="no Hugging Face token; set HF_TOKEN or run `hf auth"):
        push_model_folder(write_run(tmp_path / "run"), "hf://alice/m")
    assert fake_hub.requests == []


def test_no_write_access(hub_user: FakeHub, tmp_path: Path, make_model_folder) -> None:
    run = write_run(tmp_path / "run")
    with pytest.raises(HubPushError, match=r"may not write there \(403.*nothing was uploaded"):
        push_model_folder(run, "hf://bob/new")  # creating in another user's namespace
    assert "bob/new" not in hub_user.repos

    theirs = hub_user.add_repo("bob/existing", {"config.json": b"{}"})
    with pytest.raises(HubPushError, match=r"403.*nothing was committed: branch main is unch"):
        push_model_folder(run, "hf://bob/existing")
    assert hub_user.repos["bob/existing"].sha == theirs and hub_user.commits == []
    with pytest.raises(HubPushError) as info:
        push_model_folder(run, "hf://bob/existing")
    assert "run the same command again" not in str(info.value)  # retrying cannot help


def test_invalid_token(hub_user: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_revoked")
    with pytest.raises(HubPushError, match=r"rejected the token \(401"):
        push_model_folder(write_run(tmp_path / "run"), "hf://alice/m")


def test_unreachable_and_offline(
    closed_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    run = write_run(tmp_path / "run")
    with pytest.raises(HubPushError, match="cannot reach the Hub at .*; nothing was uploaded"):
        push_model_folder(run, "hf://alice/m")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubPushError, match="HF_HUB_OFFLINE is set, so nothing was uploaded"):
        push_model_folder(run, "hf://alice/m")


@pytest.mark.parametrize("fault", [500, "drop"])
def test_failed_commit_is_reported_with_what_the_hub_holds(
    hub_user: FakeHub, tmp_path: Path, fault: int | str
) -> None:
    hub_user.commit_fault = fault
    reason = "failed \\(500" if fault == 500 else "cannot reach the Hub"
    with pytest.raises(HubPushError, match=f"upload failed: .*{reason}") as info:
        push_model_folder(write_run(tmp_path / "run"), "hf://alice/half")
    repo = hub_user.repos["alice/half"]
    assert sorted(repo.files) == [".gitattributes"]  # created, nothing committed
    message = str(info.value)
    assert f"nothing was committed: branch main is unchanged at {repo.sha[:12]}" in message
    assert "the empty repository alice/half created by this push is left in place" in message
    assert message.endswith("; run the same command again")
    assert "\n" not in message


# ------------------------------------------------------------------------ CLI
def test_cli_push_then_predict_with_the_printed_reference(hub_user: FakeHub, tmp_path: Path):
    run = write_run(tmp_path / "run")
    result = runner.invoke(app, ["weights", "push", str(run), "hf://alice/cli-model"])
    assert result.exit_code == 0, result.output
    reference = result.stdout.strip().splitlines()[-1]
    assert reference == f"hf://alice/cli-model@{hub_user.repos['alice/cli-model'].sha}"
    assert "created hf://alice/cli-model" in result.stderr
    assert "not uploaded (not part of a model folder): best/, checkpoint" in result.stderr

    out = tmp_path / "predictions"
    args = ["predict", "--formula", "Li2O", "-n", "2", "--steps", "3", "--weights", reference]
    predicted = runner.invoke(app, [*args, "--out", str(out)])
    assert predicted.exit_code == 0, predicted.output
    assert len(list(out.glob("*.cif"))) == 2


def test_cli_errors_are_one_line(fake_hub: FakeHub, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps long lines at the terminal's width
    run = write_run(tmp_path / "run")
    result = runner.invoke(app, ["weights", "push", str(run), "hf://alice/m"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: hf://alice/m: no Hugging Face token")
    assert result.output.count("\n") == 1
    assert "Traceback" not in result.output
    (run / hub.WEIGHTS_NAME).write_bytes(b"not safetensors")
    refused = runner.invoke(app, ["weights", "push", str(run), "hf://alice/m"])
    assert refused.exit_code == 1 and "model.safetensors: truncated" in refused.output
    assert refused.output.count("\n") == 1 and fake_hub.requests == []
