"""The static view: one self-contained HTML block (pictures, uint16 level grids, explore.js), no kernel."""

from __future__ import annotations

import base64
import html as html_lib
import io
import json
import uuid
from importlib import resources

import numpy as np
from PIL import Image

from aaclip.explore.data import MODES, ExplorerData, ExploredImage
from aaclip.explore.shown import COLOUR_TITLES, ORDERS


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_uri(pixels: np.ndarray, photo: bool = False) -> str:
    """A data URI: JPEG for photos larger than 128 px (smaller), PNG otherwise (exact)."""
    if photo and max(pixels.shape[:2]) > 128:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=88)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode()


def quantised(grid: np.ndarray) -> dict:
    """One method's (L, g, g) grids as uint16 per level over its own range, base64 (little-endian)."""
    lo, hi = grid.min(axis=(1, 2)), grid.max(axis=(1, 2))
    scale = np.where(hi > lo, hi - lo, 1.0)
    q = np.round((grid - lo[:, None, None]) / scale[:, None, None] * 65535).astype("<u2")
    return {"g": int(grid.shape[-1]), "lo": lo.astype(float).tolist(), "hi": hi.astype(float).tolist(),
            "data": base64.b64encode(q.tobytes()).decode()}


def static_entry(image: ExploredImage) -> dict:
    """The image as the static page carries it (cached: its size counts against the budget)."""
    if "static" not in image.cache:
        h, w = image.gt_mask.shape
        image.cache["static"] = {
            "name": image.name, "label": image.gt_label, "w": w, "h": h,
            "picture": data_uri(image.picture, photo=True),
            "mask": data_uri(image.gt_mask.astype(np.uint8) * 255),
            "grids": {m: quantised(g) for m, g in image.grids.items()},
            "score": image.pred_score,
        }
    return image.cache["static"]


def entry_bytes(entry) -> int:
    return len(json.dumps(entry))


def static_payload(data: ExplorerData) -> dict:
    import matplotlib

    jet = (matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(int).tolist()
    classes = []
    for cls in data.classes:
        classes.append({
            "title": cls.title, "domain": cls.domain, "levels": cls.n_levels, "n_images": cls.n_images,
            "raw_range": cls.raw_range, "level_range": cls.level_range, "raw_colours": cls.raw_colour_range(data.methods),
            "image_threshold": _json_floats(cls.image_threshold), "pixel_threshold": _json_floats(cls.pixel_threshold),
            "images": [static_entry(im) for im in cls.images],
        })  # fmt: skip
    return {"methods": data.methods, "modes": list(MODES), "orders": list(ORDERS), "colours": COLOUR_TITLES,
            "jet": jet, "classes": classes}


def _json_floats(nested: dict) -> dict:
    return {k: {m: (None if v != v else v) for m, v in d.items()} for k, d in nested.items()}


def static_html(data: ExplorerData) -> str:
    """The static view: a self-contained HTML block (no kernel, no network); explore.js draws everything."""
    uid = "aaclip-explorer-" + uuid.uuid4().hex[:8]
    script = resources.files("aaclip.explore").joinpath("explore.js").read_text()
    payload = json.dumps(static_payload(data), separators=(",", ":"))
    return (f'<div class="aaclip-explorer" id="{uid}"></div>\n'
            f'<script type="application/json" id="{uid}-data">{payload}</script>\n'
            f"<script>{script}\naaclipExplorer(document.getElementById({json.dumps(uid)}));</script>\n")


def static_page(data: ExplorerData, title: str = "AA-CLIP heatmap explorer") -> str:
    """A whole HTML page around `static_html` (what `aaclip explore` writes)."""
    note = (f"{data.n_images} images of {len(data.classes)} classes from {', '.join(map(html_lib.escape, data.sources))}"
            + (f"; {data.dropped} more left out to keep the page within its budget" if data.dropped else ""))
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html_lib.escape(title)}</title></head>"
            f"<body style='font-family:sans-serif'><h1>{html_lib.escape(title)}</h1><p>{note}</p>\n"
            f"{static_html(data)}</body></html>\n")
