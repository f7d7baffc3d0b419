"""A static neuron browser: one HTML page, its data embedded as JSON, a little JavaScript.

Pick a layer and a neuron: the page shows its top words, its activations over sample
sentences (a heatmap as in the paper's Figure 6), its correlation cluster at a chosen
threshold and where it sits in every task's ranking. No server: the data travel inside
the page (Chromium refuses ``fetch`` over ``file://``), and ``data.json`` is written next
to it for other tools. The data come from :func:`raydund.explore.browser_data`.

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
from pathlib import Path

from raydund import faults

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; }
header { position: sticky; top: 0; background: #f4f6f8; border-bottom: 1px solid #ccd; padding: 8px 16px;
         display: flex; gap: 14px; align-items: center; flex-wrap: wrap; z-index: 1; }
header h1 { font-size: 16px; margin: 0 12px 0 0; }
main { display: grid; grid-template-columns: minmax(260px, 1fr) 2fr; gap: 16px; padding: 12px 16px; }
section { min-width: 0; }
section.wide { grid-column: 1 / -1; }
h2 { font-size: 14px; margin: 8px 0; }
table { border-collapse: collapse; }
td, th { padding: 2px 8px; text-align: right; border-bottom: 1px solid #eee; }
td.word, th.word { text-align: left; font-family: monospace; }
.heat { display: flex; flex-wrap: wrap; gap: 2px; margin: 4px 0 14px; }
.heat span { font-family: monospace; padding: 2px 4px; border-radius: 2px; }
.muted { color: #777; }
a.neuron { cursor: pointer; color: #1a5fb4; text-decoration: underline; }
input[type=number] { width: 5em; }
"""

SCRIPT = r"""
const D = JSON.parse(document.getElementById("raydund-data").textContent);
const offsets = [0];
D.widths.forEach(w => offsets.push(offsets[offsets.length - 1] + w));
const $ = id => document.getElementById(id);
const layerOf = p => { let l = 0; while (p >= offsets[l + 1]) l++; return l; };
const name = p => { const l = layerOf(p); return "L" + l + " n" + (p - offsets[l]); };
const fmt = (x, d) => (x === null || x === undefined) ? "" : Number(x).toFixed(d);

function colour(v) {  // v in [-1, 1]: blue - white - red, centred at zero
  const t = Math.min(1, Math.abs(v));
  const end = v >= 0 ? [178, 24, 43] : [33, 102, 172];
  const c = end.map(e => Math.round(255 + (e - 255) * t));
  return "rgb(" + c.join(",") + ")";
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => e.setAttribute(k, v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function neuronLink(p) {
  const a = el("a", {"class": "neuron", "data-position": p}, name(p));
  a.addEventListener("click", () => show(layerOf(p), p - offsets[layerOf(p)]));
  return a;
}

function showWords(layer, neuron) {
  const body = $("top-words").querySelector("tbody");
  body.replaceChildren();
  const rows = D.top[layer][neuron];
  rows.forEach(([w, s, m, c]) => {
    const tr = el("tr");
    tr.append(el("td", {"class": "word"}, D.vocab[w]), el("td", {}, fmt(s, 3)), el("td", {}, fmt(m, 3)),
              el("td", {}, c));
    body.append(tr);
  });
  $("words-note").textContent = rows.length ? "" : "no word type above the thresholds";
}

function showHeat(layer, neuron) {
  const box = $("heatmap");
  box.replaceChildren();
  D.sentences.forEach(s => {
    box.append(el("div", {"class": "muted"}, "sentence " + s.id));
    const line = el("div", {"class": "heat"});
    const peak = s.peak[layer][neuron];
    s.words.forEach((w, i) => {
      const q = s.heat[layer][neuron][i] / 99;
      const span = el("span", {title: fmt(q * peak, 3), "data-value": q}, w);
      span.style.background = colour(q);
      span.style.color = Math.abs(q) > 0.6 ? "white" : "black";
      line.append(span);
    });
    box.append(line);
  });
}

function showCluster(layer, neuron) {
  const info = $("cluster-info"), list = $("members");
  list.replaceChildren();
  if (!D.thresholds.length) { info.textContent = "no clustering stored (run `raydund cluster`)"; return; }
  const t = Number($("threshold").value);
  const pos = offsets[layer] + neuron;
  const id = D.clusters[t][pos];
  if (!id) { info.textContent = "constant neuron: in no cluster"; return; }
  const r = new Map((D.correlated[pos] || []).map(([p, v]) => [p, v]));
  const members = [];
  D.clusters[t].forEach((c, p) => { if (c === id) members.push(p); });
  info.textContent = members.length + " member(s) at threshold " + D.thresholds[t] +
    (D.kept[t][pos] === "1" ? "; this neuron is the cluster's representative" : "");
  members.forEach(p => {
    const li = el("li");
    li.append(p === pos ? el("b", {}, name(p)) : neuronLink(p));
    if (p !== pos) li.append(" r = " + (r.has(p) ? fmt(r.get(p), 3) : "(not among the exported neighbours)"));
    if (D.kept[t][p] === "1") li.append(" (kept)");
    list.append(li);
  });
  const near = $("correlated");
  near.replaceChildren();
  (D.correlated[pos] || []).forEach(([p, v]) => {
    const li = el("li");
    li.append(neuronLink(p), " r = " + fmt(v, 3));
    near.append(li);
  });
}

function showRanks(layer, neuron) {
  const body = $("rankings").querySelector("tbody");
  body.replaceChildren();
  const pos = offsets[layer] + neuron;
  D.rankings.forEach(k => {
    const tr = el("tr");
    const rank = k.rank[pos];
    tr.append(el("td", {"class": "word"}, k.task), el("td", {"class": "word"}, k.ranker),
              el("td", {}, rank ? rank : "not ranked"), el("td", {}, k.ranked));
    body.append(tr);
  });
  $("ranks-note").textContent = D.rankings.length ? "" : "no rankings stored (run `raydund probe`)";
}

let shown = "";

function show(layer, neuron) {
  layer = Math.max(0, Math.min(D.widths.length - 1, Number(layer) || 0));
  neuron = Math.max(0, Math.min(D.widths[layer] - 1, Number(neuron) || 0));
  // a late "change" (the input losing focus to a click) must not re-render what is shown:
  // replacing the clicked element would swallow the click
  $("layer").value = String(layer);
  $("neuron").max = D.widths[layer] - 1;
  $("neuron").value = String(neuron);
  const key = layer + ":" + neuron + ":" + $("threshold").value;
  if (key === shown) return;
  shown = key;
  $("current").textContent = "L" + layer + " n" + neuron;
  showWords(layer, neuron);
  showHeat(layer, neuron);
  showCluster(layer, neuron);
  showRanks(layer, neuron);
  history.replaceState(null, "", "#L" + layer + "n" + neuron);
}

function current() { return [Number($("layer").value), Number($("neuron").value)]; }

D.widths.forEach((w, l) => $("layer").append(el("option", {value: l}, "layer " + l + " (" + w + ")")));
D.thresholds.forEach((t, i) => $("threshold").append(el("option", {value: i}, String(t))));
$("threshold").value = String(D.default_threshold);
$("layer").addEventListener("change", () => show($("layer").value, $("neuron").value));
$("neuron").addEventListener("change", () => show($("layer").value, $("neuron").value));
$("threshold").addEventListener("change", () => show(...current()));
$("prev").addEventListener("click", () => { const [l, n] = current(); show(l, n - 1); });
$("next").addEventListener("click", () => { const [l, n] = current(); show(l, n + 1); });
const m = /^#L(\d+)n(\d+)$/.exec(location.hash);
show(m ? m[1] : 0, m ? m[2] : 0);
"""

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
    <p class="muted">red positive, blue negative, scaled by the neuron's largest |activation| here (hover for values)</p>
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


def embed_json(data: dict) -> str:
    """``data`` as compact JSON that is safe inside a ``<script>`` element."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def sources_table(records: list[dict]) -> str:
    """The "Built from" table: one row per run the page read (:mod:`raydund.report.sources`)."""
    from html import escape  # noqa: PLC0415

    from raydund.report import sources  # noqa: PLC0415

    if not records:
        return '<p class="muted">no completed clustering, similarity or probe run</p>'
    head = "".join(f'<th class="word">{escape(h)}</th>' for h in sources.HEADER)
    body = "".join("<tr>" + "".join(f'<td class="word">{escape(c)}</td>' for c in row) + "</tr>"
                   for row in sources.rows(records))
    return f'<table id="sources"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render(data: dict) -> str:
    """The whole page for one browser export."""
    from html import escape  # noqa: PLC0415

    title = escape(f"{data['model']} · {data['corpus']}/{data['split']}")
    body = BODY.format(title=title, min_count=int(data["min_count"]), sources=sources_table(data.get("sources", [])))
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>raydund neurons: {title}</title><style>{STYLE}</style></head><body>{body}"
            f"<script type=\"application/json\" id=\"raydund-data\">{embed_json(data)}</script>"
            f"<script>{SCRIPT}</script></body></html>\n")


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


__all__ = ["embed_json", "render", "sources_table", "write"]
