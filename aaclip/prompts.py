"""Prompts and text anchors (book:method-anchors).

An anchor pair is the L2-normalised mean of the normal sentences' embeddings and of the
abnormal sentences' embeddings of one class, stacked as T with shape (dim, 2):
column 0 is `t_normal`, column 1 is `t_abnormal`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

NORMAL_STATES = ("{}", "a {}", "the {}")
ABNORMAL_STATES = ("a damaged {}", "a broken {}", "a {} with flaw", "a {} with defect", "a {} with damage")
TEMPLATES = ("{}.", "a photo of {}.")


def sentences(name: str) -> tuple[list[str], list[str]]:
    """The 6 normal and 10 abnormal sentences for a class's descriptive name."""
    normal = [t.format(s.format(name)) for s in NORMAL_STATES for t in TEMPLATES]
    abnormal = [t.format(s.format(name)) for s in ABNORMAL_STATES for t in TEMPLATES]
    return normal, abnormal


def text_anchors(encode: Callable[[torch.Tensor], torch.Tensor], tokenizer, names: list[str]) -> torch.Tensor:
    """Anchors for each name: (len(names), dim, 2), columns (normal, abnormal).

    `encode` maps token ids (n, context) to embeddings (n, dim): plain CLIP's `encode_text`
    or AA-CLIP's adapted text encoder. All sentences of all names go through it in one batch.
    """
    groups = [sentences(n) for n in names]
    flat = [s for normal, abnormal in groups for s in normal + abnormal]
    device = _device_of(encode)
    emb = F.normalize(encode(tokenizer(flat).to(device)), dim=-1)
    anchors, start = [], 0
    for normal, abnormal in groups:
        n_norm, n_abn = len(normal), len(abnormal)
        t_n = F.normalize(emb[start : start + n_norm].mean(0), dim=-1)
        t_a = F.normalize(emb[start + n_norm : start + n_norm + n_abn].mean(0), dim=-1)
        anchors.append(torch.stack([t_n, t_a], dim=-1))
        start += n_norm + n_abn
    return torch.stack(anchors)


def anchor_cosines(anchors: torch.Tensor) -> torch.Tensor:
    """cos(t_normal, t_abnormal) of each class, (C,) from anchors (C, D, 2): 1 means the text side cannot
    tell "a damaged X" from "an X" (anomaly unawareness, book:method-anchors)."""
    return (anchors[..., 0].float() * anchors[..., 1].float()).sum(-1)


def _device_of(encode) -> torch.device:
    owner = getattr(encode, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        for p in owner.parameters():
            return p.device
    return torch.device("cpu")
