"""The frozen CLIP backbone (book:method-backbone), loaded through open_clip's own loaders.

`load_backbone(model_cfg, root)` accepts an open_clip model name with `pretrained` being
- an open_clip pretrained tag (e.g. `openai`), loaded by open_clip's own loader (which prefers
  the Hugging Face safetensors file; with `HF_HUB_OFFLINE=1` it must already be cached);
- `"none"`: random weights (shape tests, `aaclip describe`);
- a local `.safetensors` file of an open_clip state dict for the named architecture;
- a local folder holding `open_clip_config.json` and a `.safetensors` state dict: open_clip's
  `local-dir:` route, which takes the architecture from the folder (a `model_name` key in the
  JSON, when present, must be the configured backbone name).
A relative path is looked up as given, then under `root` (the data root). Pickled weights
(`.pt`, `.bin`, `.pth`) are refused: nothing here calls `torch.load`.

Input size: the model is built with `force_image_size=image_size`, and open_clip's
`load_checkpoint` resizes the learned positional embedding with `resize_pos_embed`: CLS position
kept, grid bicubic, antialias=True, align_corners=False. That is exactly the rule of
book:method-backbone (checked in open_clip 3.3.0 and by a test against an independent
`F.interpolate`), so it is used as is.

Activation: open_clip 3.3.0 does not force QuickGELU for the `openai` tag; it only warns
("QuickGELU mismatch") and builds what the config says, i.e. plain GELU for `ViT-L-14-336`,
which is what the released code ran. `activation="gelu"` keeps that and silences the warning;
`activation="quick_gelu"` passes `force_quick_gelu=True`.

The weights' identity is their content: `Weights.sha256` is what checkpoints and run identities
record, so a moved file is the same backbone and a rebuilt one is another.
"""

from __future__ import annotations

import contextlib
import functools
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from aaclip.errors import AAClipError
from aaclip.io import sha256_file

CONFIG_FILE = "open_clip_config.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


@dataclass(frozen=True)
class Weights:
    """Where a backbone's weights come from: kind "tag" | "file" | "folder" | "none", and the file read."""

    kind: str
    location: str  # the tag, the file or folder path, or "none"
    file: Path | None  # the weights file itself (None for random weights or a tag not yet cached)

    @property
    def sha256(self) -> str | None:
        return file_digest(str(self.file)) if self.file is not None else None


@dataclass
class Backbone:
    clip: nn.Module  # open_clip CLIP, frozen, eval mode
    tokenizer: Callable
    name: str
    weights: Weights
    activation: str
    image_size: int
    grid_size: int  # patches per side
    patch_size: int
    mean: tuple[float, float, float]  # the model's own preprocessing (book:method-preprocessing)
    std: tuple[float, float, float]
    vision_depth: int
    text_depth: int
    vision_width: int
    text_width: int
    embed_dim: int

    @property
    def n_patches(self) -> int:
        return self.grid_size * self.grid_size

    @property
    def pretrained(self) -> str:
        return str(self.weights.file or self.weights.location)


def load_backbone(model_cfg, root: str | Path = ".", device: str | torch.device = "cpu") -> Backbone:
    """The frozen open_clip CLIP that `model_cfg` names, at `model_cfg.image_size` (book:method-backbone)."""
    import open_clip

    name = model_cfg.backbone
    weights = resolve_weights(name, model_cfg.pretrained, root)
    if weights.kind != "folder" and name not in open_clip.list_models():
        vits = [m for m in open_clip.list_models() if m.startswith("ViT-")]
        raise AAClipError(
            f"backbone {name!r} is not an open_clip model; ViT choices include {', '.join(vits[:12])}, ... "
            "(or give pretrained= a folder with open_clip_config.json)"
        )
    model_id = f"local-dir:{weights.location}" if weights.kind == "folder" else name
    pretrained = {"tag": weights.location, "file": weights.location}.get(weights.kind)
    with warnings.catch_warnings(), random_init_seeded(weights.kind == "none"):
        warnings.filterwarnings("ignore", message="QuickGELU mismatch")
        try:
            clip = open_clip.create_model(
                model_id,
                pretrained=pretrained,
                device=device,
                force_quick_gelu=model_cfg.activation == "quick_gelu",
                force_patch_dropout=0.0,
                force_image_size=model_cfg.image_size,
            )
        except (RuntimeError, ValueError, FileNotFoundError) as err:
            raise AAClipError(
                f"could not build {name} with pretrained={model_cfg.pretrained!r}: {err}. Offline "
                "(HF_HUB_OFFLINE=1) a tag needs its weights in the Hugging Face cache; or pass a local .safetensors "
                "file or open_clip folder."
            ) from err
    check_architecture(clip, name)
    freeze(clip)
    visual = clip.visual
    grid = visual.grid_size
    if grid[0] != grid[1]:
        raise AAClipError(f"image_size={model_cfg.image_size} gives a non-square grid {grid}")
    patch = visual.patch_size[0]
    if model_cfg.image_size % patch:
        raise AAClipError(f"image_size={model_cfg.image_size} is not a multiple of the patch size {patch}")
    pre = getattr(visual, "preprocess_cfg", {})
    return Backbone(
        clip=clip,
        tokenizer=open_clip.get_tokenizer(model_id),
        name=name,
        weights=weights,
        activation=model_cfg.activation,
        image_size=model_cfg.image_size,
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


@contextlib.contextmanager
def random_init_seeded(active: bool, seed: int = 0):
    """Random weights ("none") drawn from a fixed seed, without touching the caller's RNG: "none" is then one
    well-defined backbone, the same in every process, so a run trained on it is scored on it."""
    if not active:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def resolve_weights(name: str, pretrained: str | None, root: str | Path = ".") -> Weights:
    """What `pretrained` means for backbone `name`: a tag, a file, a folder or random weights."""
    import open_clip

    if pretrained is None or str(pretrained).lower() in ("", "none"):
        return Weights("none", "none", None)
    pretrained = str(pretrained)
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained in tags:
        return Weights("tag", pretrained, cached_tag_file(name, pretrained))
    candidates = [Path(pretrained)]
    if not Path(pretrained).is_absolute():
        candidates.append(Path(root) / pretrained)
    for path in candidates:
        if path.is_dir():
            return Weights("folder", str(path), folder_weights(path, name))
        if path.is_file():
            if path.suffix != ".safetensors":
                raise AAClipError(f"{path}: only .safetensors weight files are accepted (pickles are never loaded)")
            if (path.parent / CONFIG_FILE).is_file() and name not in open_clip.list_models():
                return Weights("folder", str(path.parent), folder_weights(path.parent, name))  # the file of a folder
            return Weights("file", str(path), path)
    looked = " and ".join(str(c) for c in candidates)
    known = ", ".join(tags) if tags else "none"
    raise AAClipError(
        f"pretrained={pretrained!r} for {name} is neither an open_clip tag (known: {known}) "
        f"nor a weights file or open_clip folder (looked at {looked})"
    )


def folder_weights(folder: Path, name: str) -> Path:
    """The .safetensors file of an open_clip folder; its config must name `name` if it names a model."""
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        raise AAClipError(f"{folder}: an open_clip folder needs {CONFIG_FILE} beside its weights")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as err:
        raise AAClipError(f"{config_file}: not valid JSON ({err})") from err
    declared = config.get("model_name")
    if declared is not None and declared != name:
        raise AAClipError(f"{config_file} describes {declared!r}, but the config asks for backbone {name!r}")
    tensors = sorted(folder.glob("*.safetensors"))
    if not tensors:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        found = f" (found {', '.join(pickles)}: pickles are never loaded)" if pickles else ""
        raise AAClipError(f"{folder}: no .safetensors weights{found}")
    preferred = [p for p in tensors if p.name == "open_clip_model.safetensors"]
    return (preferred or tensors)[0]  # open_clip's own preference among .safetensors files


def cached_tag_file(name: str, tag: str) -> Path | None:
    """The local file open_clip would load for a pretrained tag, if it is already cached (offline-safe)."""
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    try:
        path = download_pretrained(get_pretrained_cfg(name, tag))
    except Exception:  # not cached and offline: create_model will say so, naming the tag
        return None
    return Path(path) if path and Path(path).is_file() else None


@functools.lru_cache(maxsize=32)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def file_digest(path: str) -> str:
    """sha256 of a weights file, computed once per process for an unchanged file (ViT-L's is 1.7 GB)."""
    stat = Path(path).stat()
    return _digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


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
    """book:method-backbone: frozen (no gradients) and in eval mode."""
    clip.eval()
    for p in clip.parameters():
        p.requires_grad_(False)
