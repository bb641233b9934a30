"""``--device`` resolution shared by predict, generate and train."""

import pytest
import torch

from kldm_cli.device import resolve_device


def _fake_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_cpu_is_always_available(monkeypatch):
    _fake_gpus(monkeypatch, 0)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cpu", local_rank=3) == torch.device("cpu")


@pytest.mark.parametrize("name", ["tpu", "gpu", "CUDA", ""])
def test_unknown_device_is_named(name):
    with pytest.raises(ValueError, match=f"Unknown device '{name}'"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_absent_gpu_is_refused(monkeypatch, name):
    _fake_gpus(monkeypatch, 0)
    with pytest.raises(ValueError, match=f"--device {name} was asked for, but no CUDA GPU"):
        resolve_device(name)


def test_explicit_gpu_outside_torchrun(monkeypatch):
    _fake_gpus(monkeypatch, 2)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_torchrun_takes_the_gpu_of_its_local_rank(monkeypatch):
    _fake_gpus(monkeypatch, 2)
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)


def test_torchrun_refuses_a_pinned_gpu_and_a_missing_rank(monkeypatch):
    _fake_gpus(monkeypatch, 2)
    with pytest.raises(ValueError, match="under torchrun use --device cuda"):
        resolve_device("cuda:1", local_rank=0)
    with pytest.raises(ValueError, match="LOCAL_RANK 2 but only 2 GPUs are visible"):
        resolve_device("cuda", local_rank=2)
