"""The learning-rate schedule and the exponential moving average of the weights."""

from __future__ import annotations

import math

import torch


class EMA:
    """Exponential moving average of a module's floating-point state (decay 0.999)."""

    def __init__(self, module: torch.nn.Module, decay: float, start: int) -> None:
        self.decay, self.start = decay, start
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        decay = 0.0 if step < self.start else self.decay
        for name, value in module.state_dict().items():
            if value.is_floating_point():
                self.shadow[name].mul_(decay).add_(value.detach(), alpha=1.0 - decay)
            else:
                self.shadow[name].copy_(value)


def learning_rate_at(
    step: int, base: float, schedule: str, warmup: int, total: int, decay_start: int = 0
) -> float:
    """Learning rate at ``step``: linear warm-up, then constant or cosine decay to 10% at ``total``.

    The cosine starts at ``max(warmup, decay_start)``; between the warm-up and ``decay_start`` the
    rate stays at ``base`` (a warm-up-stable-decay schedule). A ``decay_start`` at the current step
    of a finished run is a cooldown: the run goes on from ``base`` down to ``base / 10``.
    """
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    if schedule == "cosine":
        start = max(warmup, decay_start)
        progress = min(1.0, max(0.0, (step - start) / max(1, total - start)))
        return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"Unknown learning-rate schedule {schedule!r}; choose constant or cosine")
