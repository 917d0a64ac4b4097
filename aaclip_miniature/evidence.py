"""What the miniature must show before anything is trained on it (the premise of the paper).

- `class_accuracy`: the tiny CLIP recognises the target world's classes zero-shot, with the
  prompt "a photo of a {name}." (it knows the classes);
- `anchor_cosine`: its normal and abnormal text anchors (book:method-anchors) of the target classes
  are nearly the same direction (it cannot tell "a damaged nut" from "a nut");
- `baseline_aurocs`: the plain tiny CLIP scored with the same prompts and no adapters is near
  chance on the target world (it is anomaly-unaware). Scored by `aaclip.runs.evaluate.evaluate`,
  the same code that scores AA-CLIP, so the book compares like with like.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PROMPT = "a photo of a {}."


def class_accuracy(
    model, tokenizer, data_root, dataset: str = "mini-target", image_size: int = 64, batch_size: int = 64
) -> dict:
    """Zero-shot class recognition on a dataset's images (read by the data layer, as any dataset)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    from aaclip.data.dataset import load_dataset

    data = load_dataset(data_root, dataset, image_size, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    return zero_shot_accuracy(model, tokenizer, data, batch_size)


@torch.no_grad()
def zero_shot_accuracy(clip, tokenizer, data, batch_size: int = 64, device="cpu") -> dict:
    """An open_clip model's zero-shot class accuracy on a loaded dataset, overall and per class."""
    classes = data.class_names
    prompts = [PROMPT.format(data.info.prompt_names[c]) for c in classes]
    text = F.normalize(clip.encode_text(tokenizer(prompts).to(device)).float(), dim=-1)
    predicted, truth = [], []
    for start in range(0, len(data), batch_size):
        batch = data.batch(range(start, min(start + batch_size, len(data))))
        predicted += (F.normalize(clip.encode_image(batch.image.to(device)).float(), dim=-1) @ text.T).argmax(1).tolist()
        truth += [classes.index(c) for c in batch.class_name]
    predicted, truth = torch.tensor(predicted), torch.tensor(truth)
    per_class = {c: float((predicted[truth == i] == i).float().mean()) for i, c in enumerate(classes)}
    return {"accuracy": float((predicted == truth).float().mean()), "per_class": per_class, "images": len(truth)}


@torch.no_grad()
def anchor_cosine(model, tokenizer, prompt_names: dict[str, str]) -> dict:
    """Cosine between each class's normal and abnormal anchors (1.0 = the prompts are indistinguishable)."""
    from aaclip.prompts import text_anchors

    anchors = text_anchors(model.encode_text, tokenizer, list(prompt_names.values()))
    cosines = (anchors[..., 0] * anchors[..., 1]).sum(-1)
    per_class = {c: float(v) for c, v in zip(prompt_names, cosines)}
    return {"mean": float(cosines.mean()), "per_class": per_class}


def baseline_aurocs(cfg, datasets: tuple[str, ...] = ("mini-target", "mini-scan"), progress: bool = True) -> dict:
    """Plain CLIP with the same prompts, no adapters: dataset means and per-class figures per dataset."""
    from dataclasses import replace

    from aaclip.data.dataset import load_dataset
    from aaclip.model import AAClip
    from aaclip.runs.evaluate import evaluate
    from aaclip.runs.inference import BASELINE

    model = AAClip.from_config(cfg.model, cfg.runtime.data_root, device="cpu", seed=cfg.train.seed)
    backbone, eval_cfg = model.backbone, replace(cfg.eval, aupro="off")  # AUROCs only
    results = {}
    for name in datasets:
        data = load_dataset(cfg.runtime.data_root, name, backbone.image_size, backbone.mean, backbone.std)
        result = evaluate(model, data, BASELINE, eval_cfg, progress=progress)
        results[name] = {
            "image_auroc": result.means["image_auroc"],
            "pixel_auroc": result.means["pixel_auroc"],
            "per_class": {
                c: {"image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"]} for c, m in result.per_class.items()
            },
        }
    return results
