"""The pieces every page is built from: a self-contained skeleton (inline style, no
network), escaped text, tables and images embedded as data URIs.

Pages are built from strings with `html.escape` on every value that came from data: a
genre, a file name or an error message can hold `<` or `&`.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from html import escape

from poster_ray.reports import format_number

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 0 16px 40px; color: #1d1d1f; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; } h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.baseline td { color: #777; font-style: italic; }
.verdict.good { color: #137333; } .verdict.bad { color: #b3261e; }
.curves img { width: 32%; min-width: 260px; }
.posters { display: flex; flex-wrap: wrap; gap: 10px; }
.poster { width: 136px; font-size: 12px; }
.poster img { width: 120px; display: block; background: #eee; }
.hit { color: #137333; } .miss { color: #b3261e; } .muted { color: #777; }
"""


def page(title: str, body: str, style: str = STYLE, script: str = "") -> str:
    """A complete HTML document; everything it needs is inside it or beside it on disk."""
    scripts = f"<script>{script}</script>" if script else ""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        # No request may leave the page: the policy lets it read only its own folder.
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'self' data:; "
        "style-src 'unsafe-inline'; script-src 'self' 'unsafe-inline'\">"
        f"<title>{escape(title)}</title><style>{style}</style></head>"
        f"<body>{body}{scripts}</body></html>\n"
    )


def cell(value: object) -> str:
    """A table cell's text: numbers as in the Markdown reports, everything escaped."""
    return escape(format_number(value))


def table(
    header: Sequence[str], rows: Iterable[Sequence[object]], classes: Iterable[str] = ()
) -> str:
    """An HTML table; `classes` gives each row's class (e.g. "baseline")."""
    head = "".join(f"<th>{escape(title)}</th>" for title in header)
    classes = list(classes)
    lines = []
    for index, row in enumerate(rows):
        kind = f" class='{classes[index]}'" if index < len(classes) and classes[index] else ""
        lines.append(f"<tr{kind}>" + "".join(f"<td>{cell(value)}</td>" for value in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def image(data: bytes, mime: str, alt: str) -> str:
    """An image embedded in the page, so the page opens anywhere it is copied."""
    encoded = base64.b64encode(data).decode("ascii")
    return f"<img alt='{escape(alt, quote=True)}' src='data:{mime};base64,{encoded}'>"
