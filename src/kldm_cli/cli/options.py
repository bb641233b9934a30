"""Typer options shared by several commands, defined once: ``options.seed("crystals")`` in a
command's signature. Each call returns a fresh ``typer.Option``."""

from __future__ import annotations

from typing import Any

import typer


# Sampler options of predict and generate; evaluate csp shares weights, device, batch atoms, grid
# and threads.
def weights() -> Any:
    return typer.Option(
        None, "--weights", help="Model folder, hf://OWNER/REPO\\[@REV] or release name."
    )


def output_format() -> Any:
    return typer.Option("cif", "--format", help="cif (one file each) or extxyz (one file).")


def sampler() -> Any:
    return typer.Option(None, "--sampler", help="pc or em (default: the model's).")


def steps() -> Any:
    return typer.Option(None, "--steps", min=1, help="Sampling steps (default: the model's).")


def seed(what: str) -> Any:
    """``--seed``; the help says the same seed gives the same ``what`` (crystals, structures)."""
    return typer.Option(0, "--seed", help=f"Random seed; the same seed gives the same {what}.")


def device() -> Any:
    return typer.Option("cpu", "--device", help="cpu or cuda.")


def batch_atoms() -> Any:
    return typer.Option(4096, "--batch-atoms", min=1, help="Atoms per sampling batch.")


def grid() -> Any:
    return typer.Option(
        None,
        "--grid",
        help="Sampler time grid: uniform, or power[:RHO] (steps shrink towards the data; "
        "power = power:2). Default: the model's (uniform).",
    )


def threads() -> Any:
    return typer.Option(
        None,
        "--threads",
        min=1,
        help="CPU threads (default: one per physical core that other processes leave free, "
        "at most one per 256 atoms of a batch; see docs/benchmarks.md).",
    )


# Ranked-search options of predict (--candidates) and evaluate csp (--rank); the defaults are
# SearchSettings' (literals, so that start-up does not import the search).
def screen(help: str) -> Any:
    return typer.Option(5, "--screen", min=0, help=help)


def relax_steps(help: str) -> Any:
    return typer.Option(100, "--relax-steps", min=0, help=help)


def frequency_weight() -> Any:
    return typer.Option(
        0.01,
        "--frequency-weight",
        min=0.0,
        help="Rank by CHGNet energy per atom minus this weight (eV/atom) times ln(number of "
        "candidates that were the structure; see docs/benchmarks.md): 0 ranks by energy alone.",
    )


# A chunk of a dataset (evaluate csp and dng).
def limit(what: str) -> Any:
    """``--limit``: use N of ``what`` (test rows, samples) from ``--start``."""
    return typer.Option(
        None, "--limit", min=1, help=f"Use N {what}: the first N, or N from --start."
    )


def start(what: str, purpose: str) -> Any:
    """``--start``: the first of ``what`` (0-based); with ``--limit``, ``purpose``."""
    return typer.Option(
        0, "--start", min=0, help=f"First {what} (0-based); with --limit, {purpose}."
    )


# Dataset cache (data and train).
def cache_dir() -> Any:
    return typer.Option(
        None,
        "--cache-dir",
        help="Folder of the preprocessing cache (default: $KLDM_CACHE_DIR, else "
        "~/.cache/kldm/datasets).",
        show_default=False,
    )
