"""Helpers shared by the CLI commands: turning library errors into clean exits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Report a library ``ValueError``/``OSError`` as a one-line error and exit code 1."""
    try:
        yield
    except (ValueError, OSError) as err:
        err_console.print(f"[bold red]Error:[/] {err}", highlight=False)
        raise typer.Exit(code=1) from None
