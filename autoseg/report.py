"""One self-contained HTML page: the evaluation summary, the per-case metrics and overlay pictures.

The page has no external resources: PNGs are embedded as base64, so it can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autoseg.errors import fail
from autoseg.io import write_bytes_atomic

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
figure { display: inline-block; margin: 0 1em 1em 0; } img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; }
"""


def _cell(value: Any) -> str:
    """A table cell's text: floats with 4 decimals, missing or NaN values as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "&ndash;"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4f}"
    return html.escape(str(value))


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _matrix(d: Mapping[str, Mapping[str, Any]], first: str) -> str:
    """A dict of dicts of scalars as a table: one row per outer key, one column per inner key."""
    cols: list[str] = []
    for inner in d.values():
        cols.extend(k for k in inner if k not in cols)
    return _table([first, *cols], [[k, *(inner.get(c) for c in cols)] for k, inner in d.items()])


def summary_html(summary: Mapping[str, Any]) -> str:
    """Render a summary dict: scalars as a key/value table, each dict of metric dicts as its own table.

    Works with any nesting of ``{name: {region: {metric: value}}}``; deeper or list values are skipped
    (the per-case table carries them).
    """
    parts = []
    scalars = [[k, v] for k, v in summary.items() if _is_scalar(v)]
    if scalars:
        parts.append(_table(["", "value"], scalars))
    for key, value in summary.items():
        if not isinstance(value, Mapping) or not value:
            continue
        if all(_is_scalar(v) for v in value.values()):
            parts.append(f"<h3>{html.escape(str(key))}</h3>" + _table(["", "value"], [[k, v] for k, v in value.items()]))
        elif all(isinstance(v, Mapping) and all(_is_scalar(x) for x in v.values()) for v in value.values()):
            parts.append(f"<h3>{html.escape(str(key))}</h3>" + _matrix(value, ""))
    return "\n".join(parts)


def _image_tag(png: Path) -> str:
    if not png.is_file():
        raise fail(png, "overlay image not found", "write it first (autoseg.visualize.save_overlay_png) or leave it out")
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(png.name)}" src="data:image/png;base64,{data}">'


def write_report_html(summary: Mapping[str, Any], rows: list[dict[str, Any]], overlays: Mapping[str, Path],
                      path: str | os.PathLike, title: str = "autoseg evaluation",
                      figures: Mapping[str, Path] | None = None) -> Path:
    """Write one HTML page with the summary tables, the ``figures`` (heading -> PNG, e.g. the reliability
    diagram), the per-case table (``rows``, e.g. the CSV rows) and the ``overlays`` (case id -> PNG), PNGs
    embedded as base64; atomically. Returns ``path``."""
    path = Path(path)
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>Summary</h2>", summary_html(summary) or "<p>(empty)</p>"]
    for heading, png in (figures or {}).items():
        body += [f"<h2>{html.escape(heading)}</h2>", f"<figure>{_image_tag(Path(png))}</figure>"]
    if rows:
        body += [f"<h2>Per case ({len(rows)})</h2>", _table(cols, [[r.get(c) for c in cols] for r in rows])]
    if overlays:
        body.append("<h2>Overlays</h2>")
        for case_id, png in overlays.items():
            body.append(f"<figure>{_image_tag(Path(png))}<figcaption>{html.escape(str(case_id))}"
                        "</figcaption></figure>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
    write_bytes_atomic(path, page.encode("utf-8"))
    return path
