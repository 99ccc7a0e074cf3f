"""The ``temseg`` command line: one typer app, one function per subcommand.

Each command parses flags and calls into the package; no logic lives here.
"""

from __future__ import annotations

import typer

from temseg import __version__

app = typer.Typer(
    name="temseg",
    help="Live U-Net segmentation of HRTEM frames: watch a folder, publish masks over ZeroMQ, "
    "record results in SQLite; offline training, calibration and benchmarks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"temseg {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """temseg: segment HRTEM frames as they are acquired."""


# --- simulate ---

# --- segment ---

# --- daemon ---

# --- demo ---

# --- subscribe ---

# --- status ---

# --- keys ---

# --- train ---

# --- models ---

# --- calibrate ---

# --- compile ---

# --- bench ---
