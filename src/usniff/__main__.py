"""``python -m usniff``: the same as the ``usniff`` command."""

from .cli.main import main

main(prog_name="usniff")
