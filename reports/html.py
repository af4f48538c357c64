"""index.html: the whole report on one self-contained page.

Tables are the same `Table`s the Markdown files hold; plots are embedded as base64 data URIs and the
style sheet is inline, so the page can be mailed or attached to a CI run and still shows everything.
"""

from __future__ import annotations

import base64
import datetime
import html
from collections.abc import Sequence
from pathlib import Path

from reports.tables import Table

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td:first-child, td:nth-child(2) { white-space: nowrap; }
tr:nth-child(even) td { background: #fafafa; }
p.note { color: #555; font-size: 0.9em; margin: 0.2em 0; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
.wide { overflow-x: auto; }
"""


def table_html(table: Table) -> str:
    notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in table.notes)
    if table.frame.empty:
        body = "<p><em>No rows.</em></p>"
    else:
        body = table.frame.to_html(index=False, escape=True, border=0, na_rep="")
    return f'<h3>{html.escape(table.title)}</h3>{notes}<div class="wide">{body}</div>'


def image_html(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(caption)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'
    )


Item = Table | tuple[Path, str] | str


def page(sections: Sequence[tuple[str, Sequence[Item]]], title: str) -> str:
    """sections: (heading, [Table | (png path, caption) | plain text paragraph])."""
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">Written {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.</p>',
    ]
    for heading, items in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for item in items:
            if isinstance(item, Table):
                parts.append(table_html(item))
            elif isinstance(item, tuple):
                parts.append(image_html(*item))
            else:
                parts.append(f"<p>{html.escape(item)}</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
