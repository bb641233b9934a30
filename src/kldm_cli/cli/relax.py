"""``kldm relax``: relax structures with CHGNet and write them ranked by energy per atom."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from kldm_cli.cli.common import console, err_console, user_errors


def relax_command(
    source: Path = typer.Argument(
        ..., help="A .cif file, a folder of .cif files, an .extxyz file or a CDVAE-style CSV."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the ranked CIFs."),
    steps: int = typer.Option(500, "--steps", min=0, help="Maximum FIRE steps per structure."),
    fmax: float = typer.Option(0.1, "--fmax", min=0.0, help="Force convergence threshold (eV/Å)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    dedupe: bool = typer.Option(
        False,
        "--dedupe/--keep-duplicates",
        help="Drop relaxed structures that match a lower-energy one (StructureMatcher).",
    ),  # fmt: skip
) -> None:
    """Relax structures with the CHGNet potential and rank them by energy per atom.

    Writes rank_001_<formula>.cif, rank_002_... (lowest energy first) and summary.csv.
    """
    from kldm_cli.evaluation.relax import relax_path

    if fmax <= 0:
        raise typer.BadParameter(f"must be positive, got {fmax}", param_hint="--fmax")
    with user_errors(), missing_extra(), console.status("relaxing with CHGNet") as status:
        done = [0]

        def advance(result: Any) -> None:
            done[0] += 1
            status.update(f"relaxing with CHGNet: {done[0]} done")

        run = relax_path(
            source, out, steps=steps, fmax=fmax, device=device, dedupe=dedupe, on_result=advance
        )
    for skipped in run.skipped:
        err_console.print(f"[yellow]skipped[/] {skipped.location}: {skipped.reason}")
    for result in run.results:
        if result.error is not None:
            name = run.names[result.index]
            err_console.print(f"[yellow]relaxation failed[/] {name}: {result.error}")
    print_ranking(run.ranking, files=run.files)
    dropped = sum(r.error is None for r in run.results) - len(run.ranking)
    if dropped:
        console.print(f"{dropped} duplicate(s) of lower-energy structures dropped.")
    console.print(f"Wrote {len(run.files)} CIF file(s) and {run.summary}")


def print_ranking(ranking: Sequence[Any], files: Sequence[Path] | None = None) -> None:
    """A table of relaxed structures (:class:`~kldm_cli.evaluation.relax.RelaxResult`), in the
    given order."""
    from kldm_cli.evaluation.relax import cell_formula

    table = Table(title="Relaxed with CHGNet, lowest energy first")
    columns = ["rank", "formula", "E (eV/atom)", "ΔE (eV/atom)", "RMSD (Å)", "steps", "converged"]
    if files is not None:
        columns.append("file")
    for column in columns:
        table.add_column(column, justify="left" if column in ("formula", "file") else "right")
    for rank, result in enumerate(ranking, start=1):
        delta = result.energy_per_atom - result.initial_energy_per_atom
        row = [
            str(rank),
            cell_formula(result.structure),
            f"{result.energy_per_atom:.4f}",
            f"{delta:+.4f}",
            f"{result.rmsd:.3f}",
            str(result.num_steps),
            "yes" if result.converged else "no",
        ]
        if files is not None:
            row.append(files[rank - 1].name)
        table.add_row(*row)
    console.print(table)


@contextmanager
def missing_extra() -> Iterator[None]:
    """Report the ImportError of a missing optional dependency as a one-line error, exit 1."""
    try:
        yield
    except ImportError as error:
        from rich.markup import escape

        err_console.print(f"[bold red]Error:[/] {escape(str(error))}", highlight=False)
        raise typer.Exit(code=1) from None
