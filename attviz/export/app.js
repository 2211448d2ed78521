/* attviz static export: the page's behaviour. Everything comes from the page itself; nothing is fetched.
 * Payload of a layer (see attviz/export/payload.py): float32 scales (heads x queries), then uint8
 * values (heads x queries x keys); value = q * scale of its row. Token text is only ever set with
 * textContent (or as Bokeh tooltip/tick text, which Bokeh escapes). */
(function () {
  "use strict";
  const A = (window.attviz = window.attviz || {});
  const RGB = "249, 130, 44";
  const state = (A.state = { doc: 0, layer: 0, head: "mean", mode: "from", selected: null });
  const cache = new Map();
  const CACHE_SIZE = 16;
  let M = null, B = {}, spans = [], run = 0;
  A.ready = false;
  A.pending = Promise.resolve();

  const byId = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  };
  const fmt = (v) => (v === undefined || Number.isNaN(v) ? "-" : Number(v).toFixed(4));
  const frame = () => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));

  function base64(text) {
    if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(text.trim());
    const bin = atob(text.trim());
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  async function inflate(bytes) {
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  async function load(d, l) {
    const doc = M.docs[d], n = doc.tokens.length, H = doc.heads.length;
    let bytes = base64(byId(doc.blobs[l]).textContent);
    if (M.encoding === "deflate") bytes = await inflate(bytes);
    if (bytes.length !== H * n * (4 + n)) {
      throw new Error(`layer ${doc.layers[l]}: ${bytes.length} bytes, expected ${H * n * (4 + n)}`);
    }
    if (bytes.byteOffset % 4) bytes = bytes.slice();
    const scales = new Float32Array(bytes.buffer, bytes.byteOffset, H * n);
    const q = new Uint8Array(bytes.buffer, bytes.byteOffset + 4 * H * n, H * n * n);
    return { scales, q, H, n };
  }

  /** The decoded layer ``l`` of document ``d`` (kept for the last few layers used). */
  A.layerData = function (d, l) {
    const key = `${d}:${l}`;
    if (!cache.has(key)) {
      cache.set(key, load(d, l));
      if (cache.size > CACHE_SIZE) cache.delete(cache.keys().next().value);
    }
    return cache.get(key);
  };

  /** The matrix shown for ``head``: a head position, "mean" or "max" over heads (n*n, row-major). */
  A.matrix = function (L, head) {
    const { scales, q, H, n } = L, out = new Float32Array(n * n);
    const heads = head === "mean" || head === "max" ? [...Array(H).keys()] : [Number(head)];
    for (const h of heads) {
      for (let i = 0; i < n; i++) {
        const s = scales[h * n + i], base = (h * n + i) * n, o = i * n;
        if (head === "max") {
          for (let j = 0; j < n; j++) { const v = q[base + j] * s; if (v > out[o + j]) out[o + j] = v; }
        } else if (head === "mean") {
          const w = s / H;
          for (let j = 0; j < n; j++) out[o + j] += q[base + j] * w;
        } else {
          for (let j = 0; j < n; j++) out[o + j] = q[base + j] * s;
        }
      }
    }
    return out;
  };

  /** What colours the text: the selected token's row ("from"), its column ("to"), or column means. */
  A.vector = function (m, n) {
    const v = new Float32Array(n), s = state.selected;
    if (s !== null && state.mode === "from") for (let k = 0; k < n; k++) v[k] = m[s * n + k];
    else if (s !== null && state.mode === "to") for (let i = 0; i < n; i++) v[i] = m[i * n + s];
    else {
      for (let i = 0; i < n; i++) for (let k = 0; k < n; k++) v[k] += m[i * n + k];
      for (let k = 0; k < n; k++) v[k] /= n || 1;
    }
    return v;
  };

  const doc = () => M.docs[state.doc];
  const tokenText = (i) => `${doc().tokens[i]} #${doc().start + i}`;
  A.tokenLabel = function (value) {
    if (!M || !M.docs.length) return "";
    const i = Math.round(value);
    return i >= 0 && i < doc().tokens.length ? tokenText(i) : "";
  };
  A.tickLabel = function (tick) {
    if (!M || !M.docs.length) return "";
    const t = doc().tokens[tick];
    if (!Number.isInteger(tick) || t === undefined) return "";
    return t.length > 12 ? `${t.slice(0, 11)}…` : t;
  };

  function showError(error) {
    const box = byId("attviz-error");
    if (box) { box.hidden = false; box.textContent = `Could not show this: ${error.message || error}`; }
    console.error(error);
  }

  function drawMatrix(m, n) {
    if (!B.source) return;
    let top = 0;
    for (let i = 0; i < m.length; i++) if (m[i] > top) top = m[i];
    const high = top > 0 ? top : 1;
    if (typeof B.mapper.update_data === "function") {
      // Colour-map the new image once: a plain ``high`` change would re-map the old image first.
      B.mapper.setv({ high }, { silent: true });
      B.mapper.update_data();  // tells the colour bar
    } else {
      B.mapper.high = high;
    }
    const image = B.ndarray(m, { dtype: "float32", shape: [n, n] });
    B.source.data = { image: [image], x: [-0.5], y: [-0.5], dw: [n], dh: [n] };
  }

  function highlight() {
    if (!B.highlight) return;
    const s = state.selected, n = doc().tokens.length;
    let data = { left: [], right: [], bottom: [], top: [] };
    if (s !== null && state.mode === "to") data = { left: [s - 0.5], right: [s + 0.5], bottom: [-0.5], top: [n - 0.5] };
    else if (s !== null) data = { left: [-0.5], right: [n - 0.5], bottom: [s - 0.5], top: [s + 0.5] };
    B.highlight.data = data;
  }

  function colourText() {
    const m = A.current, n = doc().tokens.length;
    if (!m || !spans.length) return;
    const v = (A.values = A.vector(m, n));
    let top = 0;
    for (let i = 0; i < n; i++) if (v[i] > top) top = v[i];
    spans.forEach((span, i) => {
      const a = top > 0 ? v[i] / top : 0;
      span.style.backgroundColor = `rgba(${RGB}, ${a.toFixed(3)})`;
      span.classList.toggle("attviz-selected", i === state.selected);
    });
    const legend = byId("attviz-legend");
    if (legend) {
      const s = state.selected;
      const what = s === null || state.mode === "received"
        ? "attention each token receives (mean over queries)"
        : state.mode === "from" ? `attention from “${tokenText(s)}”` : `attention to “${tokenText(s)}”`;
      const hint = s === null && state.mode !== "received" ? " Click a token (here or in the matrix) to select it." : "";
      legend.textContent = `Colour: ${what}; full colour = ${fmt(top)}.${hint}`;
    }
  }

  function status() {
    const box = byId("attviz-status");
    if (!box) return;
    const d = doc(), head = state.head;
    const heads = head === "mean" ? "mean over heads" : head === "max" ? "max over heads" : `head ${d.heads[head]}`;
    const sel = state.selected === null ? "no token selected" : `selected “${tokenText(state.selected)}”`;
    box.textContent = d.layers.length ? `Layer ${d.layers[state.layer]} · ${heads} · ${sel}` : "No attention matrices.";
  }

  async function render() {
    const token = ++run, d = doc();
    if (!d.blobs.length) {
      A.current = A.values = null;
      if (B.source) B.source.data = { image: [], x: [], y: [], dw: [], dh: [] };
      spans.forEach((span) => { span.style.backgroundColor = ""; });
      const legend = byId("attviz-legend");
      if (legend) legend.textContent = "No attention matrices for this document.";
      status();
      return;
    }
    const L = await A.layerData(state.doc, state.layer);
    if (token !== run) return;
    const t0 = performance.now();
    const m = (A.current = A.matrix(L, state.head));
    const t1 = performance.now();
    drawMatrix(m, L.n);
    highlight();
    const t2 = performance.now();
    colourText();
    status();
    A.timings = { matrix: t1 - t0, draw: t2 - t1, text: performance.now() - t2 };  // milliseconds
  }

  function buildText() {
    const body = byId("attviz-text");
    if (!body) return;
    const d = doc(), frag = document.createDocumentFragment();
    spans = [];
    if (d.lead) frag.append(el("span", "attviz-elided", d.lead));
    d.labels.forEach((label, i) => {
      if (d.gaps[i]) frag.append(document.createTextNode(d.gaps[i]));
      const span = el("span", d.badges[i] ? "attviz-token attviz-special" : "attviz-token", label);
      span.dataset.index = String(i);
      spans.push(span);
      frag.append(span);
    });
    if (d.tail) frag.append(document.createTextNode(d.tail));
    if (d.trail) frag.append(el("span", "attviz-elided", d.trail));
    body.replaceChildren(frag);
  }

  function buildPredictions() {
    const box = byId("attviz-predictions");
    if (!box) return;
    const d = doc(), summary = el("p", "attviz-summary");
    summary.append("gold: ", el("b", "", d.label ?? "-"), " · predicted: ", el("b", "", d.prediction ?? "-"));
    if (d.label != null && d.prediction != null) {
      const right = d.label === d.prediction;
      summary.append(" ", el("span", right ? "attviz-right" : "attviz-wrong", right ? "correct" : "wrong"));
    }
    box.replaceChildren(summary);
    if (!d.probabilities.length) { box.append(el("p", "attviz-note", "No class probabilities stored.")); return; }
    const table = el("table", "attviz-probs");
    [...d.probabilities].sort((a, b) => b[1] - a[1]).forEach(([name, p]) => {
      const row = el("tr", name === d.prediction ? "attviz-predicted" : "");
      const label = el("td", "", name);
      if (name === d.label) label.append(" ", el("span", "attviz-tag", "gold"));
      if (name === d.prediction) label.append(" ", el("span", "attviz-tag", "predicted"));
      const bar = el("div", "attviz-bar");
      bar.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`;
      const barCell = el("td", "attviz-bar-cell");
      barCell.append(bar);
      row.append(label, barCell, el("td", "attviz-num", p.toFixed(3)));
      table.append(row);
    });
    box.append(table);
  }

  function setupDoc(previousLayer) {
    const d = doc(), n = d.tokens.length;
    state.selected = null;
    const keep = d.layers.indexOf(previousLayer);
    state.layer = keep >= 0 ? keep : Math.min(state.layer, Math.max(d.layers.length - 1, 0));
    if (state.head !== "mean" && state.head !== "max" && Number(state.head) >= d.heads.length) state.head = "mean";
    B.layerSelect.options = d.layers.map((l, i) => [String(i), `layer ${l}`]);
    B.layerSelect.value = String(state.layer);
    B.headSelect.options = [["mean", "mean over heads"], ["max", "max over heads"],
      ...d.heads.map((h, i) => [String(i), `head ${h}`])];
    B.headSelect.value = String(state.head);
    if (B.xRange) {
      const side = Math.max(n, 1);
      B.xRange.setv({ start: -0.5, end: side - 0.5, reset_start: -0.5, reset_end: side - 0.5 });
      B.yRange.setv({ start: side - 0.5, end: -0.5, reset_start: side - 0.5, reset_end: -0.5 });
      B.ticker.desired_num_ticks = Math.min(side, 30);
    }
    const notes = byId("attviz-doc-notes");
    if (notes) notes.textContent = d.notes.join(" ");
    buildText();
    buildPredictions();
  }

  /** Change the state (doc, layer, head, mode, selected); returns a promise of the redraw. */
  A.set = function (changes) {
    const before = { ...state };
    let changed = false;
    for (const [key, value] of Object.entries(changes)) {
      if (key in state && state[key] !== value) { state[key] = value; changed = true; }
    }
    if (!changed || !M) return A.pending;
    if (state.doc !== before.doc) setupDoc(M.docs[before.doc].layers[before.layer]);
    syncWidgets();
    A.pending = render().catch(showError);
    return A.pending;
  };

  /** Show the state in the widgets (their callbacks then find nothing changed). */
  function syncWidgets() {
    B.docSelect.value = String(state.doc);
    B.layerSelect.value = String(state.layer);
    B.headSelect.value = String(state.head);
    B.modeGroup.active = ["from", "to", "received"].indexOf(state.mode);
  }

  /** Select token ``i`` (a window position); selecting it again clears the selection. */
  A.select = function (i) {
    state.selected = i === state.selected || i === null ? null : i;
    highlight();
    colourText();
    status();
  };

  A.tap = function (x, y) {
    const i = Math.round(state.mode === "to" ? x : y);
    if (i >= 0 && i < doc().tokens.length) A.select(i);
  };

  A.init = function (models) {
    B = models;
    B.ndarray = Bokeh.require("core/util/ndarray").ndarray;
    M = JSON.parse(byId("attviz-manifest").textContent);
    if (!M.docs.length) return;
    B.docSelect.options = M.docs.map((d, i) => [String(i), d.option]);
    const body = byId("attviz-text");
    if (body) {
      body.addEventListener("click", (event) => {
        const span = event.target.closest(".attviz-token");
        if (span) A.select(Number(span.dataset.index));
      });
      body.addEventListener("mouseover", (event) => {
        const span = event.target.closest(".attviz-token");
        if (!span) return;
        const i = Number(span.dataset.index);
        span.title = `${tokenText(i)}: ${fmt(A.values ? A.values[i] : undefined)}`;
      });
    }
    setupDoc(null);
    A.pending = render().then(frame).then(() => { A.ready = true; }).catch(showError);
  };
})();
