"""The heatmap explorer: AA-CLIP's maps beside plain CLIP's, per image, to compare and to find failures.

    data = load_explorer(["runs/x/results/MVTec/AA-CLIP-transductive"],       # `aaclip test --save-predictions`
                         baseline=["runs/clip/MVTec"], cfg=Config().explore)  # the plain-CLIP run, optional
    html = static_page(data)     # self-contained: pictures, level grids, a canvas and explore.js (no kernel)
    view = widget(data)          # ipywidgets whose controls are linked in the browser (no kernel needed)

Everything is read from saved predictions (their level grids, scores and ground truth) and the
test images on disk: nothing is recomputed by the model. What is shown (book:protocol-explorer):

- the image with its ground-truth outline (white) and the predicted region at a pixel threshold
  (yellow), with that image's pixel precision, recall and IoU at the display resolution;
- AA-CLIP's fused map, plain CLIP's, and AA-CLIP's level maps, on one colour scale with its bar:
  "as scored" (the map the metrics use, under the transductive or the inductive normalisation of
  book:method-normalisation, on [0, 1]) or "raw" (the level similarity (S_abnormal - S_normal + 1) / 2;
  a fused map shown as the mean over levels);
- each method's image score, its class's F1-max threshold and the label it gives;
- the images of a class ordered by score, by label, or with the most wrong first (false positives
  and false negatives at the class threshold, the furthest from it first).

A class's images in the page are a sample (`ExploreConfig.per_class`): the most wrong first, then a
spread over the scores; both views fit the page budget by dropping the last-chosen images.

One module per part: `data` (what is read and chosen, and the page budget), `shown` (what a view
shows, computed the same way in Python and in explore.js), `static` (the self-contained page), and
`widget` (the ipywidgets view).
"""

from aaclip.explore.data import (METHODS, MODES, ExploredClass, ExploredImage, ExplorerData, choose_images,
                                 fit_budget, load_explorer)
from aaclip.explore.shown import (COLOUR_TITLES, COLOURS, ORDERS, colour_range, display_order, pixel_scores,
                                  region_outline, score_lines, shown_maps, upsample)
from aaclip.explore.static import entry_bytes, static_entry, static_html, static_page, static_payload
from aaclip.explore.widget import close_widget, widget, widget_state_bytes

__all__ = [
    "METHODS", "MODES", "COLOURS", "COLOUR_TITLES", "ORDERS", "ExploredClass", "ExploredImage", "ExplorerData",
    "choose_images", "fit_budget", "load_explorer", "colour_range", "display_order", "pixel_scores", "region_outline",
    "score_lines", "shown_maps", "upsample", "entry_bytes", "static_entry", "static_html", "static_page",
    "static_payload", "close_widget", "widget", "widget_state_bytes",
]  # fmt: skip
