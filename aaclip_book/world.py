"""Chapter 0: the data the book runs on, and the premise that plain CLIP knows classes but not anomalies."""

from __future__ import annotations

import pandas as pd
from IPython.display import Markdown

from aaclip_book import plots, runs, samples

ROLES = {"train": "auxiliary (training)", "test": "target (zero-shot)"}


def scale_note(book) -> Markdown:
    """What this build of the chapter shows: the miniature world, or (any other profile) the real data."""
    cfg = book.cfg
    if book.miniature:
        return Markdown(f"*Profile `{cfg.runtime.profile}`: the miniature world under `{cfg.runtime.data_root}`.*")
    return Markdown(
        f"*Profile `{cfg.runtime.profile}` runs on prepared datasets, not on the miniature: below, the tables and "
        f"figures show {cfg.train.dataset} and {', '.join(cfg.eval.datasets)} from `{cfg.runtime.data_root}` and the "
        f"backbone {cfg.model.backbone} (`pretrained={cfg.model.pretrained}`); the sections on the tiny CLIP's "
        "pretraining and the world's summary say what replaces them.*"
    )


def plain_clip(book):
    """The backbone with untrained adapters: every call of this chapter takes plain CLIP's path."""
    from aaclip.model import AAClip

    cfg = book.cfg
    return AAClip.from_config(cfg.model, cfg.runtime.data_root, cfg.resolve_device()).eval()


def datasets(book, model) -> dict:
    """{name: AnomalyDataset} of the training set and every target set, read as the model reads them."""
    names = [book.cfg.train.dataset, *[n for n in book.cfg.eval.datasets if n != book.cfg.train.dataset]]
    return {name: runs.dataset(model, book.cfg, name) for name in names}


def split_table(book, sets: dict) -> pd.DataFrame:
    """Per dataset and class: role, domain, descriptive prompt name, normal and anomalous test images."""
    rows = []
    for name, data in sets.items():
        role = ROLES["train"] if name == book.cfg.train.dataset else ROLES["test"]
        for class_name in data.class_names:
            labels = [r["label"] for r in data.records if r["class_name"] == class_name]
            rows.append({"dataset": name, "role": role, "domain": data.info.domain, "class_name": class_name,
                         "prompt name": data.info.prompt_names[class_name],
                         "normal": labels.count(0), "anomalous": labels.count(1)})
    return pd.DataFrame(rows)


def split_numbers(splits: pd.DataFrame) -> dict:
    return {"n_classes": len(splits), "n_images": int(splits[["normal", "anomalous"]].sum().sum())}


def samples_figure(book, sets: dict, per_dataset: int = 6):
    """Test images of each dataset, one per class where possible, anomalous first, masks outlined."""
    shown = []
    for name, data in sets.items():
        indices = samples.pick_images(data, per_class=1, seed=book.cfg.train.seed)[:per_dataset]
        images, masks = samples.pictures(data, indices)
        shown += [(image, mask, f"{name}: {samples.title(data, i)}") for image, mask, i in zip(images, masks, indices)]
    images, masks, titles = zip(*shown)
    return plots.sample_grid_figure(images, masks, titles, ncols=6)


def pretraining_figure(book, pairs: int = 6):
    """The tiny CLIP's first twin pairs (the unmarked pictures above their marked twins), or a note at paper scale."""
    drawn = book.pretraining_pictures(pairs)
    if drawn is None:
        return Markdown(f"*Not a miniature build: the backbone is {book.cfg.model.backbone} "
                        f"(`pretrained={book.cfg.model.pretrained}`), whose pretraining is not ours to show.*")
    return plots.sample_grid_figure(drawn[0], None, drawn[1], ncols=pairs)


def pretraining_table(book):
    """How the tiny CLIP was pretrained (the world's record; for shipped weights, their manifest), or a note
    at paper scale."""
    if book.world is None:
        return Markdown("*No pretraining record: the backbone's weights were not made by this book.*")
    record = book.world["pretraining"]
    rows = {"pictures": record["images"], "epochs": record["epochs"], "optimiser steps": record["steps"],
            "final contrastive loss": f"{record['final_loss']:.4f}"}
    if record.get("shipped"):
        made_on = record["made_on"]
        rows |= {"made by": record["command"], "pretraining code (sha256)": record["code_digest"][:16] + "...",
                 "pretraining time": f"{record['pretraining_seconds'] / 60:.1f} min",
                 "made with": f"torch {made_on['torch']}, Python {made_on['python']}, {made_on['machine']}",
                 "in this build": "shipped weights, hashes and code digest checked"}
    else:
        rows["in this build"] = "pretrained from scratch"
    # a Styler, not the DataFrame: the DataFrame's HTML view cuts the command at 50 characters
    return pd.Series(rows, name="tiny CLIP pretraining").to_frame().style


def evidence(book, model, sets: dict) -> dict:
    """Plain CLIP on the first target set: class accuracy, anchor cosine, baseline AUROCs (the premise)."""
    from aaclip.runs.evaluate import unawareness

    return unawareness(model, sets[book.target], book.cfg.eval)


def evidence_table(book, numbers: dict) -> pd.DataFrame:
    return pd.Series(numbers, name=f"plain CLIP on {book.target}").to_frame().round(3)


def world_table(book):
    """What building the miniature world cost and what its builder measured, or a note at paper scale."""
    if book.world is None:
        return Markdown("*Not a miniature build: the datasets are the ones `aaclip prepare` wrote; "
                        "the table of the datasets above lists them.*")
    scalars = {k: v for k, v in book.world.items() if not isinstance(v, (dict, list))}
    return pd.Series(scalars, name="world summary").to_frame()
