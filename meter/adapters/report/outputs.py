"""A statement in each format, and the files `meter report --out DIR` writes: the statement
(`<stem>.json`, always), its signature (`<stem>.sig.json`), and the formats asked for
(`<stem>.html`, `<stem>.txt`, `<stem>-csv/` with one file per section and a manifest)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meter.adapters.report.arguments import FORMATS
from meter.adapters.report.naming import stem
from meter.adapters.report.page import render_html
from meter.adapters.report.tables import csv_files
from meter.adapters.report.text import render_table

__all__ = ["FORMATS", "csv_zip", "render", "write_outputs"]

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def render(doc: dict[str, Any], body: bytes, sid: str, fmt: str) -> bytes:
    """The statement in `fmt` (table, json or html: one document each)."""
    if fmt == "json":
        return body
    if fmt == "html":
        return render_html(doc, sid).encode()
    if fmt == "table":
        return render_table(doc, sid).encode()
    raise ValueError(f"{fmt} is not a single document")


def csv_zip(doc: dict[str, Any], sid: str) -> bytes:
    """The CSV files and their manifest in one ZIP, the same bytes every time (fixed dates,
    stored uncompressed, in name order)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, data in sorted(csv_files(doc, sid).items()):
            info = zipfile.ZipInfo(f"{stem(doc, sid)}/{name}", _ZIP_TIME)
            info.external_attr = 0o644 << 16
            z.writestr(info, data)
    return out.getvalue()


def _write(path: Path, data: bytes) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def write_outputs(
    doc: dict[str, Any],
    body: bytes,
    sid: str,
    formats: Sequence[str],
    out_dir: Path,
    signature: bytes | None = None,
) -> list[tuple[str, Path]]:
    """Write the files into `out_dir`; (what, path) of each, the statement first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = stem(doc, sid)
    written = [("json", _write(out_dir / f"{name}.json", body))]
    if signature is not None:
        written.append(("signature", _write(out_dir / f"{name}.sig.json", signature)))
    for fmt in formats:
        if fmt == "html":
            written.append(("html", _write(out_dir / f"{name}.html", render(doc, body, sid, fmt))))
        elif fmt == "table":
            written.append(("table", _write(out_dir / f"{name}.txt", render(doc, body, sid, fmt))))
        elif fmt == "csv":
            folder = out_dir / f"{name}-csv"
            folder.mkdir(exist_ok=True)
            for file, data in sorted(csv_files(doc, sid).items()):
                _write(folder / file, data)
            written.append(("csv", folder))
    return written
