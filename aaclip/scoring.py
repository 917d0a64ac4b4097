"""Anomaly maps and image scores (book:method-scoring, book:method-normalisation).

    maps = level_maps(seg, anchors)                      # (B, L, g, g), no softmax
    grids = gaussian_blur(maps, domain)                  # (B, L, g, g), what predictions files keep
    raw_map = fuse_levels(grids, image_size)             # (B, S, S), sum of levels
    raw_score = raw_image_score(det, anchors)            # (B,)
    anomaly_map, pred_score = normalize_transductive(raw_maps, raw_scores, class_names, domain)
    anomaly_map, pred_score = normalize_inductive(raw_maps, raw_scores, domain, n_levels=L)

`level_grids(seg, anchors, domain)` chains the first two steps, `raw_anomaly_map` all three.

Reading of book:method-scoring step 1: S = 100 * seg_l @ T and then m = (S_abnormal + 1 - S_normal) / 2 on
those raw logits, with NO softmax over the two channels. That is the literal text, and it is also
what the released test path does (its softmax is only applied in the training branch). With a
softmax the formula would collapse to P_abnormal; without it, m = 50 (cos_a - cos_n) + 1/2.

The normalisation functions take torch tensors or numpy arrays and return the same kind.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from aaclip.errors import AAClipError
from aaclip.losses import grid_logits, per_sample_anchors, similarity

BLUR = {"industrial": (7, 1.0), "medical": (9, 1.5)}  # domain -> (kernel size, sigma), book:method-scoring


def _check_domain(domain: str) -> str:
    if domain not in BLUR:
        raise AAClipError(f"domain={domain!r}: choose {' or '.join(BLUR)}")
    return domain


def level_maps(seg: list[torch.Tensor], anchors: torch.Tensor) -> torch.Tensor:
    """book:method-scoring: per level m_l = (S_abnormal + 1 - S_normal) / 2 with S = 100 * seg_l @ T, on the grid.

    seg: L tensors (B, N, D); anchors (B, D, 2) or (D, 2). Returns (B, L, g, g) float32.
    """
    maps = []
    for f in seg:
        S = grid_logits(similarity(f, anchors))  # (B, 2, g, g)
        maps.append((S[:, 1] + 1 - S[:, 0]) / 2)
    return torch.stack(maps, dim=1)


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """1-D Gaussian taps, normalised to sum 1 (the 2-D kernel is their outer product)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).float()


def gaussian_blur(maps: torch.Tensor, domain: str) -> torch.Tensor:
    """book:method-scoring: Gaussian blur on the patch grid (industrial k7 s1, medical k9 s1.5), reflect padding.

    maps: (..., g, g). Separable convolution with a normalised kernel, so a constant map is unchanged.
    """
    size, sigma = BLUR[_check_domain(domain)]
    pad = size // 2
    *lead, h, w = maps.shape
    if min(h, w) <= pad:
        raise AAClipError(f"a {h}x{w} grid is too small for reflect padding of the {size}x{size} {domain} blur")
    k = gaussian_kernel(size, sigma).to(maps.device)
    x = maps.float().reshape(-1, 1, h, w)
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, size))
    x = F.conv2d(x, k.view(1, 1, size, 1))
    return x.reshape(*lead, h, w)


def fuse_levels(maps: torch.Tensor, image_size: int) -> torch.Tensor:
    """book:method-scoring: bilinear upsample each level (align_corners=True) to image_size, then SUM the levels.

    maps: (B, L, g, g) -> (B, S, S).
    """
    up = F.interpolate(maps.float(), size=(image_size, image_size), mode="bilinear", align_corners=True)
    return up.sum(dim=1)


def level_grids(seg: list[torch.Tensor], anchors: torch.Tensor, domain: str) -> torch.Tensor:
    """book:method-scoring before the upsampling: each level's blurred map on the patch grid, (B, L, g, g).

    `fuse_levels(grids, S)` turns them into the raw map, so a file that keeps the grids keeps the maps
    (at ViT-L-14-336 and 518 px, 4 x 37 x 37 numbers per image instead of 518 x 518)."""
    return gaussian_blur(level_maps(seg, anchors), domain)


def raw_anomaly_map(seg: list[torch.Tensor], anchors: torch.Tensor, domain: str, image_size: int) -> torch.Tensor:
    """book:method-scoring in one call: (B, S, S) raw anomaly map."""
    return fuse_levels(level_grids(seg, anchors, domain), image_size)


def raw_image_score(det: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """book:method-scoring: (cos(det, t_abnormal) + 1) / 2, (B,).

    As in book:method-stage2 ("det @ T, raw cosines"), the cosine is det . t_abnormal with det as built
    (a mean of unit vectors, deliberately not renormalised, book:method-adapters): exactly the released score.
    For the baseline, det is CLIP's unit image embedding, so this is the true cosine.
    """
    anchors = per_sample_anchors(anchors, det.shape[0]).float()
    return (torch.einsum("bd,bd->b", det.float(), anchors[..., 1]) + 1) / 2


# ---------------------------------------------------------------------- normalisation
def _as_tensor(x):
    return (torch.from_numpy(np.asarray(x)), True) if not isinstance(x, torch.Tensor) else (x, False)


def _back(x: torch.Tensor, was_numpy: bool):
    return x.numpy() if was_numpy else x


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """(x - min) / (max - min); a constant input gives zeros instead of the released 0/0."""
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)


def _fuse_score(pmax: torch.Tensor, score: torch.Tensor, domain: str) -> torch.Tensor:
    """book:method-normalisation: industrial 0.5 * pmax + 0.5 * score; medical pmax alone."""
    return 0.5 * pmax + 0.5 * score if _check_domain(domain) == "industrial" else pmax.clone()


def normalize_transductive(anomaly_maps, raw_scores, class_names, domain: str):
    """book:method-normalisation, released ("transductive": uses the statistics of the test set).

    Per class: min-max the pixel maps over all the class's test images (one min and max for
    the class) and min-max the raw image scores over the class; pmax = per-image max of the
    normalised map; final score industrial 0.5 * pmax + 0.5 * score, medical pmax.
    anomaly_maps (N, H, W), raw_scores (N,), class_names length N. Returns (anomaly_map, pred_score).
    """
    _check_domain(domain)
    maps, maps_np = _as_tensor(anomaly_maps)
    scores, scores_np = _as_tensor(raw_scores)
    names = np.asarray(list(class_names))
    if not (len(names) == maps.shape[0] == scores.shape[0]):
        raise AAClipError(f"{maps.shape[0]} maps, {scores.shape[0]} scores and {len(names)} class names must match")
    out_maps = torch.empty_like(maps, dtype=torch.float32)
    out_scores = torch.empty_like(scores, dtype=torch.float32)
    for name in dict.fromkeys(names.tolist()):
        idx = torch.from_numpy(np.flatnonzero(names == name))
        m = _minmax(maps[idx].float())
        s = _minmax(scores[idx].float())
        out_maps[idx] = m
        out_scores[idx] = _fuse_score(m.flatten(1).max(dim=1).values, s, domain)
    return _back(out_maps, maps_np), _back(out_scores, scores_np)


def normalize_inductive(anomaly_maps, raw_scores, domain: str, n_levels: int):
    """Inductive normalisation: fixed transforms, no test-set statistics, so it works on one image.

    Map: the raw map is a sum of L level maps m_l = 1/2 + (S_abnormal - S_normal)/2, and blur
    and bilinear upsampling preserve constants (their weights sum to 1), so
    z = 2 (raw - L/2) / L is the mean over levels of the two-channel logit difference
    S_abnormal - S_normal. The map is sigmoid(z): the "abnormal" probability of the two-channel
    softmax that the segmentation loss trains (book:method-seg-loss), a fixed scale in (0, 1) for any image.
    Score: the raw score (det . t_abnormal + 1) / 2 already has a fixed range ([0, 1] because
    |det| <= 1); final score as book:method-normalisation with pmax = per-image max of the map:
    industrial 0.5 * pmax + 0.5 * score, medical pmax.
    Pixel metrics are unchanged by any per-class monotone map, so only image metrics can differ
    from the transductive mode. Returns (anomaly_map, pred_score).
    """
    _check_domain(domain)
    maps, maps_np = _as_tensor(anomaly_maps)
    scores, scores_np = _as_tensor(raw_scores)
    z = 2.0 * (maps.float() - n_levels / 2) / n_levels
    out_maps = torch.sigmoid(z)
    pmax = out_maps.flatten(1).max(dim=1).values
    out_scores = _fuse_score(pmax, scores.float(), domain)
    return _back(out_maps, maps_np), _back(out_scores, scores_np)
