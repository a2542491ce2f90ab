"""Sections of `BENCHMARKS.md` that belong to one bench each (`<!-- bench.NAME -->` ...
`<!-- /bench.NAME -->`): a bench rewrites its own section and leaves the others as they are."""

from __future__ import annotations

import re
from pathlib import Path

_SECTION = re.compile(r"<!-- (bench\.[a-z_]+) -->\n.*?<!-- /\1 -->", re.DOTALL)


def markers(name: str) -> tuple[str, str]:
    """The opening and closing marker of bench `name` (e.g. "bench.api")."""
    return f"<!-- {name} -->", f"<!-- /{name} -->"


def write_section(path: Path, name: str, text: str) -> None:
    """Put `text` (which starts and ends with `name`'s markers) in place of that section of
    `path`, or append it."""
    begin, end = markers(name)
    doc = path.read_text() if path.exists() else ""
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + text + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip() + "\n\n" + text + "\n"
    path.write_text(doc)


def other_sections(path: Path) -> str:
    """Every bench section `path` holds, in order, for a report that rewrites the rest."""
    if not path.exists():
        return ""
    return "\n\n".join(m.group(0) for m in _SECTION.finditer(path.read_text()))
