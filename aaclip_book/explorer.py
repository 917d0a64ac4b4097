"""Chapter 6, the heatmap explorer: the library's explorer (`aaclip.explore`) over the book's test runs.

The chapter reads the predictions chapter 4 saved for AA-CLIP and plain CLIP on every target set
(made here if they are missing), chooses each class's images by `cfg.explore` (papermill:
`-p explore.per_class 8`), fits both views into the page budget (`explore.page_mb`), and shows
the widget view and the static view. Nothing here draws: `aaclip.explore` does, for the book and
for `aaclip explore`.
"""

from __future__ import annotations

from dataclasses import dataclass

from aaclip import explore
from aaclip_book import runs

PAGE_REST_BYTES = 400_000  # the chapter's prose, code and theme besides the explorer's two views
WIDGET_SHARE = 0.6  # at most this part of the budget goes to the widget view (it pre-draws every picture)


@dataclass
class Explorer:
    data: explore.ExplorerData
    view: object  # the widget view (ipywidgets), built once: its saved state is what the page carries
    per_widget: int  # images per class in the widget view
    widget_bytes: int
    static_bytes: int


def explorer(book) -> Explorer:
    """AA-CLIP and plain CLIP on every target set; the widget view, then the static view's sample, in budget."""
    cfg = book.cfg
    for name in cfg.eval.datasets:
        runs.ensure_predictions(cfg, name, progress=book.progress)
        runs.ensure_predictions(cfg, name, baseline=True, progress=book.progress)
    aaclip = [runs.results_dir(cfg, name, "AA-CLIP", "transductive") for name in cfg.eval.datasets]
    clip = [runs.results_dir(cfg, name, "CLIP", "transductive") for name in cfg.eval.datasets]
    data = explore.load_explorer(aaclip, clip, cfg.explore, progress=book.progress)
    budget = cfg.explore.page_mb * 1e6 - PAGE_REST_BYTES
    per_widget = cfg.explore.widget_per_class
    while True:  # fewer pre-drawn images per class until the widget view fits its share
        view = explore.widget(data, per_widget)
        widget_bytes = explore.widget_state_bytes(view)
        if widget_bytes <= WIDGET_SHARE * budget or per_widget == 1:
            break
        explore.close_widget(view)
        per_widget -= 1

    def static_cost(image) -> int:
        return explore.entry_bytes(explore.static_entry(image))

    explore.fit_budget(data, budget - widget_bytes, static_cost, keep=per_widget)
    static_bytes = sum(static_cost(im) for c in data.classes for im in c.images)
    return Explorer(data, view, per_widget, widget_bytes, static_bytes)


def static_view(found: Explorer):
    from IPython.display import HTML

    return HTML(explore.static_html(found.data))


def numbers(book, found: Explorer) -> dict:
    """Glue: how many classes and images each view holds, what was left out, and the explorer's bytes."""
    data = found.data
    return {
        "n_explorer_classes": len(data.classes), "n_explorer_images": data.n_images,
        "n_widget_images": sum(min(len(c.images), found.per_widget) for c in data.classes),
        "n_explorer_dropped": data.dropped, "explorer_mb": (found.static_bytes + found.widget_bytes) / 1e6,
        "widget_mb": found.widget_bytes / 1e6, "static_mb": found.static_bytes / 1e6,
        "explorer_budget_mb": book.cfg.explore.page_mb,
    }
