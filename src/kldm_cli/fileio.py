"""File permissions for what kldm writes through a temporary file."""

from __future__ import annotations

import os
from pathlib import Path


def default_file_mode() -> int:
    """The mode a new file gets from ``open()``: ``0o666`` less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def respect_umask(path: str | Path) -> None:
    """Give ``path`` the mode a plainly created file would have.

    ``tempfile`` and safetensors' ``save_file`` create files readable by their owner only
    (``0o600``); a CIF or checkpoint renamed from such a file would keep that mode.
    """
    os.chmod(path, default_file_mode())
