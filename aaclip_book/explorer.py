"""Chapter 6, the heatmap explorer: class, image, level, threshold and overlay opacity.

Two views of the same `ExplorerData`:
- `widget(data)`: ipywidgets, redrawn by the kernel (Jupyter, or the book's embedded widget state,
  which shows the controls and the first view);
- `static_html(data)`: a self-contained HTML block (PNGs as data URIs and a few lines of inline
  JavaScript compositing them on a canvas), so a reader of the static book, without a kernel,
  still changes class, image, level, threshold and opacity.
Both draw with `render`'s rule: the heat colour-mapped on a fixed [0, 1] scale (jet), blended
with the given opacity only where heat >= threshold; the ground truth outlined in white.
"""

from __future__ import annotations

import base64
import html
import io
import json
import uuid
from dataclasses import dataclass

import numpy as np
from PIL import Image

from aaclip.viz import mask_outline, overlay

FUSED = "fused map (as scored)"


@dataclass
class ExplorerData:
    classes: list[str]
    levels: list[str]  # FUSED first, then one name per level
    items: dict[str, list[dict]]  # class -> [{"image": uint8 (S,S,3), "mask": bool (S,S), "maps": {level: (S,S) in [0,1]}, "caption": str}]


def explorer_data(book, model, per_class: int = 4) -> "ExplorerData":
    """The explorer over every target set: saved predictions joined with per-level maps of a few images per class."""
    from aaclip_book import runs, samples, unawareness

    parts = []
    for name in book.cfg.eval.datasets:
        predictions = runs.ensure_predictions(book.cfg, name, progress=book.progress)
        dataset = runs.dataset(model, book.cfg, name)
        indices = samples.pick_images(dataset, per_class=per_class, seed=book.cfg.train.seed)
        maps = unawareness.level_predictions(model, book.cfg, dataset, indices, "AA-CLIP")
        pictures, _ = samples.pictures(dataset, indices)
        by_class = {f"{name} / {c}": [k for k, c2 in enumerate(maps.class_name) if c2 == c] for c in dataset.class_names}
        parts.append(build(predictions, maps, pictures, [f"block {b}" for b in model.levels], by_class))
    return merge(parts)


def counts(data: "ExplorerData") -> dict:
    return {"n_explorer_classes": len(data.classes), "n_explorer_images": sum(len(items) for items in data.items.values())}


def build(predictions, maps, pictures, level_names, indices_by_class: dict[str, list[int]], max_size: int = 256) -> ExplorerData:
    """Join saved predictions (the fused, normalised map and the score) with per-level maps.

    `maps`: a Batch with `level_maps` of the chosen images, `pictures` their uint8 pixels;
    `indices_by_class`: which of its rows belong to each class. Level maps are raw similarities on
    different scales, so each is min-max scaled over the shown images of its class (display only;
    the fused map is the one the metrics use, already normalised). Pictures larger than `max_size`
    are shrunk for display.
    """
    where = {path: i for i, path in enumerate(predictions.image_path)}
    gt_mask = maps.masks()
    items = {}
    for class_name, rows in indices_by_class.items():
        scaled = {}
        for l, name in enumerate(level_names):
            values = maps.level_maps[rows, l]
            lo, hi = float(values.min()), float(values.max())
            scaled[name] = (values - lo) / max(hi - lo, 1e-12)
        entries = []
        for k, row in enumerate(rows):
            p = where[maps.image_path[row]]
            label = "anomalous" if int(predictions.gt_label[p]) == 1 else "normal"
            heat = {FUSED: np.clip(predictions.anomaly_map[p], 0, 1), **{n: scaled[n][k] for n in scaled}}
            entries.append({
                "image": shrink(pictures[row], max_size, Image.BICUBIC),
                "mask": shrink(gt_mask[row], max_size, Image.NEAREST),
                "maps": {n: shrink(m.astype(np.float32), max_size, Image.BILINEAR) for n, m in heat.items()},
                "caption": f"{class_name} #{k + 1}: {label}, image score {float(predictions.pred_score[p]):.3f}",
            })
        items[class_name] = entries
    return ExplorerData(list(items), [FUSED, *level_names], items)


def merge(parts: list[ExplorerData]) -> ExplorerData:
    """One explorer over several datasets (class names already made unique, e.g. "mini-target / nut")."""
    items = {name: entries for part in parts for name, entries in part.items.items()}
    return ExplorerData(list(items), parts[0].levels, items)


def shrink(array: np.ndarray, size: int, resample) -> np.ndarray:
    """Resize a square picture (uint8 RGB, bool mask or float map) to at most size x size."""
    if array.shape[0] <= size:
        return array
    if array.dtype == bool:
        return np.asarray(Image.fromarray(array.astype(np.uint8)).resize((size, size), resample)) != 0
    if array.dtype == np.float32:
        return np.asarray(Image.fromarray(array, mode="F").resize((size, size), resample))
    return np.asarray(Image.fromarray(array).resize((size, size), resample))


# --------------------------------------------------------------------------- drawing
def draw_view(image: np.ndarray, heat: np.ndarray, mask: np.ndarray | None, threshold: float, opacity: float) -> np.ndarray:
    """uint8 RGB: jet(heat) blended at `opacity` where heat >= threshold, mask outlined in white."""
    out = overlay(image, heat, 0.0, 1.0, opacity, threshold=threshold)
    if mask is not None:
        out[mask_outline(mask)] = 255
    return out


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_uri(pixels: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode()


# --------------------------------------------------------------------------- the live widget
def widget(data: ExplorerData, width: int = 320):
    """ipywidgets controls and an Image, redrawn by the kernel on every change."""
    import ipywidgets as w

    style = {"description_width": "80px"}
    cls = w.Dropdown(options=data.classes, description="class", style=style)
    index = w.IntSlider(min=0, max=len(data.items[data.classes[0]]) - 1, description="image", style=style)
    level = w.Dropdown(options=data.levels, description="level", style=style)
    threshold = w.FloatSlider(value=0.5, min=0, max=1, step=0.05, description="threshold", style=style)
    opacity = w.FloatSlider(value=0.5, min=0, max=1, step=0.05, description="opacity", style=style)
    truth = w.Checkbox(value=True, description="outline ground truth", style=style)
    view = w.Image(format="png", layout=w.Layout(width=f"{width}px", height=f"{width}px"))
    caption = w.HTML()

    def redraw(_=None):
        index.max = len(data.items[cls.value]) - 1
        item = data.items[cls.value][index.value]
        pixels = draw_view(item["image"], item["maps"][level.value], item["mask"] if truth.value else None,
                        threshold.value, opacity.value)
        view.value = png_bytes(pixels)
        caption.value = f"<b>{html.escape(item['caption'])}</b>; level: {html.escape(level.value)}"

    for control in (cls, index, level, threshold, opacity, truth):
        control.observe(redraw, names="value")
    redraw()
    controls = w.VBox([cls, index, level, threshold, opacity, truth])
    return w.VBox([w.HBox([controls, view]), caption])


# --------------------------------------------------------------------------- the static view


def jet_table() -> list[list[int]]:
    import matplotlib

    return (matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(int).tolist()


def static_html(data: ExplorerData, width: int = 320) -> str:
    """A self-contained HTML block: PNG data URIs + a canvas + inline JavaScript (no kernel, no CDN)."""
    uid = "aaclip-explorer-" + uuid.uuid4().hex[:8]
    payload = {
        "levels": data.levels,
        "jet": jet_table(),
        "classes": {
            c: [
                {
                    "image": data_uri(item["image"]),
                    "outline": data_uri(outline_rgba(item["mask"])),
                    "maps": {name: data_uri((np.clip(item["maps"][name], 0, 1) * 255 + 0.5).astype(np.uint8))
                             for name in data.levels},
                    "caption": item["caption"],
                }
                for item in items
            ]
            for c, items in data.items.items()
        },
    }
    size = data.items[data.classes[0]][0]["image"].shape[0]
    options = lambda values: "".join(f"<option>{html.escape(v)}</option>" for v in values)  # noqa: E731
    return STATIC_TEMPLATE.format(
        uid=uid, size=size, width=width, classes=options(data.classes), levels=options(data.levels),
        payload=json.dumps(payload),
    )


def outline_rgba(mask: np.ndarray) -> np.ndarray:
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask_outline(mask)] = (255, 255, 255, 255)
    return rgba


STATIC_TEMPLATE = """
<div class="aaclip-explorer" id="{uid}" style="display:flex;gap:1.5em;flex-wrap:wrap;align-items:flex-start">
  <div style="display:grid;grid-template-columns:auto auto;gap:.4em .8em;align-items:center">
    <label>class</label><select data-role="class">{classes}</select>
    <label>image</label><input data-role="image" type="range" min="0" max="0" value="0">
    <label>level</label><select data-role="level">{levels}</select>
    <label>threshold</label><input data-role="threshold" type="range" min="0" max="1" step="0.05" value="0.5">
    <label>opacity</label><input data-role="opacity" type="range" min="0" max="1" step="0.05" value="0.5">
    <label>ground truth</label><input data-role="truth" type="checkbox" checked>
  </div>
  <div>
    <canvas width="{size}" height="{size}" style="width:{width}px;height:{width}px;image-rendering:pixelated;border:1px solid #ccc"></canvas>
    <div data-role="caption" style="font-size:90%;max-width:{width}px"></div>
  </div>
</div>
<script>
(function () {{
  const root = document.getElementById("{uid}");
  const data = {payload};
  const $ = (role) => root.querySelector('[data-role="' + role + '"]');
  const canvas = root.querySelector("canvas"), ctx = canvas.getContext("2d");
  const load = (src) => new Promise((done) => {{ const im = new Image(); im.onload = () => done(im); im.src = src; }});
  async function draw() {{
    const items = data.classes[$("class").value];
    $("image").max = items.length - 1;
    const item = items[Math.min(+$("image").value, items.length - 1)];
    const level = $("level").value, threshold = +$("threshold").value, opacity = +$("opacity").value;
    const [image, heat, outline] = await Promise.all([load(item.image), load(item.maps[level]), load(item.outline)]);
    const n = canvas.width;
    ctx.drawImage(heat, 0, 0); const h = ctx.getImageData(0, 0, n, n).data;
    ctx.drawImage(image, 0, 0); const px = ctx.getImageData(0, 0, n, n);
    for (let i = 0; i < h.length; i += 4) {{
      const v = h[i];
      if (v / 255 < threshold) continue;
      const c = data.jet[v];
      for (let k = 0; k < 3; k++) px.data[i + k] = (1 - opacity) * px.data[i + k] + opacity * c[k];
    }}
    ctx.putImageData(px, 0, 0);
    if ($("truth").checked) ctx.drawImage(outline, 0, 0);
    $("caption").textContent = item.caption + "; level: " + level + "; threshold " + threshold + ", opacity " + opacity;
    root.dataset.rendered = "true";
  }}
  root.querySelectorAll("select, input").forEach((el) => el.addEventListener("input", draw));
  $("class").addEventListener("change", () => {{ $("image").value = 0; draw(); }});
  draw();
}})();
</script>
"""
