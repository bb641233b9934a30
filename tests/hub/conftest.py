"""Fixtures: every Hugging Face path points into tmp_path, and a fake Hub on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants

from kldm_cli import hub
from kldm_cli.config import KLDMConfig

from .fake_hub import FakeHub

CARD = """---
library_name: kldm
task: csp
kldm_metrics:
  match_rate: 0.5573
  rmse: 0.0518
kldm_metrics_command: kldm evaluate csp --weights kldm-csp-mp20
---
# Test model
"""


def tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {name: t.detach().clone() for name, t in torch.nn.Linear(3, 2).state_dict().items()}


@pytest.fixture(autouse=True)
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HOME in tmp_path; no offline flag, endpoint, cache or token from the outside."""
    for name in (
        "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT",
        "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub's once-per-process telemetry call goes to the endpoint read at import time
    # (the real Hub): keep tests off the network.
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    return home


@pytest.fixture
def make_model_folder(tmp_path: Path) -> Callable[..., Path]:
    """Write a model folder holding a tiny Linear(3, 2) and a default KLDMConfig."""

    def make(name: str = "model", task: str = "csp", card: str = CARD, seed: int = 0) -> Path:
        config = KLDMConfig(task=task)  # type: ignore[arg-type]
        return hub.write_model_folder(tmp_path / name, tiny_state_dict(seed), config, card)

    return make


def folder_files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in hub.MODEL_FILES}


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    server = FakeHub().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def closed_endpoint(monkeypatch: pytest.MonkeyPatch) -> str:
    """Point HF_ENDPOINT at a local port nobody listens on (connection refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    return url


@pytest.fixture
def bundled_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty bundled-weights folder standing in for weights/."""
    folder = tmp_path / "bundled"
    folder.mkdir()
    monkeypatch.setattr(hub.releases, "bundled_weights_dir", lambda: folder)
    return folder
