"""Helpers for the tests that launch several Gloo processes (DDP training, sharded generation)."""

from __future__ import annotations

import socket
import time

import pytest


def free_port() -> int:
    """A TCP port nobody listens on now (for a process group's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def join_or_fail(context, what: str, timeout_s: float = 240.0) -> None:
    """Wait for every process of ``context`` (``torch.multiprocessing.start_processes``); kill
    them and fail the test when they are still running after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{what} did not finish (a rank is probably waiting on the other)")
