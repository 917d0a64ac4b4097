"""The frozen backbone loader (SPEC section 1), on a small open_clip ViT registered for the test."""

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

from aaclip.backbone import load_backbone
from aaclip.config import Config
from aaclip.errors import AAClipError

SMALL = "aaclip-test-small-vit"
SMALL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 4},
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Register the small ViT with open_clip and save random weights at its native 32 px (4x4 grid)."""
    root = tmp_path_factory.mktemp("small_clip")
    (root / f"{SMALL}.json").write_text(json.dumps(SMALL_CFG))
    open_clip.add_model_config(root)
    torch.manual_seed(0)
    clip = open_clip.create_model(SMALL, pretrained=None)
    path = root / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    return root, path, clip.state_dict()


def small_config(root, **overrides):
    return Config(**{"backbone": SMALL, "pretrained": "weights.safetensors", "data_root": str(root), "image_size": 48, **overrides})


def test_positional_embedding_resized_bicubic_cls_kept(weights):
    """SPEC 1: grid 4x4 -> 6x6 bicubic, antialias, align_corners=False; CLS row unchanged; rest loaded as is."""
    root, _, state = weights
    bb = load_backbone(small_config(root))  # relative weights path found under data_root
    assert bb.grid_size == 6 and bb.image_size == 48 and bb.patch_size == 8
    old = state["visual.positional_embedding"]
    grid = old[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(6, 6), mode="bicubic", antialias=True, align_corners=False)
    expected = torch.cat([old[:1], grid.permute(0, 2, 3, 1).reshape(36, -1)])
    new = bb.clip.visual.positional_embedding
    assert new.shape == (37, 64)
    assert torch.equal(new[0], old[0])
    assert torch.allclose(new, expected, atol=1e-6)
    assert torch.equal(bb.clip.visual.conv1.weight, state["visual.conv1.weight"])
    assert bb.mean == open_clip.OPENAI_DATASET_MEAN and bb.std == open_clip.OPENAI_DATASET_STD


def test_backbone_frozen_eval_no_patch_dropout(weights):
    """SPEC 1: requires_grad False everywhere, eval mode, patch dropout off."""
    root, _, _ = weights
    bb = load_backbone(small_config(root))
    assert not any(p.requires_grad for p in bb.clip.parameters())
    assert not bb.clip.training and not any(m.training for m in bb.clip.modules())
    assert isinstance(bb.clip.visual.patch_dropout, torch.nn.Identity)
    assert (bb.vision_depth, bb.text_depth, bb.vision_width, bb.text_width, bb.embed_dim) == (4, 4, 64, 32, 32)


def test_activation_switch_gelu_default_quick_gelu_on_request(weights):
    """SPEC 1: GELU by default (released), QuickGELU with activation="quick_gelu"; same weights, other outputs."""
    root, _, _ = weights
    gelu = load_backbone(small_config(root))
    quick = load_backbone(small_config(root, activation="quick_gelu"))
    for bb, kind in ((gelu, torch.nn.GELU), (quick, QuickGELU)):
        acts = [b.mlp.gelu for b in bb.clip.visual.transformer.resblocks] + [b.mlp.gelu for b in bb.clip.transformer.resblocks]
        assert all(type(a) is kind for a in acts)
    image = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(gelu.clip.encode_image(image), quick.clip.encode_image(image))


def test_bad_pretrained_and_backbone_names(weights, tmp_path):
    root, _, _ = weights
    with pytest.raises(AAClipError, match="neither an open_clip tag"):
        load_backbone(small_config(root, pretrained="missing.safetensors"))
    pickle = tmp_path / "weights.pt"
    pickle.write_bytes(b"not loaded")
    with pytest.raises(AAClipError, match="only .safetensors"):
        load_backbone(small_config(root, pretrained=str(pickle)))
    with pytest.raises(AAClipError, match="not an open_clip model"):
        load_backbone(small_config(root, backbone="ViT-Nope-1"))
    with pytest.raises(AAClipError, match="multiple of the patch size"):
        load_backbone(small_config(root, image_size=50))


def test_random_init_with_none(weights):
    root, _, _ = weights
    bb = load_backbone(small_config(root, pretrained="none", image_size=40))
    assert bb.pretrained == "none" and bb.grid_size == 5
    assert bb.clip.visual.positional_embedding.shape == (26, 64)
