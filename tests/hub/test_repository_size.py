"""The tracked tree stays small enough to travel to a GPU machine: the device tool sends the
tracked working tree, 64 MiB at most, so training checkpoints live in git history
(``training/restore.sh``), never in the tree."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: What the device tool accepts for the tree, and what a GPU run carries beside it (data, its
#: parse cache, wheels of missing packages).
DEVICE_TREE_LIMIT = 64 * 2**20
CARRY_HEADROOM = 16 * 2**20


def tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    return [ROOT / name.decode() for name in listing.split(b"\0") if name]


def test_tracked_tree_leaves_room_under_the_device_limit() -> None:
    sizes = {path: path.stat().st_size for path in tracked_files() if path.exists()}
    total = sum(sizes.values())
    largest = sorted(sizes, key=sizes.get, reverse=True)[:3]
    assert total <= DEVICE_TREE_LIMIT - CARRY_HEADROOM, (
        f"the tracked tree is {total / 2**20:.1f} MiB, over "
        f"{(DEVICE_TREE_LIMIT - CARRY_HEADROOM) / 2**20:.0f} MiB; largest: "
        + ", ".join(f"{p.relative_to(ROOT)} ({sizes[p] / 2**20:.1f} MiB)" for p in largest)
    )


def test_no_training_checkpoint_is_tracked() -> None:
    checkpoints = [
        path.relative_to(ROOT) for path in tracked_files() if path.name == "checkpoint.safetensors"
    ]
    assert checkpoints == [], f"keep checkpoints in history (training/restore.sh): {checkpoints}"
