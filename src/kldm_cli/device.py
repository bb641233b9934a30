"""The torch device a command runs on, from its ``--device`` option."""

from __future__ import annotations

import torch


def resolve_device(device: str, local_rank: int | None = None) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a :class:`torch.device`, refused where it is unknown or
    absent. Under torchrun (``local_rank`` given) ``cuda`` means ``cuda:LOCAL_RANK``."""
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"Unknown device {device!r}; choose cpu or cuda")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device} was asked for, but no CUDA GPU is available here")
    if local_rank is None:
        return torch.device(device)
    if device != "cuda":
        raise ValueError(
            f"--device {device}: under torchrun use --device cuda (each process takes the GPU "
            "of its LOCAL_RANK; choose GPUs with CUDA_VISIBLE_DEVICES)"
        )
    if local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible"
        )
    return torch.device("cuda", local_rank)
