"""A static neuron browser: one HTML page, its data embedded as JSON, a little JavaScript.

Pick a layer and a neuron: the page shows its top words, its activations over sample
sentences (a heatmap as in the paper's Figure 6), its correlation cluster at a chosen
threshold and where it sits in every task's ranking. No server: the data travel inside
the page (Chromium refuses ``fetch`` over ``file://``), and ``data.json`` is written next
to it for other tools. The data come from :func:`raydund.explore.job.browser_data`.
The page's script and style are ``browser.js`` and ``browser.css`` beside this module
(package data), read at render time and inlined: the page stays one self-contained file.

Data layout (all lists indexed by layer, then neuron within the layer)::

    model, corpus, split, widths[L], vocab[str], min_count, top_k
    top[L][n]       = [[vocab index, score, mean, count], ...]   best first
    sentences       = [{id, words[w], heat[L][n][w] (ints -99..99), peak[L][n]}]
    thresholds      = [t, ...]; clusters[t_index][position] = cluster id (0: constant)
    kept[t_index]   = "0101..." (representative flags by position)
    correlated[pos] = [[position, r], ...]  most correlated first
    rankings        = [{task, ranker, ranked, rank[position] (0: not ranked)}]
    sources         = [{stage, run_id, mlflow_run_id, snapshots {table: id}, scope}]

Every result table is read through one completed run (:mod:`raydund.lake.runs`); the page
lists those runs ("Built from") so it can be traced to exact snapshots.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from raydund import faults

BODY = """
<header>
  <h1>{title}</h1>
  <label>Layer <select id="layer"></select></label>
  <label>Neuron <input id="neuron" type="number" min="0" value="0"></label>
  <button id="prev" title="previous neuron">&#9664;</button><button id="next" title="next neuron">&#9654;</button>
  <label>Cluster threshold <select id="threshold"></select></label>
  <b id="current"></b>
</header>
<main>
  <section>
    <h2>Top words</h2>
    <p class="muted">score: mean |z| of the type's tokens / the best type's (NeuroX get_top_words);
       mean: mean activation; types seen at least {min_count} times</p>
    <table id="top-words"><thead><tr><th class="word">word</th><th>score</th><th>mean</th><th>count</th></tr></thead>
      <tbody></tbody></table>
    <p id="words-note" class="muted"></p>
  </section>
  <section>
    <h2>Activations over sample sentences</h2>
    <p class="muted">red positive, blue negative, scaled by the neuron's largest |activation| here
      (hover for values)</p>
    <div id="heatmap"></div>
  </section>
  <section>
    <h2>Correlation cluster</h2>
    <p id="cluster-info"></p>
    <ul id="members"></ul>
    <h2>Most correlated neurons</h2>
    <ul id="correlated"></ul>
  </section>
  <section>
    <h2>Task rankings</h2>
    <table id="rankings"><thead><tr><th class="word">task</th><th class="word">ranker</th><th>rank</th>
      <th>of</th></tr></thead><tbody></tbody></table>
    <p id="ranks-note" class="muted"></p>
  </section>
  <section class="wide">
    <h2>Built from</h2>
    {sources}
  </section>
</main>
"""


def asset(name: str) -> str:
    """The text of one of the page's files shipped beside this module (``browser.js``, ``browser.css``)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def embed_json(data: dict) -> str:
    """``data`` as compact JSON that is safe inside a ``<script>`` element."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def sources_table(records: list[dict]) -> str:
    """The "Built from" table: one row per run the page read (:mod:`raydund.report.sources`)."""
    from html import escape

    from raydund.report import sources

    if not records:
        return '<p class="muted">no completed clustering, similarity or probe run</p>'
    head = "".join(f'<th class="word">{escape(h)}</th>' for h in sources.HEADER)
    body = "".join("<tr>" + "".join(f'<td class="word">{escape(c)}</td>' for c in row) + "</tr>"
                   for row in sources.rows(records))
    return f'<table id="sources"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render(data: dict) -> str:
    """The whole page for one browser export."""
    from html import escape

    title = escape(f"{data['model']} · {data['corpus']}/{data['split']}")
    body = BODY.format(title=title, min_count=int(data["min_count"]), sources=sources_table(data.get("sources", [])))
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>raydund neurons: {title}</title><style>\n{asset('browser.css')}</style></head><body>{body}"
            f"<script type=\"application/json\" id=\"raydund-data\">{embed_json(data)}</script>"
            f"<script>\n{asset('browser.js')}</script></body></html>\n")


def write(data: dict, folder: str | Path) -> Path:
    """Write ``index.html`` (data embedded) and ``data.json`` as ``folder``, whole or not at all.

    Both files go into a new hidden sibling folder, which then takes ``folder``'s place by
    two renames (the old folder aside, the new one in), so a crash leaves the previous
    page (or, between the renames, none), never half of a new one. Leftovers of a
    crashed write are removed by the next one (one writer per page at a time).

    Returns
    -------
    pathlib.Path
        The page, ``folder/index.html``.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(folder)
    faults.crash_point("browser.before_write")
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.new-", dir=folder.parent))
    staging.chmod(0o755)
    (staging / "index.html").write_text(render(data), encoding="utf-8")
    faults.crash_point("browser.between_files")
    (staging / "data.json").write_text(json.dumps(data, separators=(",", ":"), ensure_ascii=False), encoding="utf-8")
    _swap_in(staging, folder)
    faults.crash_point("browser.after_write")
    return folder / "index.html"


def _swap_in(staging: Path, folder: Path) -> None:
    """Put the complete ``staging`` folder where ``folder`` is (renames; the old one is then deleted)."""
    if not folder.exists():
        os.rename(staging, folder)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    os.rename(folder, old / folder.name)
    os.rename(staging, folder)
    shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(folder: Path) -> None:
    """Delete the hidden staging folders a crashed :func:`write` of ``folder`` left beside it."""
    for prefix in (f".{folder.name}.new-", f".{folder.name}.old-"):
        for path in folder.parent.glob(f"{prefix}*"):
            shutil.rmtree(path, ignore_errors=True)


__all__ = ["asset", "embed_json", "render", "sources_table", "write"]
