"""The frozen CLIP backbone (SPEC section 1), loaded through open_clip.

`load_backbone(cfg)` accepts an open_clip model name with
- an open_clip pretrained tag (e.g. `openai`), loaded by open_clip's own loader (which prefers
  the Hugging Face safetensors file; with `HF_HUB_OFFLINE=1` it must already be cached),
- `"none"`: random weights (shape tests, `aaclip describe`),
- a local `.safetensors` file of an open_clip state dict (a relative path is looked up as given,
  then under `cfg.data_root`). Pickled weights (`.pt`, `.bin`) are refused: nothing here calls
  `torch.load`.

Input size (SPEC 1): the model is built with `force_image_size=cfg.image_size`, and open_clip's
`load_checkpoint` resizes the learned positional embedding of the loaded weights with
`open_clip.model.resize_pos_embed`: CLS position kept, grid bicubic, antialias=True,
align_corners=False. That is exactly SPEC 1's rule (checked in open_clip 3.3.0 and by a test
against an independent `F.interpolate`), so it is used as is.

Activation (SPEC 1): open_clip 3.3.0 does not force QuickGELU for the `openai` tag; it only warns
("QuickGELU mismatch") and builds what the config says, i.e. plain GELU for `ViT-L-14-336`,
which is what the released code ran. `activation="gelu"` (default) keeps that and silences the
warning (the mismatch is SPEC's documented choice); `activation="quick_gelu"` passes
`force_quick_gelu=True`, the activation the OpenAI weights were trained with.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from aaclip.errors import AAClipError

TINY_PREFIX = "aaclip-tiny"


@dataclass
class Backbone:
    clip: nn.Module  # open_clip CLIP, frozen, eval mode
    tokenizer: Callable
    name: str
    pretrained: str  # the tag, "none", or the resolved weights file
    activation: str
    image_size: int
    grid_size: int  # patches per side
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    vision_depth: int
    text_depth: int
    vision_width: int
    text_width: int
    embed_dim: int

    @property
    def n_patches(self) -> int:
        return self.grid_size * self.grid_size


def load_backbone(cfg, device: str | torch.device = "cpu") -> Backbone:
    """Build the frozen open_clip CLIP named by `cfg.backbone` at `cfg.image_size` (SPEC 1)."""
    import open_clip

    name = cfg.backbone
    if name.startswith(TINY_PREFIX):
        from aaclip.miniature.tiny_clip import register_configs

        register_configs()
    if name not in open_clip.list_models():
        vits = [m for m in open_clip.list_models() if m.startswith("ViT-")]
        raise AAClipError(
            f"backbone {name!r} is not an open_clip model; ViT choices include {', '.join(vits[:12])}, ..."
        )
    weights = resolve_pretrained(name, cfg.pretrained, cfg.data_root)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="QuickGELU mismatch")
        try:
            clip = open_clip.create_model(
                name,
                pretrained=weights,
                device=device,
                force_quick_gelu=cfg.activation == "quick_gelu",
                force_patch_dropout=0.0,
                force_image_size=cfg.image_size,
            )
        except RuntimeError as err:
            raise AAClipError(
                f"could not build {name} with pretrained={cfg.pretrained!r}: {err}. Offline "
                "(HF_HUB_OFFLINE=1) a tag needs its weights in the Hugging Face cache; or pass a local .safetensors file."
            ) from err
    check_architecture(clip, name)
    freeze(clip)
    visual = clip.visual
    grid = visual.grid_size
    if grid[0] != grid[1]:
        raise AAClipError(f"image_size={cfg.image_size} gives a non-square grid {grid}")
    patch = visual.patch_size[0]
    if cfg.image_size % patch:
        raise AAClipError(f"image_size={cfg.image_size} is not a multiple of the patch size {patch}")
    pre = getattr(visual, "preprocess_cfg", {})
    return Backbone(
        clip=clip,
        tokenizer=open_clip.get_tokenizer(name),
        name=name,
        pretrained=weights or "none",
        activation=cfg.activation,
        image_size=cfg.image_size,
        grid_size=grid[0],
        patch_size=patch,
        mean=tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(pre.get("std", open_clip.OPENAI_DATASET_STD)),
        vision_depth=len(visual.transformer.resblocks),
        text_depth=len(clip.transformer.resblocks),
        vision_width=visual.transformer.width,
        text_width=clip.transformer.width,
        embed_dim=visual.output_dim,
    )


def resolve_pretrained(name: str, pretrained: str | None, data_root: str | Path) -> str | None:
    """None for random init, the tag for an open_clip tag, else an existing .safetensors path."""
    import open_clip

    if pretrained is None or str(pretrained).lower() in ("", "none"):
        return None
    pretrained = str(pretrained)
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained in tags:
        return pretrained
    candidates = [Path(pretrained)]
    if not Path(pretrained).is_absolute():
        candidates.append(Path(data_root) / pretrained)
    for path in candidates:
        if path.is_file():
            if path.suffix != ".safetensors":
                raise AAClipError(f"{path}: only .safetensors weight files are accepted (pickles are never loaded)")
            return str(path)
    looked = " and ".join(str(c) for c in candidates)
    known = ", ".join(tags) if tags else "none"
    raise AAClipError(
        f"pretrained={pretrained!r} for {name} is neither an open_clip tag (known: {known}) "
        f"nor a file (looked at {looked})"
    )


def check_architecture(clip: nn.Module, name: str) -> None:
    """AA-CLIP walks the blocks itself: it needs open_clip's ViT CLIP with the built-in text tower."""
    from open_clip.model import CLIP
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    problems = []
    if not isinstance(clip, CLIP):
        problems.append("not a plain open_clip CLIP (custom/HF text towers are not supported)")
    elif not isinstance(clip.visual, VisionTransformer):
        problems.append("the vision tower is not open_clip's VisionTransformer")
    else:
        v = clip.visual
        if v.attn_pool is not None or v.pool_type != "tok" or v.proj is None:
            problems.append("the vision tower must pool the CLS token and have a projection")
        blocks = list(v.transformer.resblocks) + list(clip.transformer.resblocks)
        if not all(isinstance(b, ResidualAttentionBlock) and b.attn._qkv_same_embed_dim for b in blocks):
            problems.append("every block must be a standard ResidualAttentionBlock")
        if not (v.transformer.batch_first and clip.transformer.batch_first):
            problems.append("both transformers must run batch-first (open_clip >= 2.24)")
    if problems:
        raise AAClipError(f"backbone {name}: " + "; ".join(problems))


def freeze(clip: nn.Module) -> None:
    """SPEC 1: backbone frozen (no gradients) and in eval mode."""
    clip.eval()
    for p in clip.parameters():
        p.requires_grad_(False)

