/* attviz static export: the page's behaviour. Everything comes from the page itself; nothing is fetched.
 * Payload of a layer (see attviz/export/payload.py): float32 scales (heads x queries), then uint8
 * values (heads x queries x keys); value = q * scale of its row. A document kept as queries and keys
 * (entry.payload "qk", see attviz/export/qkpayload.py) carries float32 lse (heads x queries), float32
 * bias when entry.qk.bias, then float16 q (heads x queries x dim) and k (key heads x keys x dim), low
 * bytes first then high bytes: the page computes the weights it shows from them, a row at a time
 * (O(T d)), and the matrix image max-pooled to at most MAX_SIDE a side, never a T x T array.
 * Token text is only ever set with textContent (or as Bokeh tooltip/tick text, which Bokeh escapes). */
(function () {
  "use strict";
  const A = (window.attviz = window.attviz || {});
  const RGB = "249, 130, 44";
  const state = (A.state = { doc: 0, layer: 0, head: "mean", mode: "from", selected: null });
  const cache = new Map();
  const CACHE_SIZE = 16;
  const MAX_SIDE = (A.MAX_SIDE = 2048);  // the largest matrix image (pixels a side) of a q/k document
  const SLICE_MS = 40;  // a long computation yields to the browser this often (and stops when stale)
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

  let HALF = null;
  /** float16 bit patterns to float32 values (a table of all 65,536). */
  function halfTable() {
    if (HALF) return HALF;
    HALF = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const sign = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, f = h & 1023;
      HALF[h] = e === 0 ? sign * f * 2 ** -24 : e === 31 ? (f ? NaN : sign * Infinity) : sign * (1 + f / 1024) * 2 ** (e - 15);
    }
    return HALF;
  }

  function loadQK(doc, l, bytes) {
    const n = doc.tokens.length, H = doc.heads.length, meta = doc.qk, dim = meta.dim, KH = meta.n_key_heads;
    const nBias = meta.bias ? H * (2 * n - 1) : 0, count = (H + KH) * n * dim;
    const expected = 4 * (H * n + nBias) + 2 * count;
    if (bytes.length !== expected) throw new Error(`layer ${doc.layers[l]}: ${bytes.length} bytes, expected ${expected}`);
    if (bytes.byteOffset % 4) bytes = bytes.slice();
    const lse = new Float32Array(bytes.buffer, bytes.byteOffset, H * n);
    const bias = meta.bias ? new Float32Array(bytes.buffer, bytes.byteOffset + 4 * H * n, nBias) : null;
    const low = bytes.subarray(4 * (H * n + nBias)), high = low.subarray(count), table = halfTable();
    const values = new Float32Array(count);
    for (let i = 0; i < count; i++) values[i] = table[low[i] | (high[i] << 8)];
    const [scaling, left, right, softcap] = meta.rules[l];
    return {
      kind: "qk", H, n, dim, lse, bias,
      q: values.subarray(0, H * n * dim), k: values.subarray(H * n * dim),
      keyHead: meta.key_heads, scaling, left, right, softcap: softcap || 0,
    };
  }

  async function load(d, l) {
    const doc = M.docs[d], n = doc.tokens.length, H = doc.heads.length;
    let bytes = base64(byId(doc.blobs[l]).textContent);
    if (M.encoding === "deflate") bytes = await inflate(bytes);
    if (doc.payload === "qk") return loadQK(doc, l, bytes);
    if (bytes.length !== H * n * (4 + n)) {
      throw new Error(`layer ${doc.layers[l]}: ${bytes.length} bytes, expected ${H * n * (4 + n)}`);
    }
    if (bytes.byteOffset % 4) bytes = bytes.slice();
    const scales = new Float32Array(bytes.buffer, bytes.byteOffset, H * n);
    const q = new Uint8Array(bytes.buffer, bytes.byteOffset + 4 * H * n, H * n * n);
    return { kind: "matrix", scales, q, H, n };
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

  // -- queries and keys: weights computed where they are shown --------------------------------------
  /** Head ``h``'s weights of query ``i`` into ``out`` over the keys its rule allows; returns [lo, hi). */
  function headRow(L, h, i, out) {
    const { n, dim, q, k, lse, bias, scaling, left, right, softcap } = L;
    const lo = left >= 0 ? Math.max(0, i - left) : 0, hi = right >= 0 ? Math.min(n, i + right + 1) : n;
    const qo = (h * n + i) * dim, kb = L.keyHead[h] * n * dim, l = lse[h * n + i];
    const bo = bias ? h * (2 * n - 1) + n - 1 - i : 0;
    for (let j = lo, ko = kb + lo * dim; j < hi; j++, ko += dim) {
      let s = 0;
      for (let t = 0; t < dim; t++) s += q[qo + t] * k[ko + t];
      s *= scaling;
      if (softcap) s = softcap * Math.tanh(s / softcap);
      if (bias) s += bias[bo + j];
      out[j] = Math.exp(s - l);
    }
    return [lo, hi];
  }

  /** Head ``h``'s weight of query ``i`` on key ``j`` (0 where the rule masks it). */
  function headCell(L, h, i, j) {
    const { n, dim, q, k, lse, bias, scaling, left, right, softcap } = L;
    if ((left >= 0 && i - j > left) || (right >= 0 && j - i > right)) return 0;
    const qo = (h * n + i) * dim, ko = (L.keyHead[h] * n + j) * dim;
    let s = 0;
    for (let t = 0; t < dim; t++) s += q[qo + t] * k[ko + t];
    s *= scaling;
    if (softcap) s = softcap * Math.tanh(s / softcap);
    if (bias) s += bias[h * (2 * n - 1) + n - 1 + j - i];
    return Math.exp(s - lse[h * n + i]);
  }

  const headsOf = (L, head) => (head === "mean" || head === "max" ? [...Array(L.H).keys()] : [Number(head)]);

  /** Row ``i`` shown for ``head`` (a head position, "mean" or "max") into ``out`` (length n, zero
   * outside the span it returns: [lo, hi), the keys any of the heads may attend). */
  function reducedRow(L, head, i, out, scratch, span = [0, L.n]) {
    out.fill(0, span[0], span[1]);
    if (head !== "mean" && head !== "max") return headRow(L, Number(head), i, out);
    let first = L.n, last = 0;
    for (let h = 0; h < L.H; h++) {
      const [lo, hi] = headRow(L, h, i, scratch);
      if (lo < first) first = lo;
      if (hi > last) last = hi;
      if (head === "max") { for (let j = lo; j < hi; j++) if (scratch[j] > out[j]) out[j] = scratch[j]; }
      else { for (let j = lo; j < hi; j++) out[j] += scratch[j] / L.H; }
    }
    return [Math.min(first, last), last];
  }

  /** The weight shown for ``head`` at query ``i``, key ``j`` (of a q/k layer). */
  A.cell = function (L, head, i, j) {
    let v = 0, sum = 0;
    for (const h of headsOf(L, head)) { const w = headCell(L, h, i, j); sum += w; if (w > v) v = w; }
    return head === "max" ? v : head === "mean" ? sum / L.H : sum;
  };

  /** Query ``i``'s row shown for ``head`` (Float32Array n). */
  A.row = function (L, head, i) {
    const out = new Float32Array(L.n);
    reducedRow(L, head, i, out, new Float32Array(L.n));
    return out;
  };

  /** Key ``j``'s column shown for ``head`` (Float32Array n). */
  A.column = function (L, head, j) {
    const out = new Float32Array(L.n);
    for (let i = 0; i < L.n; i++) out[i] = A.cell(L, head, i, j);
    return out;
  };

  /** One pass over every row: the image max-pooled to at most MAX_SIDE a side and the attention
   * each key receives (column means); yields to the browser every SLICE_MS and gives null once
   * ``stale()`` says a newer render started. */
  A.full = async function (L, head, stale = () => false) {
    const n = L.n, block = Math.max(1, Math.ceil(n / MAX_SIDE)), side = Math.ceil(n / block);
    const image = new Float32Array(side * side), sums = new Float64Array(n);
    const row = new Float32Array(n), scratch = new Float32Array(n), pixel = new Int32Array(n);
    for (let j = 0; j < n; j++) pixel[j] = Math.floor(j / block);
    let mark = performance.now(), span = [0, n];
    for (let i = 0; i < n; i++) {
      span = reducedRow(L, head, i, row, scratch, span);  // zero outside the span, cleared from the last one
      const [lo, hi] = span;
      for (let j = lo; j < hi; j++) sums[j] += row[j];
      if (block === 1) image.set(row.subarray(lo, hi), i * n + lo);
      else {
        const base = Math.floor(i / block) * side;
        for (let j = lo; j < hi; j++) { const c = base + pixel[j]; if (row[j] > image[c]) image[c] = row[j]; }
      }
      if (performance.now() - mark > SLICE_MS) {
        await new Promise((resolve) => setTimeout(resolve, 0));
        if (stale()) return null;
        mark = performance.now();
      }
    }
    const received = new Float32Array(n);
    for (let j = 0; j < n; j++) received[j] = sums[j] / (n || 1);
    return { image, side, block, received };
  };

  const doc = () => M.docs[state.doc];
  const tokenText = (i) => `${doc().tokens[i]} #${doc().start + i}`;
  A.tokenLabel = function (value) {
    if (!M || !M.docs.length) return "";
    const i = Math.round(value);
    return i >= 0 && i < doc().tokens.length ? tokenText(i) : "";
  };
  /** The hover's attention value: for a q/k document the exact weight of the cell under the pointer
   * (the image may be max-pooled), else the image value. */
  A.cellLabel = function (value, vars) {
    const L = A.layer, n = M && M.docs.length ? doc().tokens.length : 0;
    if (L && L.kind === "qk" && vars && Number.isFinite(vars.x) && Number.isFinite(vars.y)) {
      const i = Math.round(vars.y), j = Math.round(vars.x);
      if (i >= 0 && i < n && j >= 0 && j < n) value = A.cell(L, state.head, i, j);
    }
    return Number.isFinite(value) ? Number(value).toFixed(5) : "-";
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

  /** Draw ``m`` (side x side, row-major) over the n x n token grid. */
  function drawMatrix(m, n, side = n) {
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
    const image = B.ndarray(m, { dtype: "float32", shape: [side, side] });
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

  /** What colours the text now, from the matrix (uint8 payload) or computed from q/k. */
  function currentValues() {
    const n = doc().tokens.length, s = state.selected, L = A.layer;
    if (A.current) return A.vector(A.current, n);
    if (!L || L.kind !== "qk" || !A.view) return null;
    if (s !== null && state.mode === "from") return A.row(L, state.head, s);
    if (s !== null && state.mode === "to") return A.column(L, state.head, s);
    return A.view.received;
  }

  function colourText() {
    const n = doc().tokens.length;
    if (!spans.length) return;
    const t0 = performance.now();
    const v = (A.values = currentValues());
    if (!v) return;
    A.timings = { ...A.timings, values: performance.now() - t0 };
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
      A.current = A.values = A.layer = A.view = null;
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
    if (L.kind === "qk") {
      const view = await A.full(L, state.head, () => token !== run);
      if (!view || token !== run) return;
      A.current = null;
      A.layer = L;
      A.view = view;
    } else {
      A.current = A.matrix(L, state.head);
      A.layer = L;
      A.view = { image: A.current, side: L.n, block: 1 };
    }
    const t1 = performance.now();
    drawMatrix(A.view.image, L.n, A.view.side);
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
    // a probability is null where the model has none for that class (a gold label outside a zero-shot model's labels)
    [...d.probabilities].sort((a, b) => (b[1] ?? -1) - (a[1] ?? -1)).forEach(([name, p]) => {
      const row = el("tr", name === d.prediction ? "attviz-predicted" : "");
      const label = el("td", "", name);
      if (name === d.label) label.append(" ", el("span", "attviz-tag", "gold"));
      if (name === d.prediction) label.append(" ", el("span", "attviz-tag", "predicted"));
      const bar = el("div", "attviz-bar");
      bar.style.width = `${p == null ? 0 : Math.max(0, Math.min(1, p)) * 100}%`;
      const barCell = el("td", "attviz-bar-cell");
      barCell.append(bar);
      row.append(label, barCell, el("td", "attviz-num", p == null ? "–" : p.toFixed(3)));
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
