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
