"""MkDocs hooks for the documentation site (``hooks:`` in mkdocs.yml).

The docstrings use Sphinx roles (``:class:`~catga.App```), which mkdocstrings' Google parser leaves as
text: the API pages would read ":class:catga.App". This hook turns each rendered role into the code it
names, shortened as Sphinx would for a leading ``~`` (``App``).
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|meth|func|mod|data|attr|exc|obj|const|py:\w+):<code>(~?)([^<]+)</code>")


def _code(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    return f"<code>{target.rsplit('.', 1)[-1] if short else target}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    """Render ``:role:`target``` as ``target`` (its last part for ``~target``)."""
    return _ROLE.sub(_code, html)
