"""Training losses of AA-CLIP (book:method-seg-loss, book:method-stage1, book:method-stage2).

Shapes used throughout:
- `features`: patch features of one level, (B, N, D), N = grid * grid.
- `anchors`: text anchors stacked per sample, (B, D, 2), column 0 normal, column 1 abnormal
  (a single pair, (D, 2) or (1, D, 2), is broadcast to the batch).
- `gt_mask`: (B, 1, H, W) or (B, H, W) with values in {0, 1}; `gt_label`: (B,) in {0, 1}.

Every loss is computed in float32, whatever autocast produced upstream.
Each total returns a dict of scalar tensors: "loss" (to backpropagate) and its parts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from aaclip.errors import AAClipError

FOCAL_GAMMA = 2.0
FOCAL_SMOOTH = 1e-5  # the clamp of the one-hot target and the +1e-5 inside the log (book:method-seg-loss)
DICE_SMOOTH = 1.0
LOGIT_SCALE = 100.0  # S = 100 * f @ T (book:method-seg-loss, book:method-scoring)


def per_sample_anchors(anchors: torch.Tensor, batch: int) -> torch.Tensor:
    """(B, D, 2) anchors; a single pair, (D, 2) or (1, D, 2), is repeated for the batch."""
    if anchors.dim() == 2:
        anchors = anchors.unsqueeze(0)
    if anchors.dim() == 3 and anchors.shape[0] == 1:
        anchors = anchors.expand(batch, -1, -1)
    if anchors.dim() != 3 or anchors.shape[0] != batch or anchors.shape[-1] != 2:
        raise AAClipError(f"anchors must be (B={batch}, D, 2) or (D, 2), got {tuple(anchors.shape)}")
    return anchors


def similarity(features: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """book:method-seg-loss: S = 100 * f @ T per sample: (B, N, D) x (B, D, 2) -> (B, N, 2)."""
    anchors = per_sample_anchors(anchors, features.shape[0])
    return LOGIT_SCALE * torch.bmm(features.float(), anchors.float())


def grid_logits(S: torch.Tensor) -> torch.Tensor:
    """(B, N, C) token logits -> (B, C, g, g) on the square patch grid."""
    B, N, C = S.shape
    g = math.isqrt(N)
    if g * g != N:
        raise AAClipError(f"{N} patch tokens do not form a square grid")
    return S.permute(0, 2, 1).reshape(B, C, g, g)


def _mask(gt_mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) float mask in {0, 1} from (B, 1, H, W) or (B, H, W)."""
    if gt_mask.dim() == 4:
        gt_mask = gt_mask[:, 0]
    if gt_mask.dim() != 3:
        raise AAClipError(f"gt_mask must be (B, 1, H, W) or (B, H, W), got {tuple(gt_mask.shape)}")
    return (gt_mask != 0).float()


def focal_loss(P: torch.Tensor, M: torch.Tensor, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """book:method-seg-loss: focal loss on probabilities (alpha 1), averaged over all pixels of the batch.

    P: (B, 2, H, W) probabilities (normal, abnormal); M: (B, [1,] H, W) mask, nonzero = abnormal.
    q = one_hot(M) clamped to [1e-5, 1 - 1e-5]; pt = sum_c q_c P_c + 1e-5; loss -(1 - pt)^gamma log(pt).
    """
    P = P.float()
    q = F.one_hot(_mask(M).long(), P.shape[1]).permute(0, 3, 1, 2).float()
    q = q.clamp(FOCAL_SMOOTH, 1.0 - FOCAL_SMOOTH)
    pt = (q * P).sum(1) + FOCAL_SMOOTH
    return (-((1.0 - pt) ** gamma) * pt.log()).mean()


def dice_loss(p: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """book:method-seg-loss: 1 - mean over the batch of (2 sum(p m) + 1) / (sum(p) + sum(m) + 1)."""
    p = p.float().reshape(p.shape[0], -1)
    m = m.float().reshape(m.shape[0], -1)
    dice = (2 * (p * m).sum(1) + DICE_SMOOTH) / (p.sum(1) + m.sum(1) + DICE_SMOOTH)
    return 1.0 - dice.mean()


def segmentation_loss(S: torch.Tensor, gt_mask: torch.Tensor) -> torch.Tensor:
    """book:method-seg-loss: Focal(P, M) + Dice(P1, M) + Dice(P0, 1 - M).

    S: similarity logits (B, N, 2) on the patch grid (or already (B, 2, g, g)). They are
    upsampled bilinearly (align_corners=True) to the mask size, then softmaxed over the 2 channels.
    """
    M = _mask(gt_mask)
    logits = grid_logits(S) if S.dim() == 3 else S
    logits = F.interpolate(logits.float(), size=M.shape[-2:], mode="bilinear", align_corners=True)
    P = logits.softmax(dim=1)
    return focal_loss(P, M) + dice_loss(P[:, 1], M) + dice_loss(P[:, 0], 1.0 - M)


def orthogonal_loss(anchors: torch.Tensor) -> torch.Tensor:
    """book:method-seg-loss: L_orth = (mean over the batch of <t_normal, t_abnormal>)^2, anchors (B, D, 2)."""
    if anchors.dim() == 2:
        anchors = anchors.unsqueeze(0)
    inner = (anchors[..., 0].float() * anchors[..., 1].float()).sum(-1)
    return inner.mean() ** 2


def image_loss(embedding: torch.Tensor, anchors: torch.Tensor, gt_label: torch.Tensor) -> torch.Tensor:
    """book:method-stage2: CE(embedding @ T, label) with the raw cosines as logits (no temperature)."""
    anchors = per_sample_anchors(anchors, embedding.shape[0])
    logits = torch.einsum("bd,bdc->bc", embedding.float(), anchors.float())
    return F.cross_entropy(logits, gt_label.long().to(logits.device))


def stage1_loss(
    features: list[torch.Tensor],
    anchors: torch.Tensor,
    gt_mask: torch.Tensor,
    gt_label: torch.Tensor | None = None,
    image_embedding: torch.Tensor | None = None,
    mode: str = "released",
    orth_weight: float = 0.1,
) -> dict[str, torch.Tensor]:
    """book:method-seg-loss, stage 1 (text side), on the frozen V-V features of `AAClip.stage1_features`.

    - `mode="released"` (default, what produced the published numbers):
      L = L_seg(last level only) + orth_weight * L_orth. The other levels would be dropped,
      so they are not even scored here.
    - `mode="paper"` (the paper's equation): L = sum over all levels of L_seg
      + L_image + orth_weight * L_orth, where L_image is book:method-stage2's image-level CE applied to
      the CLS-based score: logits = [<g, t_normal>, <g, t_abnormal>] with g the L2-normalised
      global image embedding of the unmodified CLIP (CLS token -> ln_post -> visual.proj,
      `stage1_features(..., return_global=True)`), raw cosines as logits like book:method-stage2.
      Needs `gt_label` and `image_embedding`.
    Returns {"loss", "seg", "orth"} (+ "image" in paper mode).
    """
    anchors = per_sample_anchors(anchors, features[0].shape[0])
    used = features[-1:] if mode == "released" else features
    seg = sum(segmentation_loss(similarity(f, anchors), gt_mask) for f in used)
    orth = orthogonal_loss(anchors)
    parts = {"seg": seg, "orth": orth}
    loss = seg + orth_weight * orth
    if mode == "paper":
        if gt_label is None or image_embedding is None:
            raise AAClipError("stage1_loss mode='paper' needs gt_label and image_embedding (the CLS-based score)")
        parts["image"] = image_loss(F.normalize(image_embedding.float(), dim=-1), anchors, gt_label)
        loss = loss + parts["image"]
    return {"loss": loss, **parts}


def stage2_loss(
    seg: list[torch.Tensor],
    det: torch.Tensor,
    anchors: torch.Tensor,
    gt_mask: torch.Tensor,
    gt_label: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """book:method-stage2, stage 2 (image side): CE(det @ T, label) + sum over levels of L_seg(100 * seg_l @ T).

    No orthogonal loss; the anchors are frozen (computed once without grad). Returns {"loss", "seg", "image"}.
    """
    anchors = per_sample_anchors(anchors, det.shape[0])
    seg_total = sum(segmentation_loss(similarity(f, anchors), gt_mask) for f in seg)
    image = image_loss(det, anchors, gt_label)
    return {"loss": image + seg_total, "seg": seg_total, "image": image}
