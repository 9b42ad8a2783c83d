"""``python -m catga.cli``: the same as the ``catga`` command."""

from catga.cli.app import main

main()
