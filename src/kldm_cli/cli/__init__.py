"""Typer command-line interface. Thin: each command parses, calls one library function, prints."""
