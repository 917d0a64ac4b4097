"""Known-answer tests of the training losses (book:method-stage1, book:method-stage2)."""

import math

import pytest
import torch
import torch.nn.functional as F

from aaclip import losses
from aaclip.errors import AAClipError


def unit_pair(cos: float, dim: int = 4) -> torch.Tensor:
    """Anchors (dim, 2): t_normal = e0, t_abnormal at the given cosine to it."""
    t_n = torch.zeros(dim)
    t_n[0] = 1
    t_a = torch.zeros(dim)
    t_a[0], t_a[1] = cos, math.sqrt(1 - cos**2)
    return torch.stack([t_n, t_a], dim=-1)


def test_focal_loss_known_answer():
    """book:method-seg-loss: q = one_hot clamped to [1e-5, 1-1e-5], pt = sum q P + 1e-5, -(1-pt)^2 log pt, pixel mean."""
    P = torch.tensor([[[[0.2, 0.6]], [[0.8, 0.4]]]])  # (1, 2, 1, 2): pixel 0 P_abn 0.8, pixel 1 P_abn 0.4
    M = torch.tensor([[[1.0, 0.0]]])  # pixel 0 abnormal, pixel 1 normal
    pt0 = 1e-5 * 0.2 + (1 - 1e-5) * 0.8 + 1e-5  # 0.800004
    pt1 = (1 - 1e-5) * 0.6 + 1e-5 * 0.4 + 1e-5  # 0.600008
    expected = (-((1 - pt0) ** 2) * math.log(pt0) - (1 - pt1) ** 2 * math.log(pt1)) / 2
    assert expected == pytest.approx(0.0453259411762182)
    assert losses.focal_loss(P, M).item() == pytest.approx(expected, rel=1e-5)
    # gamma 2 down-weights easy pixels: a confident correct pixel costs almost nothing
    easy = torch.tensor([[[[0.01]], [[0.99]]]])
    assert losses.focal_loss(easy, torch.ones(1, 1, 1)).item() < 1e-5


def test_dice_loss_known_answer_batch_mean():
    """book:method-seg-loss: smooth 1, 1 - mean over the batch of (2 sum(pm) + 1) / (sum p + sum m + 1)."""
    p = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.5, 0.5], [0.0, 0.0]]])
    m = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]])
    # sample 0: (2+1)/(1+1+1) = 1; sample 1: (1+1)/(1+1+1) = 2/3; mean 5/6
    assert losses.dice_loss(p, m).item() == pytest.approx(1 / 6, rel=1e-6)
    # an empty mask and an empty prediction agree perfectly thanks to the smoothing
    assert losses.dice_loss(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)).item() == pytest.approx(0.0)


def test_segmentation_loss_constant_logits():
    """book:method-seg-loss: upsample, softmax over 2 channels, Focal + Dice(P1, M) + Dice(P0, 1-M)."""
    S = torch.tensor([0.0, math.log(3.0)]).repeat(1, 4, 1)  # (1, 4 tokens, 2): P_abn = 0.75 everywhere
    M = torch.ones(1, 1, 6, 6)
    hw = 36
    pt = 0.25 * 1e-5 + 0.75 * (1 - 1e-5) + 1e-5
    focal = -((1 - pt) ** 2) * math.log(pt)
    dice_abn = 1 - (2 * 0.75 * hw + 1) / (0.75 * hw + hw + 1)
    dice_norm = 1 - 1 / (0.25 * hw + 0 + 1)
    assert losses.segmentation_loss(S, M).item() == pytest.approx(focal + dice_abn + dice_norm, rel=1e-5)


def test_segmentation_loss_places_tokens_row_major():
    """Token n sits at grid row n // g, column n % g; a transposed layout would swap the losses."""
    S = torch.zeros(1, 4, 2)
    S[0, 1, 1] = 10.0  # token 1 = row 0, column 1 says "abnormal"
    right = torch.zeros(1, 1, 2, 2)
    right[0, 0, 0, 1] = 1
    wrong = torch.zeros(1, 1, 2, 2)
    wrong[0, 0, 1, 0] = 1
    assert losses.segmentation_loss(S, right) < losses.segmentation_loss(S, wrong)


def test_orthogonal_loss_is_squared_batch_mean():
    """book:method-seg-loss: L_orth = (mean over the batch of <t_n, t_a>)^2, so a repeated class counts twice."""
    anchors = torch.stack([unit_pair(0.5), unit_pair(0.1), unit_pair(0.1)])
    assert losses.orthogonal_loss(anchors).item() == pytest.approx(((0.5 + 0.1 + 0.1) / 3) ** 2, rel=1e-6)
    assert losses.orthogonal_loss(torch.stack([unit_pair(0.0)])).item() == pytest.approx(0.0, abs=1e-12)


def test_image_loss_uses_raw_cosines():
    """book:method-stage2: CE(det @ T, label) with no temperature."""
    T = unit_pair(0.2)
    det = T[:, 1].unsqueeze(0)  # exactly t_abnormal: logits [0.2, 1]
    expected = math.log(1 + math.exp(0.2 - 1))
    assert losses.image_loss(det, T, torch.tensor([1])).item() == pytest.approx(expected, rel=1e-6)


def _stage_inputs(levels=4, batch=2, tokens=9, dim=4):
    gen = torch.Generator().manual_seed(0)
    feats = [F.normalize(torch.randn(batch, tokens, dim, generator=gen), dim=-1) for _ in range(levels)]
    anchors = torch.stack([unit_pair(0.3), unit_pair(0.6)])
    mask = torch.zeros(batch, 1, 6, 6)
    mask[1, 0, :3, :3] = 1
    return feats, anchors, mask, torch.tensor([0, 1])


def test_stage1_released_uses_last_level_only():
    """book:method-seg-loss released: L = L_seg(last level) + 0.1 L_orth; the paper switch sums levels and adds CE."""
    feats, anchors, mask, label = _stage_inputs()
    out = losses.stage1_loss(feats, anchors, mask)
    seg_last = losses.segmentation_loss(losses.similarity(feats[-1], anchors), mask)
    assert out["seg"].item() == pytest.approx(seg_last.item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(seg_last.item() + 0.1 * losses.orthogonal_loss(anchors).item(), rel=1e-6)
    changed = [feats[0].flip(1)] + feats[1:]
    assert losses.stage1_loss(changed, anchors, mask)["loss"].item() == pytest.approx(out["loss"].item())

    g = F.normalize(torch.randn(2, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    paper = losses.stage1_loss(feats, anchors, mask, label, image_embedding=3 * g, mode="paper")
    seg_all = sum(losses.segmentation_loss(losses.similarity(f, anchors), mask) for f in feats)
    image = losses.image_loss(g, anchors, label)  # the CLS embedding is renormalised before scoring
    assert paper["image"].item() == pytest.approx(image.item(), rel=1e-5)
    assert paper["loss"].item() == pytest.approx((seg_all + image + 0.1 * paper["orth"]).item(), rel=1e-5)
    with pytest.raises(AAClipError, match="paper"):
        losses.stage1_loss(feats, anchors, mask, mode="paper")


def test_stage2_loss_is_ce_plus_all_levels():
    """book:method-stage2: CE(det @ T) + sum over the levels of L_seg(100 seg_l @ T); one anchor pair broadcasts."""
    feats, anchors, mask, label = _stage_inputs()
    det = feats[-1].mean(1)
    out = losses.stage2_loss(feats, det, anchors, mask, label)
    seg = sum(losses.segmentation_loss(100 * torch.bmm(f, anchors), mask) for f in feats)
    assert out["seg"].item() == pytest.approx(seg.item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx((seg + losses.image_loss(det, anchors, label)).item(), rel=1e-6)
    shared = losses.stage2_loss(feats, det, anchors[0], mask, label)
    expanded = losses.stage2_loss(feats, det, anchors[0].expand(2, -1, -1), mask, label)
    assert shared["loss"].item() == pytest.approx(expanded["loss"].item())
    with pytest.raises(AAClipError, match="anchors"):
        losses.stage2_loss(feats, det, anchors[:1].expand(3, -1, -1), mask, label)
