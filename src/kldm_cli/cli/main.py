"""The ``kldm`` console script: registers every command group."""

from __future__ import annotations

import typer

from kldm_cli import __version__
from kldm_cli.cli.data import app as data_app
from kldm_cli.cli.evaluate import app as evaluate_app
from kldm_cli.cli.generate import generate_command
from kldm_cli.cli.predict import predict_command
from kldm_cli.cli.relax import relax_command
from kldm_cli.cli.train import train_command
from kldm_cli.cli.weights import app as weights_app

app = typer.Typer(
    name="kldm",
    help="Generate crystal structures with Kinetic Langevin Diffusion for Materials (KLDM).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)
app.add_typer(data_app, name="data")
app.command("train")(train_command)
app.command("predict")(predict_command)
app.command("generate")(generate_command)
app.add_typer(weights_app, name="weights")
app.add_typer(evaluate_app, name="evaluate")
app.command("relax")(relax_command)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"kldm {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version."
    ),
) -> None:
    """Generate crystal structures with Kinetic Langevin Diffusion for Materials (KLDM)."""


if __name__ == "__main__":
    app()
