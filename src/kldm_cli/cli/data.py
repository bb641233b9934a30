"""``kldm data``: inspect crystal datasets."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.columns import Columns
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from kldm_cli.cli import options

app = typer.Typer(help="Inspect crystal datasets.", no_args_is_help=True)

_MAX_SKIPPED_SHOWN = 5
_BAR_WIDTH = 40


@contextmanager
def _parse_progress(name: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr while CIFs are parsed (only on a terminal)."""
    progress_console = Console(stderr=True)
    if not progress_console.is_terminal:
        yield None
        return
    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(
        TextColumn("Parsing {task.description}"),
        *columns,
        console=progress_console,
        transient=True,
    ) as progress:
        task = progress.add_task(escape(name), total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


@app.command("stats")
def stats(
    path: Path = typer.Argument(
        ...,
        help="Dataset: a CSV (.csv/.csv.gz, CIFs in column 'cif'), a folder of .cif files, "
        "a .cif file or an .extxyz file.",
        metavar="PATH",
        show_default=False,
    ),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="Parse the dataset again; neither read nor write the cache."
    ),
    cache_dir: Path | None = options.cache_dir(),
) -> None:
    """Summarise a dataset: structures, atoms per cell, elements, lattice ranges, skipped rows."""
    from kldm_cli.data.readers import default_cache_dir, load_dataset
    from kldm_cli.data.stats import LATTICE_QUANTITIES, dataset_stats

    console = Console()
    start = time.perf_counter()
    try:
        with _parse_progress(path.name) as report:
            dataset = load_dataset(
                path, cache_dir=cache_dir, use_cache=not no_cache, progress=report
            )
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="'PATH'") from None
    seconds = time.perf_counter() - start
    summary = dataset_stats(dataset)

    folder = escape(str(cache_dir or default_cache_dir()))
    if no_cache:
        how = "parsed (cache disabled)"
    elif dataset.from_cache:
        how = f"loaded from the cache in {folder}"
    else:
        how = f"parsed; cache written to {folder}"
    console.print(f"[bold]Dataset[/bold] {escape(dataset.source)}")
    console.print(
        f"  {summary.num_structures:,} structures, {summary.num_skipped:,} skipped "
        f"({dataset.num_inputs:,} inputs read)"
    )
    console.print(f"  {how} in {seconds:.2f} s")
    console.print(f"  sha256 {dataset.content_hash}")
    console.print(f"  cells {'Niggli-reduced' if dataset.niggli else 'as given'}")

    if summary.num_atoms_counts:
        console.print()
        histogram = Table(title="Atoms per cell", title_justify="left", box=None)
        histogram.add_column("atoms", justify="right")
        histogram.add_column("structures", justify="right")
        histogram.add_column("")
        largest = max(summary.num_atoms_counts.values())
        for num_atoms, count in summary.num_atoms_counts.items():
            bar = "█" * max(1, round(_BAR_WIDTH * count / largest))
            histogram.add_row(str(num_atoms), f"{count:,}", bar)
        console.print(histogram)

        console.print()
        console.print(
            f"[bold]Elements[/bold] ({len(summary.element_structure_counts)}; "
            "structures containing each)"
        )
        ranked = sorted(summary.element_structure_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        console.print(Columns([f"{symbol:>2} {count:>6,}" for symbol, count in ranked]))

        console.print()
        lattice = Table(title="Lattice parameters", title_justify="left", box=None)
        for column in ("", "min", "mean", "max"):
            lattice.add_column(column, justify="right")
        for name, unit in LATTICE_QUANTITIES:
            value = summary.lattice_ranges[name]
            lattice.add_row(
                f"{name} ({unit})", f"{value.min:.3f}", f"{value.mean:.3f}", f"{value.max:.3f}"
            )
        console.print(lattice)

    if summary.skipped:
        console.print()
        console.print(f"[bold]Skipped[/bold] ({summary.num_skipped:,})")
        for row in summary.skipped[:_MAX_SKIPPED_SHOWN]:
            console.print(f"  {row.location}: {row.reason}", markup=False, highlight=False)
        if summary.num_skipped > _MAX_SKIPPED_SHOWN:
            console.print(f"  ... and {summary.num_skipped - _MAX_SKIPPED_SHOWN:,} more")
        console.print("  by reason:")
        for kind, count in summary.skipped_kinds.items():
            console.print(f"    {kind}: {count:,}")
