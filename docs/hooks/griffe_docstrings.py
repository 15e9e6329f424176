"""Griffe extension for the API reference: docstrings are prose with shape notation, not Markdown links.

The package's docstrings write tensor shapes and indexing as ``[rows][columns]`` or ``[n][in]`` in running text,
which Markdown (and mkdocs-autorefs) reads as a reference link to a page named ``columns``. Outside code spans and
code blocks, ``][`` is escaped to ``]\\[`` so it renders as written. Sphinx roles (``:class:`Name` ``) would show
their role name; they become plain code (``Name``). The source is not changed.
"""

from __future__ import annotations

import re

import griffe

_CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|obj|exc|const):`(~?)([^`]+)`")


def drop_sphinx_roles(text: str) -> str:
    """``:class:`a.B` `` -> ``a.B`` in code; ``:class:`~a.B` `` -> ``B`` (the last part, as Sphinx shows it)."""

    def code(match: re.Match) -> str:
        name = match.group(2)
        return f"`{name.rsplit('.', 1)[-1] if match.group(1) else name}`"

    return _ROLE.sub(code, text)


def escape_reference_links(text: str) -> str:
    """``a[i][j]`` outside code -> ``a[i]\\[j]``; code spans, fenced and indented blocks are left alone."""
    out, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        if fenced or line.startswith("    ") or "][" not in line:
            out.append(line)
            continue
        pieces, last = [], 0
        for match in _CODE_SPAN.finditer(line):
            pieces.append(line[last : match.start()].replace("][", "]\\["))
            pieces.append(match.group(0))
            last = match.end()
        pieces.append(line[last:].replace("][", "]\\["))
        out.append("".join(pieces))
    return "\n".join(out)


class EscapeShapeBrackets(griffe.Extension):
    """Drop Sphinx roles and escape ``][`` in every docstring the API reference renders."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = escape_reference_links(drop_sphinx_roles(obj.docstring.value))
