"""The ``catga`` command line: ``demo``, ``bench``, ``doctor``.

Every option also reads a ``CATGA_*`` environment variable (shown in ``--help``). Errors print one
line, ``ErrorName: message``, plus a hint, and exit with code 1; ``--debug`` shows the traceback.
Needs ``catga[cli]`` (typer, rich).
"""

from catga.cli.app import app, main, version_line

__all__ = ("app", "main", "version_line")
