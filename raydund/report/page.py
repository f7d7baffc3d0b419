"""One self-contained HTML page: sections, tables and matplotlib figures as PNG data URIs."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from raydund.report import figures

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.figs{display:flex;flex-wrap:wrap;gap:1em}
.figs img{max-width:520px;border:1px solid #eee}.note{color:#666;font-size:.85em}
"""


def _png(fig) -> str:
    """A figure as base64 PNG (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    figures.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def table(header: list[str], rows: list[list], left: int = 1) -> str:
    """An HTML table; the first ``left`` columns left-aligned, floats to 2 decimals."""
    def cell(i, v, tag):
        cls = ' class="l"' if i < left else ""
        text = "" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))
        return f"<{tag}{cls}>{html.escape(text)}</{tag}>"

    head = "".join(cell(i, h, "th") for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell(i, v, "td") for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class Report:
    """Collects sections and figures; writes the HTML page and the PNGs."""

    def __init__(self, title: str):
        self.title, self.parts, self.images = title, [], {}

    def section(self, title: str) -> None:
        self.parts.append(f"<h2>{html.escape(title)}</h2>")

    def text(self, text: str, cls: str = "") -> None:
        self.parts.append(f'<p class="{cls}">{html.escape(text)}</p>')

    def raw(self, markup: str) -> None:
        self.parts.append(markup)

    def figures(self, named: dict) -> None:
        tags = []
        for name, fig in named.items():
            data = _png(fig)
            self.images[name] = data
            tags.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
        self.parts.append('<div class="figs">' + "".join(tags) + "</div>")

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.images.items():
            (folder / f"{name}.png").write_bytes(base64.b64decode(data))
        page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(self.title)}</title>"
                f"<style>{STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>"
                + "\n".join(self.parts) + "</body></html>")
        path = folder / "index.html"
        path.write_text(page, encoding="utf-8")
        return path
