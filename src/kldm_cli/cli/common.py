"""Helpers shared by the CLI commands: turning library errors into clean exits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console()
err_console = Console(stderr=True)


def check_count_and_sampler(n: int, n_hint: str, sampler: str | None) -> None:
    """Refuse a non-positive structure count or an unknown sampler (exit code 2)."""
    if n < 1:
        raise typer.BadParameter(f"must be positive, got {n}", param_hint=n_hint)
    if sampler not in (None, "pc", "em"):
        raise typer.BadParameter(f"choose pc or em, got {sampler!r}", param_hint="--sampler")


class SamplingProgress:
    """A rich progress bar for ``predict`` / ``generate``: sampler steps over the whole run
    (every batch), with the structures written so far, elapsed time and an ETA.

    Use as a context manager; pass :meth:`on_step` and :meth:`on_written` to the library call.
    """

    def __init__(self, label: str, total_structures: int, show: bool = True) -> None:
        self.total_structures = total_structures
        self.progress = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(),
            TextColumn("{task.fields[steps]}"), TextColumn("{task.fields[done]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
            disable=not show,
        )  # fmt: skip
        self.task = self.progress.add_task(label, total=None, steps="loading model", done="")
        self.on_written(0, total_structures)

    def on_step(self, done: int, total: int) -> None:
        """``done`` of ``total`` sampler steps finished (all batches of the run together)."""
        self.progress.update(self.task, completed=done, total=total, steps=f"step {done}/{total}")

    def on_written(self, done: int, total: int) -> None:
        """``done`` of ``total`` structures written."""
        self.progress.update(self.task, done=f"{done}/{total} structures")

    def on_stage(self, name: str) -> None:
        """A stage after sampling started (the ranked search: ``name`` says which)."""
        self.progress.update(self.task, steps=name)

    def __enter__(self) -> SamplingProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]


@contextmanager
def user_errors() -> Iterator[None]:
    """Report a library ``ValueError``/``OSError`` as a one-line error and exit code 1."""
    try:
        yield
    except (ValueError, OSError) as err:
        err_console.print(f"[bold red]Error:[/] {err}", highlight=False)
        raise typer.Exit(code=1) from None
