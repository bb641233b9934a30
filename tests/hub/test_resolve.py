"""resolve_weights against a fake Hub on 127.0.0.1: download, cache, faults, bundled fallback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from kldm_cli import hub
from kldm_cli.hub import HubUnreachableError, ModelLoadError, Release, resolve_weights

from .conftest import folder_files, tiny_state_dict
from .fake_hub import FakeHub


def _use(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)


def _file_requests(fake_hub: FakeHub) -> int:
    return fake_hub.count(contains="/resolve/")


def test_hf_download_is_cached_and_loads(
    fake_hub: FakeHub, make_model_folder, hf_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub.add_repo("owner/repo", folder_files(make_model_folder()))
    _use(fake_hub, monkeypatch)

    first = resolve_weights("hf://owner/repo", "csp")
    assert first.origin == "hub" and first.notice is None
    assert first.path.is_relative_to(hf_env / "hub")
    config, state_dict = hub.read_model_folder(first.path)
    assert config.task == "csp"
    torch.testing.assert_close(state_dict["weight"], tiny_state_dict()["weight"], rtol=0, atol=0)
    downloads = _file_requests(fake_hub)
    assert downloads > 0

    again = resolve_weights("hf://owner/repo", "csp")  # asks the Hub for "main", fetches nothing
    assert again.path == first.path
    assert _file_requests(fake_hub) == downloads

    fake_hub.stop()
    unreachable = resolve_weights("hf://owner/repo", "csp")
    assert (unreachable.origin, unreachable.path) == ("cache", first.path)
    assert "Hub unreachable" in (unreachable.notice or "")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = resolve_weights("hf://owner/repo", "csp")
    assert (offline.origin, offline.path, offline.notice) == ("cache", first.path, None)


def test_hf_cache_dir_follows_hf_hub_cache(
    fake_hub: FakeHub, make_model_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub.add_repo("owner/repo", folder_files(make_model_folder()))
    _use(fake_hub, monkeypatch)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert resolve_weights("hf://owner/repo", "csp").path.is_relative_to(tmp_path / "elsewhere")


def test_pinned_commit_is_served_from_cache_without_requests(
    fake_hub: FakeHub, make_model_folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = fake_hub.add_repo("owner/repo", folder_files(make_model_folder()))
    _use(fake_hub, monkeypatch)
    first = resolve_weights(f"hf://owner/repo@{sha}", "csp")
    assert first.origin == "hub" and first.path.name == sha
    requests = len(fake_hub.requests)
    second = resolve_weights(f"hf://owner/repo@{sha}", "csp")
    assert (second.origin, second.path) == ("cache", first.path)
    assert len(fake_hub.requests) == requests


def test_hub_serving_a_truncated_file(
    fake_hub: FakeHub, make_model_folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = folder_files(make_model_folder())
    files[hub.WEIGHTS_NAME] = files[hub.WEIGHTS_NAME][:-10]
    fake_hub.add_repo("owner/repo", files)
    _use(fake_hub, monkeypatch)
    resolved = resolve_weights("hf://owner/repo", "csp")
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: truncated"):
        hub.read_model_folder(resolved.path)


def test_download_cut_short_is_an_error(
    fake_hub: FakeHub, make_model_folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = folder_files(make_model_folder())
    fake_hub.add_repo("owner/repo", files, short_reads={hub.WEIGHTS_NAME: 20})
    _use(fake_hub, monkeypatch)
    with pytest.raises(ModelLoadError, match="hf://owner/repo: download failed") as info:
        resolve_weights("hf://owner/repo", "csp")
    assert not isinstance(info.value, HubUnreachableError)
    assert hub.cached_snapshot("owner/repo") is None  # nothing half-written is served later


def test_file_missing_on_the_hub(
    fake_hub: FakeHub, make_model_folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = folder_files(make_model_folder())
    fake_hub.add_repo("owner/listed", files, missing={hub.CONFIG_NAME})
    del files[hub.CONFIG_NAME]
    fake_hub.add_repo("owner/absent", files)
    _use(fake_hub, monkeypatch)
    with pytest.raises(ModelLoadError, match=r"config\.json is listed but not found"):
        resolve_weights("hf://owner/listed", "csp")
    resolved = resolve_weights("hf://owner/absent", "csp")
    with pytest.raises(ModelLoadError, match=r"config\.json: missing"):
        hub.read_model_folder(resolved.path)


def test_unknown_repo_and_revision(fake_hub: FakeHub, make_model_folder, monkeypatch) -> None:
    fake_hub.add_repo("owner/repo", folder_files(make_model_folder()))
    _use(fake_hub, monkeypatch)
    with pytest.raises(ModelLoadError, match="no such model repository"):
        resolve_weights("hf://owner/nothing", "csp")
    with pytest.raises(ModelLoadError, match="revision 'v9' not found"):
        resolve_weights("hf://owner/repo@v9", "csp")


def test_hf_unreachable_and_not_cached(closed_endpoint: str) -> None:
    with pytest.raises(HubUnreachableError, match="cannot reach the Hub") as info:
        resolve_weights("hf://owner/repo", "csp")
    assert closed_endpoint in str(info.value) and "not in the cache" in str(info.value)


@pytest.mark.parametrize("spec", ["hf://", "hf://repo", "hf://a/b@", "hf://a/b/c", "hf://a/b@x y"])
def test_invalid_hf_spec(spec: str) -> None:
    with pytest.raises(ValueError, match="expected hf://OWNER/REPO"):
        resolve_weights(spec, "csp")


# ------------------------------------------------------------------------ releases
def _bundle(make_model_folder, bundled_dir: Path, name: str, task: str = "csp") -> Path:
    return Path(shutil.copytree(make_model_folder(name, task=task), bundled_dir / name))


def test_release_falls_back_to_bundled_copy(
    closed_endpoint: str, bundled_dir: Path, make_model_folder
) -> None:
    bundled = _bundle(make_model_folder, bundled_dir, "kldm-csp-mp20")
    resolved = resolve_weights("kldm-csp-mp20", "csp")
    assert (resolved.origin, resolved.path) == ("bundled", bundled)
    assert resolved.notice == f"Hub unreachable; using bundled kldm-csp-mp20 ({bundled})"
    hub.read_model_folder(resolved.path)


def test_default_release_per_task(
    closed_endpoint: str, bundled_dir: Path, make_model_folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    _bundle(make_model_folder, bundled_dir, "kldm-csp-mp20")
    dng = _bundle(make_model_folder, bundled_dir, "kldm-dng-mp20", task="dng")
    assert resolve_weights(None, "dng").path == dng
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = resolve_weights(None, "csp")
    assert offline.origin == "bundled"
    assert offline.notice is not None and offline.notice.startswith("HF_HUB_OFFLINE is set")


def test_release_without_hub_or_bundled_copy(closed_endpoint: str, bundled_dir: Path) -> None:
    with pytest.raises(HubUnreachableError, match="kldm-csp-perov5.*no bundled copy"):
        resolve_weights("kldm-csp-perov5", "csp")


def test_release_downloads_then_stays_in_cache(
    fake_hub: FakeHub,
    make_model_folder,
    bundled_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sha = fake_hub.add_repo("kldm/csp", folder_files(make_model_folder()))
    release = Release("kldm-csp-mp20", "csp", "kldm/csp", sha, "test", 20)
    monkeypatch.setitem(hub.RELEASES, "kldm-csp-mp20", release)
    _use(fake_hub, monkeypatch)
    first = resolve_weights(None, "csp")
    assert first.origin == "hub" and first.notice is None
    requests = len(fake_hub.requests)
    fake_hub.stop()
    cached = resolve_weights("kldm-csp-mp20", "csp")
    assert (cached.origin, cached.path, cached.notice) == ("cache", first.path, None)
    assert len(fake_hub.requests) == requests


def test_release_missing_on_the_hub_uses_bundled_copy(
    fake_hub: FakeHub, make_model_folder, bundled_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundled = _bundle(make_model_folder, bundled_dir, "kldm-csp-mp20")
    _use(fake_hub, monkeypatch)  # the release's repository does not exist there
    resolved = resolve_weights("kldm-csp-mp20", "csp")
    assert (resolved.origin, resolved.path) == ("bundled", bundled)
    assert "no such model repository" in (resolved.notice or "")


# ------------------------------------------------------------------------ user mistakes
def test_unknown_release_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="known releases: kldm-csp-mp20, kldm-dng-mp20"):
        resolve_weights("kldm-csp-mp21", "csp")


def test_wrong_task_for_release() -> None:
    with pytest.raises(ValueError, match="kldm-dng-mp20 is a DNG model; CSP needs one of"):
        resolve_weights("kldm-dng-mp20", "csp")
    with pytest.raises(ValueError, match="Unknown task 'xyz'"):
        resolve_weights(None, "xyz")


def test_local_folder(make_model_folder, tmp_path: Path) -> None:
    folder = make_model_folder()
    assert resolve_weights(str(folder), "csp") == hub.ResolvedWeights(folder, "local", None)
    with pytest.raises(ValueError, match="is a file; pass the model folder"):
        resolve_weights(str(folder / hub.WEIGHTS_NAME), "csp")
    with pytest.raises(ValueError, match="neither an existing model folder nor a known release"):
        resolve_weights(str(tmp_path / "missing"), "csp")


def test_bundled_weights_dir_of_this_checkout() -> None:
    folder = hub.bundled_weights_dir()
    assert (folder / "README.md").is_file(), folder


@pytest.mark.parametrize("name", sorted(hub.releases.RELEASES))
def test_release_max_atoms_is_what_its_bundled_model_was_trained_on(name: str) -> None:
    import json

    config = Path(__file__).parents[2] / "weights" / name / "config.json"
    if not config.exists():
        pytest.skip(f"{name} is not bundled")
    release = hub.releases.RELEASES[name]
    assert release.max_atoms == json.loads(config.read_text())["max_atoms"]
    assert release.task == json.loads(config.read_text())["task"]
