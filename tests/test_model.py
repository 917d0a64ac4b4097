"""AA-CLIP's model (book:method-adapters, book:method-stage1).

Most tests use a small open_clip ViT registered for the test and compare against open_clip's own
forward passes. The ViT-L-14-336 tests (random weights, CPU) check book:method-adapters's parameter counts and
the 518 px shapes; the model is built once for the module (about 430M parameters).
"""

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from aaclip import losses
from aaclip.config import ModelConfig
from aaclip.errors import AAClipError
from aaclip.model import AAClip, attention_block, autocast, default_levels, residual_adapt, vv_attention

SMALL = "aaclip-test-small-vit"
SMALL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 4},
}


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    root = tmp_path_factory.mktemp("small_clip")
    (root / f"{SMALL}.json").write_text(json.dumps(SMALL_CFG))
    open_clip.add_model_config(root)


def small(seed: int = 0, **overrides) -> AAClip:
    torch.manual_seed(0)  # the same random backbone every time
    cfg = ModelConfig(**{"backbone": SMALL, "pretrained": "none", "image_size": 48, **overrides})
    return AAClip.from_config(cfg, seed=seed)


@pytest.fixture
def images():
    return torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))


def test_depth_derived_settings(registered):
    """book:method-adapters: levels at quarters of the vision depth; adapters until a quarter of each depth (>= 1)."""
    assert default_levels(24) == [6, 12, 18, 24]
    assert default_levels(12) == [3, 6, 9, 12]
    assert default_levels(6) == [1, 3, 4, 6]
    assert default_levels(4) == [1, 2, 3, 4]
    m = small()
    d = m.describe()
    assert (d["levels"], d["text_adapt_until"], d["image_adapt_until"]) == ([1, 2, 3, 4], 1, 1)
    assert d["trainable_text"] == 32 * 32 + 32 * 32
    assert d["trainable_image"] == 64 * 64 + 5 * 64 * 32
    m2 = small(levels=[2, 4], image_adapt_until=3)
    assert len(m2.image_adapter["seg_proj"]) == 2 and len(m2.image_adapter["adapters"]) == 3
    with pytest.raises(AAClipError, match="levels"):
        small(levels=[3, 2])
    with pytest.raises(AAClipError, match="image_adapt_until"):
        small(image_adapt_until=5)


def test_residual_adapt_norm_matching_known_answer():
    """book:method-adapters: a = adapter(x); a *= ||x|| / ||a||; x = 0.1 a + 0.9 x, per token."""
    swap = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        swap.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    adapter = lambda x: F.leaky_relu(swap(x), 0.01)  # noqa: E731
    x = torch.tensor([[[3.0, 4.0], [6.0, 8.0]]])  # two tokens, norms 5 and 10
    out = residual_adapt(x, adapter, 0.1)
    assert torch.allclose(out, torch.tensor([[[3.1, 3.9], [6.2, 7.8]]]))
    # negative pre-activations: LeakyReLU shrinks them 100x, norm matching restores the scale
    with torch.no_grad():
        swap.weight.copy_(-torch.eye(2))
    out = residual_adapt(x[:, :1], adapter, 0.1)
    assert torch.allclose(out, torch.tensor([[[2.4, 3.2]]]), atol=1e-6)  # not 0.1*(-.03,-.04)+0.9*(3,4)


def test_image_path_matches_open_clip_when_adapters_are_silent(registered, images):
    """With adapter_weight 0 the adapted path must be CLIP's own blocks; with 0.1 it must differ."""
    m = small(adapter_weight=0.0)
    seg, det = m.image_features(images)
    out = m.clip.visual.forward_intermediates(
        images, indices=[0, 1, 2, 3], normalize_intermediates=True, output_fmt="NLC", intermediates_only=True
    )
    ref = [F.normalize(p(t), dim=-1) for p, t in zip(m.image_adapter["seg_proj"], out["image_intermediates"])]
    assert len(seg) == 4 and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(seg, ref))
    det_ref = F.normalize(m.image_adapter["det_proj"](out["image_intermediates"][-1]), dim=-1).mean(1)
    assert torch.allclose(det, det_ref, atol=1e-5)
    assert all(torch.allclose(s.norm(dim=-1), torch.ones(2, 36), atol=1e-5) for s in seg)

    adapted = small()  # same backbone and adapters (same seeds), weight 0.1
    seg2, _ = adapted.image_features(images)
    assert not torch.allclose(seg2[-1], seg[-1], atol=1e-4)


def test_text_path_matches_open_clip_when_adapters_are_silent(registered):
    """EOT token after ln_final through the new projection (+LeakyReLU) replaces text_projection."""
    m = small(adapter_weight=0.0)
    tokens = m.backbone.tokenizer(["a photo of a bottle.", "a broken screw"])
    clip = m.clip
    assert torch.equal(m.encode_text(tokens, adapted=False), clip.encode_text(tokens))
    original = clip.text_projection.data.clone()
    clip.text_projection.data.copy_(torch.eye(32))  # encode_text now returns the pooled EOT feature
    try:
        pooled = clip.encode_text(tokens)
    finally:
        clip.text_projection.data.copy_(original)
    expected = F.leaky_relu(pooled @ m.text_adapter["proj"].fc.weight.T, 0.01)
    assert torch.allclose(m.encode_text(tokens), expected, atol=1e-5)
    anchors = m.text_anchors(["bottle", "screw"])
    assert anchors.shape == (2, 32, 2)
    assert torch.allclose(anchors.norm(dim=1), torch.ones(2, 2), atol=1e-5)
    assert not torch.allclose(anchors, m.text_anchors(["bottle", "screw"], adapted=False))


def test_vv_attention_self_and_tokens(registered):
    """book:method-stage1: "self" = out_proj(v) per token; "tokens" = per-head softmax(v v^T / sqrt(d)) v, then out_proj."""
    m = small()
    block = m.clip.visual.transformer.resblocks[2]
    h = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0))
    attn = block.attn
    v = h @ attn.in_proj_weight[128:].T + attn.in_proj_bias[128:]
    assert torch.allclose(vv_attention(block, h, "self"), attn.out_proj(v), atol=1e-5)
    # per token: a token's output ignores the others
    assert torch.allclose(vv_attention(block, h[:, :1], "self"), attn.out_proj(v[:, :1]), atol=1e-5)

    heads = v.view(2, 5, 2, 32).transpose(1, 2)  # 2 heads of width 32
    weights = torch.softmax(heads @ heads.transpose(-1, -2) * 32**-0.5, dim=-1)
    expected = attn.out_proj((weights @ heads).transpose(1, 2).reshape(2, 5, 64))
    tokens = vv_attention(block, h, "tokens")
    assert torch.allclose(tokens, expected, atol=1e-5)
    assert not torch.allclose(tokens, attn.out_proj(v), atol=1e-3)


@pytest.mark.parametrize("mode", ["self", "tokens"])
def test_stage1_features_match_reference(registered, images, mode):
    """book:method-stage1: blocks before the first level shared, V-V from there; ln_post, visual.proj, normalise, + g."""
    m = small(levels=[2, 4], vv_attention=mode)
    feats, g = m.stage1_features(images, return_global=True)
    clip = m.clip
    v = clip.visual
    assert torch.allclose(g, clip.encode_image(images, normalize=True), atol=1e-5)
    out = v.forward_intermediates(images, indices=[0], output_fmt="NLC", intermediates_only=True, output_extra_tokens=True)
    y = torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], dim=1)  # after block 1
    ref = []
    for i in (2, 3, 4):
        block = v.transformer.resblocks[i - 1]
        y = y + vv_attention(block, block.ln_1(y), mode)
        y = y + block.mlp(block.ln_2(y))
        if i in (2, 4):
            ref.append(F.normalize(v.ln_post(y[:, 1:]) @ v.proj, dim=-1) + g[:, None])
    assert len(feats) == 2 and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(feats, ref))
    # no leakage between the images of a batch (book:method-stage1: do not reproduce the cross-image mixing)
    alone = m.stage1_features(images[:1])
    assert all(torch.allclose(a[:1], b, atol=1e-5) for a, b in zip(feats, alone))


def test_baseline_features_are_plain_clip(registered, images):
    """The "CLIP" baseline: same levels through ln_post and CLIP's visual.proj; det = CLIP's image embedding."""
    m = small()
    seg, det = m.baseline_features(images)
    v = m.clip.visual
    out = v.forward_intermediates(images, indices=[0, 1, 2, 3], normalize_intermediates=True, output_fmt="NLC")
    ref = [F.normalize(t @ v.proj, dim=-1) for t in out["image_intermediates"]]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(seg, ref))
    assert torch.allclose(det, m.clip.encode_image(images, normalize=True), atol=1e-5)


def test_adapter_state_dict_roundtrip_and_mismatches(registered):
    m = small()
    state = m.adapter_state_dict()
    assert all(k.startswith(("text_adapter.", "image_adapter.")) for k in state)
    assert sum(t.numel() for t in state.values()) == sum(p.numel() for p in m.adapter_parameters())
    other = small(seed=5)
    assert not torch.equal(other.adapter_state_dict()["image_adapter.det_proj.fc.weight"], state["image_adapter.det_proj.fc.weight"])
    other.load_adapter_state_dict(state)
    assert all(torch.equal(other.adapter_state_dict()[k], v) for k, v in state.items())

    with pytest.raises(AAClipError, match="unexpected key.*image_adapter.seg_proj.3.fc.weight"):
        small(levels=[2, 4]).load_adapter_state_dict(state)  # unexpected extra levels
    with pytest.raises(AAClipError, match="unexpected key.*image_adapter.adapters.1.fc.weight"):
        m.load_adapter_state_dict(small(image_adapt_until=2).adapter_state_dict())
    with pytest.raises(AAClipError, match="missing key.*text_adapter.adapters.0.fc.weight"):
        m.load_adapter_state_dict({k: v for k, v in state.items() if not k.startswith("text_adapter.adapters")})
    bad = dict(state)
    bad["text_adapter.proj.fc.weight"] = torch.zeros(16, 32)
    with pytest.raises(AAClipError, match=r"text_adapter.proj.fc.weight.*\(16, 32\)"):
        m.load_adapter_state_dict(bad)


def test_seeded_xavier_init(registered):
    """book:method-adapters: Xavier-uniform on every weight matrix, reproducible from the seed."""
    a, b, c = small(seed=3), small(seed=3), small(seed=4)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        if not pa.requires_grad:
            continue
        assert torch.equal(pa, pb), name
        assert not torch.equal(pa, pc), name
        fan_out, fan_in = pa.shape
        assert pa.abs().max() <= (6 / (fan_in + fan_out)) ** 0.5


def test_backbone_stays_frozen_and_in_eval(registered, images):
    m = small()
    m.train()
    assert m.text_adapter.training and not m.clip.training
    assert not any(p.requires_grad for p in m.clip.parameters())
    with pytest.raises(AAClipError, match=r"\(B, 3, 48, 48\)"):
        m.image_features(images[:, :, :40, :40])


def test_attention_block_equals_the_open_clip_block_forward_and_backward(registered):
    """The batch-first block used for the adapted path (fast frozen backward) is open_clip's block exactly."""
    block = small().clip.visual.transformer.resblocks[1]
    x = torch.randn(3, 37, 64, generator=torch.Generator().manual_seed(2))
    ours_in, ref_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, ref = attention_block(block, ours_in), block(ref_in)
    assert torch.allclose(ours, ref, atol=1e-5)
    weights = torch.randn_like(ref)
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    assert torch.allclose(ours_in.grad, ref_in.grad, atol=1e-5)


def test_stage2_gradients_reach_only_the_image_adapters(registered, images):
    """Full-depth stage-2 loss on the small model: every image adapter gets a gradient, nothing else does."""
    m = small()
    anchors = m.text_anchors(["object"]).detach()
    seg, det = m.image_features(images)
    mask = torch.zeros(2, 1, 48, 48)
    mask[1, :, 10:30, 5:20] = 1
    losses.stage2_loss(seg, det, anchors, mask, torch.tensor([0, 1]))["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.image_parameters())
    assert all(p.grad is None for p in m.text_parameters())
    assert all(p.grad is None for p in m.clip.parameters())


def test_autocast_helper_and_the_default_precision_is_fp32_as_released():
    """fp32 everywhere by default (training, anchors, inference), as the released code runs; bf16 only when asked."""
    from aaclip.config import Config

    assert Config().train.precision == Config().eval.precision == "fp32"
    with autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")


# ---------------------------------------------------------------------- ViT-L-14-336 (book:method-backbone, book:method-adapters)
@pytest.fixture(scope="module")
def vitl():
    torch.manual_seed(0)
    return AAClip.from_config(ModelConfig(pretrained="none"))


@pytest.mark.slow
def test_vitl_describe_counts(vitl):
    """book:method-adapters: trainable text 2,359,296 (3 adapters + projection), image 10,223,616 (6 adapters + 4 seg + det)."""
    d = vitl.describe()
    assert d["trainable_text"] == 2_359_296
    assert d["trainable_image"] == 10_223_616
    assert d["frozen"] == sum(p.numel() for p in vitl.clip.parameters()) > 400_000_000
    assert d["levels"] == [6, 12, 18, 24] and d["grid"] == [37, 37] and d["image_size"] == 518
    assert (d["text_adapt_until"], d["image_adapt_until"]) == (3, 6)


@pytest.mark.slow
def test_vitl_features_at_518(vitl):
    """book:method-backbone, book:method-adapters: 518 px -> 37x37 = 1369 patches, 4 levels of (B, 1369, 768) unit vectors, det (B, 768)."""
    image = torch.randn(1, 3, 518, 518, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        seg, det = vitl.image_features(image)
    assert [tuple(s.shape) for s in seg] == [(1, 1369, 768)] * 4
    assert all(torch.allclose(s.norm(dim=-1), torch.ones(1, 1369), atol=1e-4) for s in seg)
    assert det.shape == (1, 768) and det.norm().item() <= 1 + 1e-5


@pytest.mark.slow
def test_vitl_training_touches_only_adapters(vitl):
    """Only adapter parameters get gradients; an optimiser step changes them and leaves the backbone as it was.

    To stay within the test budget the image side runs with the levels cut to [6] (the same
    backbone object, all 6 image adapters, a seg and the det projection, 6 blocks at 518 px);
    the full-depth stage-2 path is checked on the small model above.
    """
    before = [p.sum(dtype=torch.float64).item() for p in vitl.clip.parameters()]
    short = AAClip(vitl.backbone, ModelConfig(pretrained="none", levels=[6]))
    tokens = vitl.backbone.tokenizer(["a photo of a bottle.", "a photo of a broken bottle."])
    text = F.normalize(short.encode_text(tokens), dim=-1)
    losses.orthogonal_loss(text.T[None]).backward()  # stage-1 style: text adapters only
    image = torch.randn(1, 3, 518, 518, generator=torch.Generator().manual_seed(0))
    seg, det = short.image_features(image)
    mask = torch.zeros(1, 1, 518, 518)
    mask[..., 100:200, 300:400] = 1
    losses.stage2_loss(seg, det, text.detach().T[None], mask, torch.tensor([1]))["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in short.adapter_parameters())
    assert all(p.grad is None for p in vitl.clip.parameters())

    adapters_before = [p.detach().clone() for p in short.adapter_parameters()]
    torch.optim.Adam(short.adapter_parameters(), lr=1e-3).step()
    assert all(not torch.equal(a, p) for a, p in zip(adapters_before, short.adapter_parameters()))
    assert [p.sum(dtype=torch.float64).item() for p in vitl.clip.parameters()] == before
