"""The widget view: ipywidgets over pre-drawn panels, every control linked in the browser (jslink and
Stack), so that it works the same in Jupyter and in the static book, without a kernel."""

from __future__ import annotations

import html as html_lib
import json

import numpy as np
from PIL import Image

from aaclip.explore.data import MODES, ExploredClass, ExploredImage, ExplorerData
from aaclip.explore.shown import (COLOUR_TITLES, COLOURS, ORDERS, colour_range, display_order, pixel_scores,
                                  region_outline, score_lines, shown_maps)
from aaclip.explore.static import png_bytes

WIDGET_STEPS = (-0.2, -0.1, 0.0, 0.1, 0.2)  # the widget's threshold steps: offsets from the class's F1-max


GAP = 4  # pixels between the panels of a map row


def widget_panels(cls: ExploredClass, image: ExploredImage, methods) -> dict:
    """Every picture the widget view can show for one image, pre-drawn (cached): the image with its
    ground truth, the predicted outline at each threshold step with that step's pixel scores, and for
    each colour and mode one map row (each method's fused map, then AA-CLIP's levels, 2 x 2 at half size)."""
    if "widget" in image.cache:
        return image.cache["widget"]
    picture = image.picture.copy()
    picture[region_outline(image.gt_mask)] = 255
    panels = {"picture": png_bytes(titled(picture, ["image"], [picture.shape[1]])), "outline": {}, "metrics": {},
              "maps": {}}
    for mode in MODES:
        fused, _ = shown_maps(cls, image, "AA-CLIP", "scored", mode)
        base = cls.pixel_threshold["AA-CLIP"][mode]
        panels["outline"][mode], panels["metrics"][mode] = [], []
        for step in WIDGET_STEPS:
            t = float(np.clip((base if base == base else 0.5) + step, 0.01, 0.99))
            region = fused >= t
            rgba = np.zeros((TITLE_HEIGHT + region.shape[0], region.shape[1], 4), np.uint8)
            rgba[TITLE_HEIGHT:][region_outline(region)] = (255, 220, 0, 255)  # below the picture's title strip
            panels["outline"][mode].append(png_bytes(rgba))
            panels["metrics"][mode].append((t, pixel_scores(region, image.gt_mask)))
    for colour in COLOURS:
        for mode in (MODES if colour == "scored" else MODES[:1]):
            panels["maps"][(colour, mode)] = png_bytes(map_row(cls, image, methods, colour, mode))
    image.cache["widget"] = panels
    return panels


def map_row(cls: ExploredClass, image: ExploredImage, methods, colour: str, mode: str) -> np.ndarray:
    """uint8 (TITLE_HEIGHT + H, W', 3): each method's fused map, then AA-CLIP's level maps 2 x 2 at half
    size, on one jet scale, white gaps between them and their titles above."""
    import matplotlib

    vmin, vmax = colour_range(cls, colour, methods)
    h, w = image.gt_mask.shape

    def levels_of(m):
        return (1 + np.round(254 * np.clip((m - vmin) / max(vmax - vmin, 1e-12), 0, 1))).astype(np.uint8)

    fused = {method: shown_maps(cls, image, method, colour, mode) for method in methods}
    half_h, half_w = (h - GAP // 2) // 2, (w - GAP // 2) // 2
    levels = np.zeros((h, w), np.uint8)
    for k, m in enumerate(fused["AA-CLIP"][1][:4]):
        small = np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((half_w, half_h), Image.BILINEAR))
        y, x = (k // 2) * (h - half_h), (k % 2) * (w - half_w)
        levels[y:y + half_h, x:x + half_w] = levels_of(small)
    parts = [levels_of(fused[method][0]) for method in methods] + [levels]
    gap = np.zeros((h, GAP), np.uint8)
    row = np.concatenate([p for part in parts for p in (part, gap)][:-1], axis=1)
    jet = (matplotlib.colormaps["jet"](np.linspace(0, 1, 255))[:, :3] * 255 + 0.5).astype(np.uint8)
    palette = np.concatenate([np.full((1, 3), 255, np.uint8), jet])
    return titled(palette[row], [*methods, "AA-CLIP levels"], [w + GAP] * len(methods) + [w])


TITLE_HEIGHT = 14  # pixels of the title strip above each widget picture


def titled(pixels: np.ndarray, titles: list[str], widths: list[int]) -> np.ndarray:
    """uint8 (H, W, 3) with a white strip on top holding each title at its panel's left edge."""
    from PIL import ImageDraw, ImageFont

    canvas = Image.new("RGB", (pixels.shape[1], TITLE_HEIGHT + pixels.shape[0]), "white")
    canvas.paste(Image.fromarray(pixels), (0, TITLE_HEIGHT))
    draw, font, x = ImageDraw.Draw(canvas), ImageFont.load_default(size=11), 0
    for title, width in zip(titles, widths):
        draw.text((x + 1, 1), title, fill="black", font=font)
        x += width
    return np.asarray(canvas)


def widget(data: ExplorerData, per_class: int = 3):
    """ipywidgets over the first `per_class` images of each class: every control is linked in the browser
    (jslink and Stack), so the view works the same in Jupyter and in the static book, without a kernel."""
    methods, kit = data.methods, Kit()
    classes = kit.make("Dropdown", options=[(c.title, i) for i, c in enumerate(data.classes)], description="class")
    mode = kit.make("ToggleButtons", options=list(MODES), description="scores")
    colour = kit.make("ToggleButtons", options=[COLOUR_TITLES[c] for c in COLOURS], description="colours")
    panels = [class_panel(cls, cls.images[:per_class], methods, mode, colour, kit) for cls in data.classes]
    view = kit.make("VBox", [kit.make("HBox", [classes, mode]), colour, kit.linked(panels, classes)])
    view.add_class("aaclip-explorer-widget")
    return view


class Kit:
    """Makes the widget view's widgets with shared Layout and style models, one per distinct setting:
    a saved widget state stores every model in full, and thousands of identical empty layouts would
    otherwise outweigh the pictures."""

    STYLES = {"Dropdown": "description", "ToggleButtons": "toggle", "IntSlider": "slider",
              "SelectionSlider": "slider", "HTML": "html"}

    def __init__(self):
        self.layouts, self.styles = {}, {}

    def layout(self, **settings):
        import ipywidgets as w

        key = tuple(sorted(settings.items()))
        if key not in self.layouts:  # (not setdefault: that would make a Layout model on every call)
            self.layouts[key] = w.Layout(**settings)
        return self.layouts[key]

    def style(self, kind: str):
        import ipywidgets as w
        from ipywidgets.widgets.widget_description import DescriptionStyle
        from ipywidgets.widgets.widget_string import HTMLStyle

        if kind not in self.styles:
            make = {"description": DescriptionStyle, "toggle": w.ToggleButtonsStyle, "slider": w.SliderStyle,
                    "html": HTMLStyle}[kind]
            self.styles[kind] = make(**({"description_width": "90px"} if kind != "html" else {}))
        return self.styles[kind]

    def make(self, kind: str, *args, layout=None, **kwargs):
        import ipywidgets as w

        if kind in self.STYLES:
            kwargs["style"] = self.style(self.STYLES[kind])
        return getattr(w, kind)(*args, layout=layout or self.layout(), **kwargs)

    def linked(self, children, control, trait: str = "index", start: int = 0):
        """A Stack of `children` showing the one `control.trait` selects, linked in the browser."""
        import ipywidgets as w

        stack = self.make("Stack", children, selected_index=start)
        w.jslink((control, trait), (stack, "selected_index"))
        return stack


def class_panel(cls: ExploredClass, images: list[ExploredImage], methods, mode, colour, kit: Kit):
    steps = [f"{s:+.2f}" if s else "F1-max" for s in WIDGET_STEPS]
    threshold = kit.make("SelectionSlider", options=steps, value="F1-max", description="pixel thr.")
    shown = ExploredClass(**{**cls.__dict__, "images": images})
    views = [image_panel(cls, image, methods, mode, colour, threshold, kit) for image in images]
    orders = []
    for order in ORDERS:
        sequence = display_order(shown, order, "transductive")
        slider = kit.make("IntSlider", min=0, max=max(len(views) - 1, 0), description="image")
        orders.append(kit.make("VBox", [slider, kit.linked([views[i] for i in sequence], slider, "value")]))
    order = kit.make("ToggleButtons", options=list(ORDERS), description="order by")
    height = max(im.gt_mask.shape[0] for im in images) * zoom_of(images[0])
    bars = []
    for c in COLOURS:
        bar = colour_bar_pixels(cls, c, methods, height)
        size = kit.layout(width=f"{bar.shape[1]}px", height=f"{bar.shape[0]}px")
        bars.append(kit.make("Image", value=png_bytes(bar), format="png", layout=size))
    bars = kit.linked(bars, colour)
    bars.add_class("aaclip-colour-bar")
    note = kit.make("HTML", f"<small>{len(images)} of the class's {cls.n_images} test images (the most wrong first, "
                            "then a spread over the scores); the threshold steps are offsets from the class's pixel "
                            "F1-max threshold</small>")
    return kit.make("VBox", [kit.make("HBox", [order, threshold]),
                             kit.make("HBox", [kit.linked(orders, order), bars]), note])


def zoom_of(image: ExploredImage) -> int:
    return max(1, 120 // max(image.gt_mask.shape))


def image_panel(cls, image, methods, mode, colour, threshold, kit: Kit):
    """One image: the picture with its outlines, the map row, and the scores with the pixel scores."""
    panels = widget_panels(cls, image, methods)
    h, w = image.gt_mask.shape
    zoom = zoom_of(image)
    h += TITLE_HEIGHT
    size = kit.layout(width=f"{zoom * w}px", height=f"{zoom * h}px", grid_area="a")
    row_width = (len(methods) + 1) * w + len(methods) * GAP
    row = kit.layout(width=f"{zoom * row_width}px", height=f"{zoom * h}px")

    def png(value, layout):
        return kit.make("Image", value=value, format="png", layout=layout)

    def by_threshold(children):
        return kit.linked(children, threshold, start=WIDGET_STEPS.index(0.0))

    outlines = kit.linked([by_threshold([png(b, size) for b in panels["outline"][m]]) for m in MODES], mode)
    outlines.layout = kit.layout(grid_area="a")  # the picture's grid cell: the outline lies on the picture
    picture = kit.make("GridBox", [png(panels["picture"], size), outlines],
                       layout=kit.layout(grid_template_areas='"a"'))  # one cell: the outline lies on the picture
    picture.add_class("aaclip-picture")
    maps = kit.linked([kit.linked([png(panels["maps"][("scored", m)], row) for m in MODES], mode),
                       png(panels["maps"][("raw", MODES[0])], row)], colour)
    maps.add_class("aaclip-maps")
    texts = [[kit.make("HTML", "<br>".join([html_lib.escape(x) for x in [image.name, *score_lines(cls, image, methods, m)]]
                                             + [_metric_text(t, s)])) for t, s in panels["metrics"][m]] for m in MODES]
    text = kit.linked([by_threshold(per_mode) for per_mode in texts], mode)
    return kit.make("VBox", [kit.make("HBox", [picture, maps]), text])


def _metric_text(t: float, s: dict) -> str:
    def f(v):
        return "undefined" if v != v else f"{v:.2f}"

    return (f"pixel threshold {t:.2f}: precision {f(s['precision'])}, recall {f(s['recall'])}, IoU {f(s['iou'])} "
            "<small>(yellow: predicted region; white: ground truth)</small>")


def widget_state_bytes(view) -> int:
    """The size of the saved widget state of a view and every model it depends on (links included)."""
    from ipywidgets.embed import dependency_state

    return len(json.dumps(dependency_state([view], drop_defaults=False)))


def close_widget(view) -> None:
    """Close every model a view depends on, so that a discarded view does not enter the saved state."""
    import ipywidgets as w
    from ipywidgets.embed import dependency_state

    for model_id in dependency_state([view]):
        widget = w.Widget.widgets.get(model_id)
        if widget is not None:
            widget.close()


def colour_bar_pixels(cls: ExploredClass, colour: str, methods, height: int) -> np.ndarray:
    from aaclip.viz import colour_bar

    vmin, vmax = colour_range(cls, colour, methods)
    return colour_bar(height, vmin, vmax, label={"scored": "as scored", "raw": "raw"}[colour], font_size=11)
