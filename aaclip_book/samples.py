"""Which images a figure shows, and the pictures themselves as the model sees them."""

from __future__ import annotations

import numpy as np


def pick_images(dataset, per_class: int, seed: int = 0, anomalous_first: bool = True) -> list[int]:
    """Up to `per_class` indices per class, anomalous images first, drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    chosen = []
    for name in dataset.class_names:
        idx = dataset.indices_of(name)
        bad = [i for i in idx if dataset.records[i]["label"] == 1]
        good = [i for i in idx if dataset.records[i]["label"] == 0]
        rng.shuffle(bad), rng.shuffle(good)
        order = bad + good if anomalous_first else good + bad
        chosen += sorted(order[:per_class], key=lambda i: -dataset.records[i]["label"])
    return chosen


def pictures(dataset, indices) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (n, S, S, 3), bool masks (n, S, S)) of dataset[indices], as the model sees them."""
    from aaclip.viz import denormalize

    batch = dataset.batch(indices)
    return denormalize(batch.image, dataset.mean, dataset.std), batch.masks()


def indices_of(dataset, image_paths) -> list[int]:
    """Dataset indices of predictions' image paths (absolute, as the dataset's items report them)."""
    where = {str(dataset.root / r["image_path"]): i for i, r in enumerate(dataset.records)}
    return [where[str(p)] for p in image_paths]


def title(dataset, index: int, score: float | None = None) -> str:
    """'class (defect) 0.87': what a small picture's caption says."""
    record = dataset.records[index]
    text = record["class_name"] + (" (defect)" if record["label"] else " (normal)")
    return text if score is None else f"{text} {score:.2f}"
