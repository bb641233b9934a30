"""Helpers shared by the CLI commands: turning library errors into clean exits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

console = Console()
err_console = Console(stderr=True)


# Sampler options shared by predict, generate and evaluate csp (typer.Option defaults).
def batch_atoms_option() -> Any:
    return typer.Option(4096, "--batch-atoms", min=1, help="Atoms per sampling batch.")


def grid_option() -> Any:
    return typer.Option(
        None,
        "--grid",
        help="Sampler time grid: uniform, or power[:RHO] (steps shrink towards the data; "
        "power = power:2). Default: the model's (uniform).",
    )


def check_count_and_sampler(n: int, n_hint: str, sampler: str | None) -> None:
    """Refuse a non-positive structure count or an unknown sampler (exit code 2)."""
    if n < 1:
        raise typer.BadParameter(f"must be positive, got {n}", param_hint=n_hint)
    if sampler not in (None, "pc", "em"):
        raise typer.BadParameter(f"choose pc or em, got {sampler!r}", param_hint="--sampler")


def structures_progress(label: str, *, rate: bool = False) -> Progress:
    """A rich progress bar counting finished structures (with a structures/s field if ``rate``)."""
    columns = [
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
    ]
    if rate:
        columns.append(TextColumn("{task.fields[rate]}"))
    return Progress(*columns, TimeElapsedColumn(), console=console)


def threads_option() -> Any:
    return typer.Option(
        None, "--threads", min=1, help="CPU threads (default: one per physical core)."
    )


@contextmanager
def user_errors() -> Iterator[None]:
    """Report a library ``ValueError``/``OSError`` as a one-line error and exit code 1."""
    try:
        yield
    except (ValueError, OSError) as err:
        err_console.print(f"[bold red]Error:[/] {err}", highlight=False)
        raise typer.Exit(code=1) from None
