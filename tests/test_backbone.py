"""The frozen backbone loader (book:method-backbone), on a small open_clip ViT registered for the test."""

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

from aaclip.backbone import load_backbone, resolve_weights
from aaclip.config import ModelConfig
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


def small_config(**overrides):
    return ModelConfig(**{"backbone": SMALL, "pretrained": "weights.safetensors", "image_size": 48, **overrides})


def test_positional_embedding_resized_bicubic_cls_kept(weights):
    """book:method-backbone: grid 4x4 -> 6x6 bicubic, antialias, align_corners=False; CLS row unchanged; rest loaded as is."""
    root, _, state = weights
    bb = load_backbone(small_config(), root)  # relative weights path found under data_root
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
    """book:method-backbone: requires_grad False everywhere, eval mode, patch dropout off."""
    root, _, _ = weights
    bb = load_backbone(small_config(), root)
    assert not any(p.requires_grad for p in bb.clip.parameters())
    assert not bb.clip.training and not any(m.training for m in bb.clip.modules())
    assert isinstance(bb.clip.visual.patch_dropout, torch.nn.Identity)
    assert (bb.vision_depth, bb.text_depth, bb.vision_width, bb.text_width, bb.embed_dim) == (4, 4, 64, 32, 32)


def test_activation_switch_gelu_default_quick_gelu_on_request(weights):
    """book:method-backbone: GELU by default (released), QuickGELU with activation="quick_gelu"; same weights, other outputs."""
    root, _, _ = weights
    gelu = load_backbone(small_config(), root)
    quick = load_backbone(small_config(activation="quick_gelu"), root)
    for bb, kind in ((gelu, torch.nn.GELU), (quick, QuickGELU)):
        acts = [b.mlp.gelu for b in bb.clip.visual.transformer.resblocks] + [b.mlp.gelu for b in bb.clip.transformer.resblocks]
        assert all(type(a) is kind for a in acts)
    image = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(gelu.clip.encode_image(image), quick.clip.encode_image(image))


def test_bad_pretrained_and_backbone_names(weights, tmp_path):
    root, _, _ = weights
    with pytest.raises(AAClipError, match="neither an open_clip tag"):
        load_backbone(small_config(pretrained="missing.safetensors"), root)
    pickle = tmp_path / "weights.pt"
    pickle.write_bytes(b"not loaded")
    with pytest.raises(AAClipError, match="only .safetensors"):
        load_backbone(small_config(pretrained=str(pickle)), root)
    with pytest.raises(AAClipError, match="not an open_clip model"):
        load_backbone(small_config(backbone="ViT-Nope-1"), root)
    with pytest.raises(AAClipError, match="multiple of the patch size"):
        load_backbone(small_config(image_size=50), root)


def test_random_init_with_none(weights):
    root, _, _ = weights
    bb = load_backbone(small_config(pretrained="none", image_size=40), root)
    assert bb.pretrained == "none" and bb.weights.sha256 is None and bb.grid_size == 5
    assert bb.clip.visual.positional_embedding.shape == (26, 64)


def open_clip_folder(root, state, name=SMALL):
    """An open_clip folder as a user (or the miniature world) would have one: config + safetensors."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "open_clip_config.json").write_text(json.dumps({"model_name": name, "model_cfg": SMALL_CFG}))
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "open_clip_model.safetensors"))
    return root


def test_an_open_clip_folder_loads_through_open_clips_local_dir_route(weights, tmp_path):
    """No name needs registering: the folder's own config says what the model is."""
    _, file, state = weights
    folder = open_clip_folder(tmp_path / "mine", state, name="my-clip")
    bb = load_backbone(ModelConfig(backbone="my-clip", pretrained=str(folder), image_size=48))
    assert bb.weights.kind == "folder" and bb.name == "my-clip" and bb.grid_size == 6
    assert torch.equal(bb.clip.visual.conv1.weight, state["visual.conv1.weight"])
    assert bb.tokenizer(["a photo"]).shape == (1, 77)
    with pytest.raises(AAClipError, match="describes 'my-clip', but the config asks for backbone 'other'"):
        load_backbone(ModelConfig(backbone="other", pretrained=str(folder), image_size=48))


def test_a_folder_of_pickles_is_refused_before_open_clip_would_load_one(weights, tmp_path):
    _, _, state = weights
    folder = open_clip_folder(tmp_path / "pickled", state)
    (folder / "open_clip_model.safetensors").rename(folder / "open_clip_pytorch_model.bin")
    with pytest.raises(AAClipError, match="no .safetensors weights .*open_clip_pytorch_model.bin: pickles are never loaded"):
        resolve_weights(SMALL, str(folder))


def test_weights_are_identified_by_content_not_by_path(weights, tmp_path):
    root, file, _ = weights
    copy = tmp_path / "elsewhere.safetensors"
    copy.write_bytes(file.read_bytes())
    assert resolve_weights(SMALL, str(copy)).sha256 == resolve_weights(SMALL, "weights.safetensors", root).sha256
    altered = tmp_path / "altered.safetensors"
    altered.write_bytes(file.read_bytes()[:-1] + b"\x00")
    assert resolve_weights(SMALL, str(altered)).sha256 != resolve_weights(SMALL, str(copy)).sha256
