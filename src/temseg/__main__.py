"""``python -m temseg``: the same commands as the ``temseg`` script."""

from temseg.cli import app

app(prog_name="temseg")
