"""Known-answer tests of the anomaly map and image score (book:method-scoring)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from aaclip import scoring
from aaclip.errors import AAClipError


def anchors_2d():
    """t_normal = e0, t_abnormal = e1 in 3-D."""
    return torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])


def test_map_formula_uses_raw_logits_without_softmax():
    """book:method-scoring: S = 100 seg @ T; m = (S_abn + 1 - S_norm) / 2, no softmax (values far outside [0, 1])."""
    f = F.normalize(torch.tensor([0.2, 0.5, math.sqrt(1 - 0.29)]), dim=0)
    seg = [f.repeat(1, 4, 1)]  # (1, 4 tokens, 3): cos_n = 0.2, cos_a = 0.5
    m = scoring.level_maps(seg, anchors_2d())
    assert m.shape == (1, 1, 2, 2)
    assert torch.allclose(m, torch.full_like(m, (50 + 1 - 20) / 2), atol=1e-4)


def test_level_maps_row_major_grid_and_levels():
    seg0 = torch.zeros(1, 4, 3)
    seg0[..., 0] = 1  # all normal
    seg0[0, 1] = torch.tensor([0.0, 1.0, 0.0])  # token 1 (row 0, col 1) abnormal
    seg1 = torch.zeros(1, 4, 3)
    seg1[..., 2] = 1  # orthogonal to both anchors
    m = scoring.level_maps([seg0, seg1], anchors_2d())
    assert m.shape == (1, 2, 2, 2)
    assert m[0, 0].tolist() == [[-49.5, 50.5], [-49.5, -49.5]]
    assert m[0, 1].tolist() == [[0.5, 0.5], [0.5, 0.5]]


def test_gaussian_kernel_is_normalised_gaussian():
    for size, sigma in scoring.BLUR.values():
        k = scoring.gaussian_kernel(size, sigma)
        assert k.sum().item() == pytest.approx(1.0, abs=1e-6)
        x = torch.arange(size) - size // 2
        raw = torch.exp(-(x.float() ** 2) / (2 * sigma**2))
        assert torch.allclose(k, raw / raw.sum())
    assert scoring.BLUR == {"industrial": (7, 1.0), "medical": (9, 1.5)}


def test_gaussian_blur_reflect_padding_matches_independent_blur():
    """book:method-scoring: reflect padding (no edge repetition), checked against numpy and torchvision."""
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 3, 10, 10, generator=gen)
    for domain, (size, sigma) in scoring.BLUR.items():
        ours = scoring.gaussian_blur(maps, domain)
        ref = TF.gaussian_blur(maps.reshape(6, 1, 10, 10), [size, size], [sigma, sigma]).reshape(2, 3, 10, 10)
        assert torch.allclose(ours, ref, atol=1e-5)
    # by hand: a corner impulse, reflected (numpy "reflect" = mirror without repeating the edge)
    img = np.zeros((8, 8))
    img[0, 0] = 1.0
    k = scoring.gaussian_kernel(7, 1.0).double().numpy()
    padded = np.pad(img, 3, mode="reflect")
    expected = sum(k[i] * k[j] * padded[i, j] for i in range(7) for j in range(7))
    blurred = scoring.gaussian_blur(torch.tensor(img).float()[None, None], "industrial")
    assert blurred[0, 0, 0, 0].item() == pytest.approx(expected, rel=1e-5)
    const = torch.full((1, 1, 8, 8), 3.0)
    assert torch.allclose(scoring.gaussian_blur(const, "medical"), const)


def test_fuse_levels_upsamples_align_corners_and_sums():
    """book:method-scoring: bilinear, align_corners=True (corners kept exactly), then SUM over levels."""
    level0 = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    level1 = torch.ones(2, 2)
    fused = scoring.fuse_levels(torch.stack([level0, level1])[None], image_size=3)
    assert fused.shape == (1, 3, 3)
    expected = torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.5, 2.0], [2.0, 2.5, 3.0]]) + 1
    assert torch.allclose(fused[0], expected)


def test_raw_image_score_uses_det_as_built():
    """book:method-scoring: (det . t_abn + 1) / 2 with det not renormalised."""
    T = anchors_2d()
    det = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.5, 0.0], [0.0, -1.0, 0.0]])
    assert scoring.raw_image_score(det, T).tolist() == pytest.approx([1.0, 0.75, 0.0])


def test_normalize_transductive_per_class_hand_example():
    """book:method-normalisation released: per-class min-max of maps and scores; industrial 0.5 pmax + 0.5 score, medical pmax."""
    maps = np.array([[[0.0, 2.0]], [[5.0, 5.0]], [[4.0, 8.0]]], dtype=np.float32)
    scores = np.array([0.3, 0.9, 0.5], dtype=np.float32)
    names = ["a", "b", "a"]
    amap, score = scoring.normalize_transductive(maps, scores, names, "industrial")
    assert isinstance(amap, np.ndarray) and isinstance(score, np.ndarray)
    assert amap.tolist() == [[[0.0, 0.25]], [[0.0, 0.0]], [[0.5, 1.0]]]
    assert score.tolist() == pytest.approx([0.5 * 0.25 + 0.5 * 0.0, 0.0, 0.5 * 1.0 + 0.5 * 1.0])
    _, medical = scoring.normalize_transductive(torch.from_numpy(maps), torch.from_numpy(scores), names, "medical")
    assert isinstance(medical, torch.Tensor)
    assert medical.tolist() == pytest.approx([0.25, 0.0, 1.0])
    with pytest.raises(AAClipError, match="domain"):
        scoring.normalize_transductive(maps, scores, names, "industry")


def test_normalize_inductive_hand_example_and_single_image():
    """Inductive: sigmoid(2 (raw - L/2) / L), no test statistics; pmax fused as book:method-normalisation."""
    L = 4
    maps = torch.tensor([[[2.0, 4.0]], [[0.0, 2.0]]])  # raw L/2 is the neutral value
    scores = torch.tensor([0.6, 0.2])
    amap, score = scoring.normalize_inductive(maps, scores, "industrial", n_levels=L)
    s1 = 1 / (1 + math.exp(-1.0))
    assert amap.flatten().tolist() == pytest.approx([0.5, s1, 1 / (1 + math.e), 0.5])
    assert score.tolist() == pytest.approx([0.5 * s1 + 0.3, 0.25 + 0.1])
    one_map, one_score = scoring.normalize_inductive(maps[1:], scores[1:], "industrial", n_levels=L)
    assert torch.equal(one_map, amap[1:]) and torch.equal(one_score, score[1:])
    _, med = scoring.normalize_inductive(maps, scores, "medical", n_levels=L)
    assert med.tolist() == pytest.approx([s1, 0.5])


def test_inductive_map_is_the_mean_two_channel_probability():
    """The documented identity: sigmoid of the mean over levels of the (blurred, upsampled) S_abn - S_norm."""
    gen = torch.Generator().manual_seed(0)
    seg = [F.normalize(torch.randn(2, 64, 5, generator=gen), dim=-1) * 0.05 for _ in range(3)]
    T = F.normalize(torch.randn(2, 5, 2, generator=gen), dim=1)
    raw = scoring.raw_anomaly_map(seg, T, "industrial", 16)
    amap, _ = scoring.normalize_inductive(raw, torch.zeros(2), "industrial", n_levels=3)
    diffs = torch.stack([100 * (torch.bmm(f, T)[..., 1] - torch.bmm(f, T)[..., 0]).view(2, 8, 8) for f in seg], 1)
    mean_diff = scoring.fuse_levels(scoring.gaussian_blur(diffs, "industrial"), 16) / 3
    assert torch.allclose(amap, torch.sigmoid(mean_diff), atol=1e-5)
