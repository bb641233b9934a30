"""``kldm weights``: list the published models, download them, push your own to the Hub."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from kldm_cli.cli.common import console, err_console, user_errors

app = typer.Typer(
    help="Published models: list them, download them for offline use, push your own.",
    no_args_is_help=True,
)


def _size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "—"
    value = float(num_bytes)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _metrics(metrics: dict) -> str:
    """``key=value, key=value``: wrapped between entries, never cut (a table column was)."""
    return ", ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in metrics.items()
    )


@app.command("list")
def list_command() -> None:
    """Show every release: task, size, whether it is cached or bundled, then its metrics.

    Works offline: sizes and metrics come from a cached or bundled copy ("—" when neither).
    """
    from kldm_cli.hub import hub_cache_dir, release_statuses

    with user_errors():
        statuses = release_statuses()
    table = Table(title="KLDM releases", caption="* default for its task")
    table.add_column("release", style="bold", no_wrap=True)
    table.add_column("task")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("cached")
    table.add_column("bundled")
    table.add_column("description")
    for status in statuses:
        table.add_row(
            status.release.name + (" *" if status.is_default else ""),
            status.release.task,
            _size(status.size_bytes),
            "yes" if status.cached_path else "no",
            "yes" if status.bundled_path else "no",
            status.release.description,
        )
    console.print(table)
    for status in statuses:
        if status.metrics:
            console.print(f"[bold]{status.release.name}[/]: {_metrics(status.metrics)}")
    console.print(f"Hub cache: {hub_cache_dir()}", highlight=False)


@app.command("download")
def download_command(
    name: str = typer.Argument(
        ..., help="Release name (see `kldm weights list`) or hf://OWNER/REPO\\[@REV]."
    ),
) -> None:
    """Download a model into the Hugging Face cache (HF_HOME) so it can be used offline."""
    from kldm_cli.hub import download_weights

    with user_errors():
        resolved = download_weights(name)
    verb = "already cached" if resolved.origin == "cache" else "downloaded"
    console.print(f"{name}: {verb} at {resolved.path}", highlight=False)
    if resolved.notice:
        err_console.print(resolved.notice, highlight=False)


@app.command("push")
def push_command(
    folder: Path = typer.Argument(
        ..., help="Model folder (what `kldm train --out` wrote).", show_default=False
    ),
    destination: str = typer.Argument(
        ..., help="Hub repository, hf://OWNER/REPO (created if it does not exist)."
    ),
    private: bool = typer.Option(
        False, "--private", help="Create the repository private (a new repository only)."
    ),
    revision: str | None = typer.Option(
        None,
        "--revision",
        help="Branch to commit to, created from main if missing (default: main).",
    ),
    message: str | None = typer.Option(None, "--message", "-m", help="Commit message."),
) -> None:
    """Upload a trained model folder to the Hugging Face Hub and print its pinned reference.

    The folder is checked first (config.json and model.safetensors must load strictly; a missing
    README.md card is written from the run's metadata). Only model.safetensors, config.json and
    README.md are uploaded, in one commit; checkpoints, optimizer state and logs stay local.
    Needs a token with write access: HF_TOKEN, or `hf auth login`. The printed
    hf://OWNER/REPO@COMMIT works with --weights everywhere.
    """
    from kldm_cli.hub import push_model_folder

    with user_errors():
        result = push_model_folder(
            folder, destination, private=private, revision=revision, message=message
        )
    for notice in result.notices:
        err_console.print(notice, highlight=False)
    if result.created:
        err_console.print(f"created hf://{result.repo_id}", highlight=False)
    what = "already held these files" if result.unchanged else "committed"
    err_console.print(f"{result.branch}: {what} at {result.url}", highlight=False)
    console.print(result.reference, highlight=False, soft_wrap=True)
