"""Mixed precision: where bf16 is native (CPU flags, GPU support) and the autocast forward."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

#: CPU feature flags (``/proc/cpuinfo``) of native bf16 arithmetic: AMX tiles, AVX-512 BF16.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The feature flags of the first CPU listed in ``cpuinfo`` (empty where it is unreadable,
    e.g. off Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 matrix products natively (AMX or AVX-512 BF16)."""
    return not cpu_flags(cpuinfo).isdisjoint(NATIVE_BF16_FLAGS)


def check_bf16_support(device: torch.device) -> None:
    """Refuse ``--precision bf16`` where it would be emulated: a GPU without bf16, or a CPU
    without native bf16 instructions (there bf16 autocast is several times slower than fp32)."""
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise ValueError("--precision bf16: this GPU has no bf16 support; use fp32")
        return
    if not cpu_has_native_bf16():
        raise ValueError(
            "--precision bf16 needs --device cuda or a CPU with native bf16 instructions "
            f"(one of the flags {', '.join(NATIVE_BF16_FLAGS)} in /proc/cpuinfo); this CPU "
            "has none, so bf16 would be emulated and several times slower than fp32"
        )


class _TrainingForward(torch.nn.Module):
    """The network as the training step calls it: optionally DDP-wrapped, optionally under
    autocast, always returning float32 outputs so that the losses are computed in float32.

    Stands in for ``KLDM.network`` during training; the plain network stays the owner of the
    parameters (optimizer, EMA, checkpoints).
    """

    def __init__(self, network: torch.nn.Module, autocast_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.network = network
        self.autocast_dtype = autocast_dtype

    def forward(self, **inputs: Any) -> Any:
        if self.autocast_dtype is None:
            return self.network(**inputs)
        device_type = inputs["frac_coords"].device.type
        with torch.autocast(device_type, dtype=self.autocast_dtype):
            output = self.network(**inputs)
        return replace(
            output,
            **{
                f.name: getattr(output, f.name).float()
                for f in fields(output)
                if isinstance(getattr(output, f.name), Tensor)
            },
        )
