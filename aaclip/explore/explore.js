// The static view of the heatmap explorer (aaclip/explore.py writes its data; no kernel, no network).
//
// From each image's blurred level grids it rebuilds the maps exactly as the library does
// (bilinear upsampling with aligned corners, the sum over levels, the transductive or inductive
// normalisation of book:method-normalisation), colours them on one scale, and draws the predicted
// region at the pixel threshold against the ground truth. Mirrors aaclip.explore.shown_maps.
function aaclipExplorer(root) {
  "use strict";
  const data = JSON.parse(document.getElementById(root.id + "-data").textContent);
  const methods = data.methods;
  const el = (tag, attrs, parent) => {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => (k === "text" ? (node.textContent = v) : node.setAttribute(k, v)));
    if (parent) parent.appendChild(node);
    return node;
  };
  const select = (role, options, parent, label) => {
    const wrap = el("label", { style: "margin-right:1em" }, parent);
    wrap.appendChild(document.createTextNode(label + " "));
    const s = el("select", { "data-role": role }, wrap);
    options.forEach(([value, text]) => el("option", { value: value, text: text }, s));
    return s;
  };

  // ------------------------------------------------------------------ controls
  root.style.fontSize = "90%";
  const bar1 = el("div", { style: "margin:.3em 0" }, root);
  const classSel = select("class", data.classes.map((c, i) => [i, c.title]), bar1, "class");
  const orderSel = select("order", data.orders.map((o) => [o, o]), bar1, "order by");
  const bar2 = el("div", { style: "margin:.3em 0" }, root);
  const imageWrap = el("label", { style: "margin-right:1em" }, bar2);
  imageWrap.appendChild(document.createTextNode("image "));
  const imageRange = el("input", { type: "range", min: 0, max: 0, value: 0, step: 1, "data-role": "image" }, imageWrap);
  const imageText = el("span", { "data-role": "image-text" }, imageWrap);
  const modeSel = select("mode", data.modes.map((m) => [m, m]), bar2, "scores");
  const colourSel = select("colour", Object.entries(data.colours), bar2, "colours");
  const bar3 = el("div", { style: "margin:.3em 0" }, root);
  const thrWrap = el("label", {}, bar3);
  thrWrap.appendChild(document.createTextNode("pixel threshold "));
  const thrRange = el("input", { type: "range", min: 0, max: 1, step: 0.005, value: 0.5, "data-role": "threshold" }, thrWrap);
  const thrText = el("span", { "data-role": "threshold-text" }, thrWrap);
  const reset = el("button", { type: "button", "data-role": "reset", style: "margin-left:.5em", text: "class F1-max" }, bar3);

  const panels = el("div", { style: "display:flex;gap:12px;flex-wrap:wrap;align-items:flex-start;margin-top:.5em" }, root);
  const panel = (title, role) => {
    const box = el("div", {}, panels);
    el("div", { text: title, style: "font-weight:bold" }, box);
    return el("canvas", { "data-role": role }, box);
  };
  const pictureCanvas = panel("image", "picture");
  const mapCanvas = {};
  methods.forEach((m) => (mapCanvas[m] = panel(m, "map-" + m)));
  const levelBox = el("div", {}, panels);
  el("div", { text: "AA-CLIP levels", style: "font-weight:bold" }, levelBox);
  const levelGrid = el("div", { style: "display:grid;grid-template-columns:auto auto;gap:2px" }, levelBox);
  const barBox = el("div", {}, panels);
  el("div", { text: "colour scale", style: "font-weight:bold" }, barBox);
  const barCanvas = el("canvas", { "data-role": "colour-bar" }, barBox);
  const barTitle = el("div", { "data-role": "colour-title", style: "max-width:110px;font-size:85%" }, barBox);
  const scoreText = el("div", { "data-role": "scores", style: "margin-top:.4em;font-family:monospace" }, root);
  const pixelText = el("div", { "data-role": "pixels", style: "margin-top:.2em;font-family:monospace" }, root);
  const noteText = el("div", { style: "margin-top:.2em;color:#555" }, root);

  // ------------------------------------------------------------------ maps
  const decoded = new Map();
  function grids(image, method) {  // Float32Array (L, g, g) from the uint16 levels
    const key = image.name + "|" + method;
    if (decoded.has(key)) return decoded.get(key);
    const q = image.grids[method], g = q.g, L = q.lo.length;
    const bytes = Uint8Array.from(atob(q.data), (c) => c.charCodeAt(0));
    const view = new DataView(bytes.buffer), out = new Float32Array(L * g * g);
    for (let l = 0; l < L; l++)
      for (let i = 0; i < g * g; i++) {
        const k = l * g * g + i;
        out[k] = q.lo[l] + (view.getUint16(2 * k, true) / 65535) * (q.hi[l] - q.lo[l]);
      }
    decoded.set(key, out);
    return out;
  }
  function upsample(src, L, g, h, w) {  // bilinear, align_corners=True: (L, g, g) -> (L, h, w)
    const out = new Float32Array(L * h * w);
    for (let y = 0; y < h; y++) {
      const sy = h > 1 ? (y * (g - 1)) / (h - 1) : 0, y0 = Math.floor(sy), y1 = Math.min(y0 + 1, g - 1), fy = sy - y0;
      for (let x = 0; x < w; x++) {
        const sx = w > 1 ? (x * (g - 1)) / (w - 1) : 0, x0 = Math.floor(sx), x1 = Math.min(x0 + 1, g - 1), fx = sx - x0;
        for (let l = 0; l < L; l++) {
          const b = l * g * g;
          const top = src[b + y0 * g + x0] * (1 - fx) + src[b + y0 * g + x1] * fx;
          const bottom = src[b + y1 * g + x0] * (1 - fx) + src[b + y1 * g + x1] * fx;
          out[l * h * w + y * w + x] = top * (1 - fy) + bottom * fy;
        }
      }
    }
    return out;
  }
  const sigmoid = (v) => 1 / (1 + Math.exp(-v));
  const clip01 = (v) => Math.min(1, Math.max(0, v));
  function shown(cls, image, method, colour, mode) {  // {fused: (h*w), levels: [(h*w)]} in display units
    const L = cls.levels, g = image.grids[method].g, h = image.h, w = image.w, n = h * w;
    const up = upsample(grids(image, method), L, g, h, w);
    const fused = new Float32Array(n), levels = [];
    for (let l = 0; l < L; l++) levels.push(up.subarray(l * n, (l + 1) * n));
    for (let i = 0; i < n; i++) for (let l = 0; l < L; l++) fused[i] += levels[l][i];
    if (colour === "raw") return { fused: fused.map((v) => v / L), levels: levels };
    if (mode === "transductive") {
      const [lo, hi] = cls.raw_range[method];
      const lr = cls.level_range[method];
      return {
        fused: fused.map((v) => clip01((v - lo) / Math.max(hi - lo, 1e-12))),
        levels: levels.map((m, l) => m.map((v) => clip01((v - lr[l][0]) / Math.max(lr[l][1] - lr[l][0], 1e-12)))),
      };
    }
    return { fused: fused.map((v) => sigmoid((2 * (v - L / 2)) / L)), levels: levels.map((m) => m.map((v) => sigmoid(2 * (v - 0.5)))) };
  }
  function outline(region, h, w) {  // as aaclip.explore.region_outline: the region minus its 4-neighbour
    const edge = new Uint8Array(h * w);  // erosion, the outside of the picture counted as outside
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++) {
        const i = y * w + x;
        if (!region[i]) continue;
        const inner = y > 0 && region[i - w] && y < h - 1 && region[i + w] && x > 0 && region[i - 1] && x < w - 1 && region[i + 1];
        edge[i] = inner ? 0 : 1;
      }
    return edge;
  }

  // ------------------------------------------------------------------ drawing
  const pictures = new Map();
  const load = (src) => {
    if (!pictures.has(src))
      pictures.set(src, new Promise((done) => { const im = new Image(); im.onload = () => done(im); im.src = src; }));
    return pictures.get(src);
  };
  function scaleOf(image) { return Math.max(1, Math.floor(128 / Math.max(image.w, image.h))); }
  function sized(canvas, w, h, scale) {
    canvas.width = w; canvas.height = h;
    canvas.style.width = w * scale + "px"; canvas.style.height = h * scale + "px";
    return canvas.getContext("2d");
  }
  function paintHeat(canvas, values, w, h, lo, hi, scale) {
    const ctx = sized(canvas, w, h, scale), px = ctx.createImageData(w, h);
    for (let i = 0; i < w * h; i++) {
      const c = data.jet[Math.round(255 * clip01((values[i] - lo) / Math.max(hi - lo, 1e-12)))];
      px.data[4 * i] = c[0]; px.data[4 * i + 1] = c[1]; px.data[4 * i + 2] = c[2]; px.data[4 * i + 3] = 255;
    }
    ctx.putImageData(px, 0, 0);
  }
  function paintBar(lo, hi, title, height) {
    const w = 18, ctx = sized(barCanvas, 70, height, 1);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, 70, height);
    for (let y = 0; y < height; y++) {
      const c = data.jet[Math.round(255 * (1 - y / Math.max(height - 1, 1)))];
      ctx.fillStyle = "rgb(" + c.join(",") + ")"; ctx.fillRect(0, y, w, 1);
    }
    ctx.fillStyle = "#000"; ctx.font = "11px sans-serif";
    [0, 0.5, 1].forEach((f) => {
      const y = Math.round((1 - f) * (height - 1));
      ctx.fillRect(w, y, 4, 1);
      ctx.fillText((lo + f * (hi - lo)).toPrecision(3), w + 6, Math.min(Math.max(10, y + 4), height - 2));
    });
    barTitle.textContent = title;
  }
  const fmt = (v) => (v === null || v !== v ? "undefined" : v.toFixed(3));
  function scoreLines(cls, image, mode) {
    const truth = image.label ? "anomalous" : "normal";
    const lines = methods.map((m) => {
      const s = image.score[m][mode], t = cls.image_threshold[m][mode];
      if (t === null) return m + " " + s.toFixed(3) + " (no threshold: the class has one label only)";
      const label = s >= t ? "anomalous" : "normal";
      const verdict = label === truth ? "right" : label === "anomalous" ? "false positive" : "false negative";
      return m + " " + s.toFixed(3) + (s >= t ? " >= " : " < ") + t.toFixed(3) + " (F1-max): " + label + ", " + verdict;
    });
    return lines.concat(["truth: " + truth]);
  }
  function order(cls, how, mode) {  // as aaclip.explore.display_order
    const idx = cls.images.map((_, i) => i), score = (i) => cls.images[i].score["AA-CLIP"][mode];
    const byScore = idx.slice().sort((a, b) => score(b) - score(a) || a - b);
    if (how === "score") return byScore;
    if (how === "label") return byScore.slice().sort((a, b) => cls.images[b].label - cls.images[a].label || byScore.indexOf(a) - byScore.indexOf(b));
    const t = cls.image_threshold["AA-CLIP"][mode];
    const wrong = (i) => (t !== null && !!cls.images[i].label !== score(i) >= t ? Math.abs(score(i) - t) : -1);
    return byScore.slice().sort((a, b) => wrong(b) - wrong(a) || byScore.indexOf(a) - byScore.indexOf(b));
  }

  let drawing = 0;
  async function draw() {
    const token = ++drawing;
    const cls = data.classes[+classSel.value], mode = modeSel.value, colour = colourSel.value;
    const sequence = order(cls, orderSel.value, mode);
    imageRange.max = sequence.length - 1;
    const position = Math.min(+imageRange.value, sequence.length - 1);
    const image = cls.images[sequence[position]];
    imageText.textContent = " " + (position + 1) + " / " + sequence.length + " (" + image.name + ")";
    const threshold = +thrRange.value;
    thrText.textContent = " " + threshold.toFixed(3);
    const [picture, maskPicture] = await Promise.all([load(image.picture), load(image.mask)]);
    if (token !== drawing) return;
    const w = image.w, h = image.h, n = w * h, scale = scaleOf(image);
    const maps = {};
    methods.forEach((m) => (maps[m] = shown(cls, image, m, colour, mode)));
    const [lo, hi] = colour === "raw" ? cls.raw_colours : [0, 1];
    methods.forEach((m) => paintHeat(mapCanvas[m], maps[m].fused, w, h, lo, hi, scale));
    levelGrid.replaceChildren();
    maps["AA-CLIP"].levels.forEach((m, l) => {
      const c = el("canvas", { "data-role": "level-" + (l + 1), title: "level " + (l + 1) }, levelGrid);
      paintHeat(c, m, w, h, lo, hi, scale / 2);
    });
    paintBar(lo, hi, data.colours[colour] + (colour === "scored" ? " (" + mode + ")" : ""), Math.max(h * scale, 96));
    // the picture, the truth (white) and the region the AA-CLIP map predicts at the threshold (yellow)
    const ctx = sized(pictureCanvas, w, h, scale);
    ctx.drawImage(maskPicture, 0, 0, w, h);
    const truthPx = ctx.getImageData(0, 0, w, h).data, truth = new Uint8Array(n);
    for (let i = 0; i < n; i++) truth[i] = truthPx[4 * i] > 127 ? 1 : 0;
    ctx.drawImage(picture, 0, 0, w, h);
    const px = ctx.getImageData(0, 0, w, h);
    const scored = colour === "raw" ? shown(cls, image, "AA-CLIP", "scored", mode).fused : maps["AA-CLIP"].fused;
    const region = new Uint8Array(n);
    let tp = 0, predicted = 0, positives = 0, union = 0;
    for (let i = 0; i < n; i++) {
      region[i] = scored[i] >= threshold ? 1 : 0;
      tp += region[i] & truth[i]; predicted += region[i]; positives += truth[i]; union += region[i] | truth[i];
    }
    const truthEdge = outline(truth, h, w), predictedEdge = outline(region, h, w);
    for (let i = 0; i < n; i++) {
      const colourAt = predictedEdge[i] ? [255, 220, 0] : truthEdge[i] ? [255, 255, 255] : null;
      if (colourAt) for (let k = 0; k < 3; k++) px.data[4 * i + k] = colourAt[k];
    }
    ctx.putImageData(px, 0, 0);
    const precision = predicted ? tp / predicted : null, recall = positives ? tp / positives : null;
    const iou = union ? tp / union : null;
    scoreText.innerHTML = scoreLines(cls, image, mode).map((s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;")).join("<br>");
    pixelText.textContent = "pixel threshold " + threshold.toFixed(3) + " (class F1-max " + fmt(cls.pixel_threshold["AA-CLIP"][mode]) +
      "): precision " + fmt(precision) + ", recall " + fmt(recall) + ", IoU " + fmt(iou) + " at " + w + "x" + h + " px" +
      " (yellow: the predicted region, white: the ground truth)";
    noteText.textContent = cls.images.length + " of the class's " + cls.n_images + " test images: the most wrong first, then a spread over the scores.";
    root.dataset.state = JSON.stringify({ cls: cls.title, image: image.name, order: orderSel.value, mode: mode, colour: colour,
      threshold: threshold, precision: precision, recall: recall, iou: iou });
    root.dataset.rendered = String(token);
  }
  function resetThreshold() {
    const t = data.classes[+classSel.value].pixel_threshold["AA-CLIP"][modeSel.value];
    thrRange.value = t === null ? 0.5 : t;
  }
  classSel.addEventListener("change", () => { imageRange.value = 0; resetThreshold(); draw(); });
  modeSel.addEventListener("change", () => { resetThreshold(); draw(); });
  reset.addEventListener("click", () => { resetThreshold(); draw(); });
  [orderSel, colourSel].forEach((s) => s.addEventListener("change", draw));
  [imageRange, thrRange].forEach((r) => r.addEventListener("input", draw));
  resetThreshold();
  draw();
}
