"""AA-CLIP: a frozen CLIP plus residual adapters on both towers (book:method-adapters, book:method-stage1).

    model = AAClip.from_config(cfg.model, root=cfg.runtime.data_root)
    anchors = model.text_anchors(["bottle"])              # (1, D, 2): normal, abnormal
    seg, det = model.image_features(images)               # L x (B, N, D), (B, D)

The backbone's blocks are walked here, block by block, so that the adapters can sit between
them (open_clip 3.3.0 runs both transformers batch-first, (B, tokens, width); the text tower
uses its causal mask). Trainable: `text_adapter` (stage 1) and `image_adapter` (stage 2);
everything under `clip` is frozen.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aaclip import prompts
from aaclip.backbone import Backbone, load_backbone
from aaclip.errors import AAClipError


def autocast(device: str | torch.device, precision: str = "fp32"):
    """Forward-pass precision (`aaclip.config.PRECISIONS`, book:method-backbone): fp32, as released, never
    autocasts; bf16 autocasts on the device (CPU too, for timing)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


class ResidualAdapter(nn.Module):
    """book:method-adapters: Linear(c, c, bias=False) + LeakyReLU(0.01); no bottleneck."""

    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.fc(x), 0.01)


class Projection(nn.Module):
    """Linear(in, out, bias=False), LeakyReLU(0.01) only if `relu` (seg/det projections, new text projection)."""

    def __init__(self, width: int, out: int, relu: bool):
        super().__init__()
        self.fc = nn.Linear(width, out, bias=False)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(x)
        return F.leaky_relu(x, 0.01) if self.relu else x


def residual_adapt(x: torch.Tensor, adapter: nn.Module, weight: float) -> torch.Tensor:
    """book:method-adapters, per token: a = adapter(x); a = a * ||x|| / ||a||; x = w a + (1 - w) x.

    Norm-matching keeps every token's scale, so the frozen blocks after it see inputs of the
    size they were trained on; only the direction moves, by at most `weight`.
    """
    a = adapter(x)
    a = a * x.norm(dim=-1, keepdim=True) / a.norm(dim=-1, keepdim=True)
    return weight * a + (1 - weight) * x


def vv_attention(block: nn.Module, h: torch.Tensor, mode: str) -> torch.Tensor:
    """book:method-vv: the attention output of a V-V block for normalised tokens h = ln_1(x), (B, T, C).

    v = the block's own value projection (in_proj rows 2C..3C, with bias).
    - "self":   each token's own out_proj(v) (the released code at batch 1, no mixing at all).
    - "tokens": per head softmax(v v^T * d_head^-0.5) v across the tokens of an image, then out_proj.
    """
    attn = block.attn
    C = attn.embed_dim
    v = F.linear(h, attn.in_proj_weight[2 * C :], attn.in_proj_bias[2 * C :] if attn.in_proj_bias is not None else None)
    if mode == "tokens":
        B, T, _ = v.shape
        heads = v.view(B, T, attn.num_heads, C // attn.num_heads).transpose(1, 2)
        v = F.scaled_dot_product_attention(heads, heads, heads).transpose(1, 2).reshape(B, T, C)
    return attn.out_proj(v)


def self_attention(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The block's own multi-head self-attention of h = ln_1(x), (B, T, C), computed batch-first.

    Equal to `block.attn(h, h, h)` (no mask: vision towers have none), but its backward runs as
    plain matrix products: nn.MultiheadAttention works sequence-first on a transposed view, and
    with frozen weights autograd then computes the input gradient of in_proj as a batched product
    against a copy of the weight per token, which made a frozen-backbone step slower than one that
    also computes the backbone's gradients (benchmarks/training.py).
    """
    attn = block.attn
    B, T, C = h.shape
    heads = attn.num_heads
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).view(B, T, 3, heads, C // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, C // heads)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, C)
    return attn.out_proj(out)


def residual_block(block: nn.Module, x: torch.Tensor, attention) -> torch.Tensor:
    """A ResidualAttentionBlock's forward with `attention(ln_1(x))` in place of its own; residual, ls, MLP as usual."""
    x = x + block.ls_1(attention(block.ln_1(x)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def attention_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`block(x)` for a vision ResidualAttentionBlock, through `self_attention`."""
    return residual_block(block, x, lambda h: self_attention(block, h))


def vv_block(block: nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    """A frozen ResidualAttentionBlock with its attention replaced by V-V (book:method-vv)."""
    return residual_block(block, x, lambda h: vv_attention(block, h, mode))


def default_levels(depth: int) -> list[int]:
    """book:method-backbone: patch tokens read after 1/4, 2/4, 3/4, 4/4 of the vision depth (1-based, >= 1)."""
    return sorted({max(1, depth * k // 4) for k in (1, 2, 3, 4)})


class AAClip(nn.Module):
    """The adapted CLIP (book:method-adapters), with the frozen stage-1 features (book:method-stage1) and
    the plain-CLIP baseline. Built from an `aaclip.config.ModelConfig`; `seed` draws the adapters' init."""

    def __init__(self, backbone: Backbone, cfg, seed: int = 0):
        super().__init__()
        self.backbone = backbone
        self.clip = backbone.clip
        self.adapter_weight = cfg.adapter_weight
        self.vv_mode = cfg.vv_attention
        self.seg_relu = cfg.seg_relu
        self.text_adapt_until = depth_setting(cfg.text_adapt_until, backbone.text_depth, "text_adapt_until")
        self.image_adapt_until = depth_setting(cfg.image_adapt_until, backbone.vision_depth, "image_adapt_until")
        self.levels = resolve_levels(cfg.levels, backbone.vision_depth)

        tw, vw, dim = backbone.text_width, backbone.vision_width, backbone.embed_dim
        self.text_adapter = nn.ModuleDict(
            {
                "adapters": nn.ModuleList(ResidualAdapter(tw) for _ in range(self.text_adapt_until)),
                "proj": Projection(tw, dim, relu=True),  # replaces CLIP's text_projection (book:method-adapters)
            }
        )
        self.image_adapter = nn.ModuleDict(
            {
                "adapters": nn.ModuleList(ResidualAdapter(vw) for _ in range(self.image_adapt_until)),
                "seg_proj": nn.ModuleList(Projection(vw, dim, cfg.seg_relu) for _ in self.levels),
                "det_proj": Projection(vw, dim, cfg.seg_relu),
            }
        )
        self.reset_adapters(seed)
        device = next(self.clip.parameters()).device
        self.text_adapter.to(device)
        self.image_adapter.to(device)

    @classmethod
    def from_config(cls, cfg, root: str = ".", device: str | torch.device = "cpu", seed: int = 0) -> "AAClip":
        """The model a `ModelConfig` describes; a relative backbone path is looked up under `root` too."""
        return cls(load_backbone(cfg, root, device), cfg, seed)

    def reset_adapters(self, seed: int) -> None:
        """book:method-adapters: Xavier-uniform on every weight matrix, from a generator seeded with `seed`."""
        gen = torch.Generator().manual_seed(seed)
        for p in self.adapter_parameters():
            if p.dim() > 1:
                with torch.no_grad():
                    p.copy_(nn.init.xavier_uniform_(torch.empty(p.shape), generator=gen))

    def train(self, mode: bool = True):
        """Only the adapters switch mode: the backbone stays in eval mode (book:method-backbone)."""
        super().train(mode)
        self.clip.eval()
        return self

    # ------------------------------------------------------------------ sizes
    @property
    def grid_size(self) -> int:
        return self.backbone.grid_size

    @property
    def image_size(self) -> int:
        return self.backbone.image_size

    @property
    def device(self) -> torch.device:
        return next(self.text_adapter.parameters()).device

    # ------------------------------------------------------------------ text
    def encode_text(self, tokens: torch.Tensor, adapted: bool = True) -> torch.Tensor:
        """Sentence embeddings (n, D), not normalised. Adapted: the adapted text path (book:method-adapters);
        else CLIP's encode_text."""
        from open_clip.transformer import text_global_pool

        clip = self.clip
        if not adapted:
            return clip.encode_text(tokens)
        dtype = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(tokens).to(dtype) + clip.positional_embedding.to(dtype)
        for i, block in enumerate(clip.transformer.resblocks):
            x = block(x, attn_mask=clip.attn_mask)
            if i < self.text_adapt_until:
                x = residual_adapt(x, self.text_adapter["adapters"][i], self.adapter_weight)
        x = clip.ln_final(x)
        eot = text_global_pool(x, tokens, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
        return self.text_adapter["proj"](eot)

    def text_anchors(self, prompt_names: list[str], adapted: bool = True) -> torch.Tensor:
        """Text anchors (len(names), D, 2) (book:method-anchors) from the adapted text encoder (adapted=False: plain CLIP)."""
        encode = self.encode_text if adapted else self.clip.encode_text
        return prompts.text_anchors(encode, self.backbone.tokenizer, list(prompt_names))

    # ------------------------------------------------------------------ image
    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embedding + CLS + (resized) positional embedding + ln_pre: (B, 1 + N, width)."""
        S = self.backbone.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, S, S):
            raise AAClipError(f"images must be (B, 3, {S}, {S}) for this backbone, got {tuple(images.shape)}")
        v = self.clip.visual
        x = v.conv1(images.to(v.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.ln_pre(x)  # patch dropout is off (book:method-backbone)

    def _clip_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP's own normalised image embedding from the last block's tokens: ln_post(CLS) @ proj."""
        v = self.clip.visual
        return F.normalize(v.ln_post(x[:, 0]) @ v.proj, dim=-1)

    def image_features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Adapted patch features per level and the detection feature (book:method-features).

        Returns seg: L tensors (B, N, D), L2-normalised; det: (B, D) = mean over patches of
        normalize(det_proj(ln_post(last-level patches))), not renormalised.
        """
        blocks = self.clip.visual.transformer.resblocks
        x = self._embed(images)
        tokens = []
        for i, block in enumerate(blocks[: self.levels[-1]], start=1):
            x = attention_block(block, x)
            if i <= self.image_adapt_until:
                x = residual_adapt(x, self.image_adapter["adapters"][i - 1], self.adapter_weight)
            if i in self.levels:
                tokens.append(x[:, 1:])  # CLS dropped
        tokens = [self.clip.visual.ln_post(t) for t in tokens]
        seg = [F.normalize(proj(t), dim=-1) for proj, t in zip(self.image_adapter["seg_proj"], tokens)]
        det = F.normalize(self.image_adapter["det_proj"](tokens[-1]), dim=-1).mean(dim=1)
        return seg, det

    @torch.no_grad()
    def stage1_features(self, images: torch.Tensor, return_global: bool = False):
        """Frozen V-V CLIP features for the stage-1 loss (book:method-stage1; no adapters anywhere).

        Blocks before the first level run once, unmodified, shared by both paths. The plain
        path continues to the end for CLIP's global image embedding g (normalised). The V-V
        path runs blocks levels[0]..depth (6..24 at ViT-L) with V-V attention (`vv_attention`).
        Each level: ln_post, CLIP's visual.proj, L2-normalise, then + g (not renormalised).
        Returns L tensors (B, N, D); with `return_global`, also g (B, D) for the paper's loss.
        """
        v = self.clip.visual
        blocks = v.transformer.resblocks
        x = self._embed(images)
        start = self.levels[0]
        for block in blocks[: start - 1]:
            x = block(x)
        y = x
        for block in blocks[start - 1 :]:
            x = block(x)
        g = self._clip_embedding(x)
        feats = []
        for i, block in enumerate(blocks[start - 1 : self.levels[-1]], start=start):
            y = vv_block(block, y, self.vv_mode)
            if i in self.levels:
                feats.append(F.normalize(v.ln_post(y[:, 1:]) @ v.proj, dim=-1) + g[:, None, :])
        return (feats, g) if return_global else feats

    @torch.no_grad()
    def baseline_features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The anomaly-unaware CLIP in AA-CLIP's shape, so every table can show "CLIP" beside "AA-CLIP".

        Same levels, no adapters: patch tokens -> ln_post -> CLIP's own visual.proj -> normalise;
        det = CLIP's own normalised image embedding (CLS). Scored with the same prompts, maps and
        fusion (book:method-scoring) and with `text_anchors(..., adapted=False)`.
        """
        tokens, x = self.plain_level_tokens(images)
        seg = [F.normalize(t @ self.clip.visual.proj, dim=-1) for t in tokens]
        return seg, self._clip_embedding(x)

    def plain_level_tokens(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The unmodified CLIP's patch tokens after ln_post at each level, L x (B, N, W), and the last
        block's output (B, 1 + N, W): what the frozen backbone sees, before any projection."""
        v = self.clip.visual
        x = self._embed(images)
        tokens = []
        for i, block in enumerate(v.transformer.resblocks, start=1):
            x = block(x)
            if i in self.levels:
                tokens.append(v.ln_post(x[:, 1:]))
        return tokens, x

    # ------------------------------------------------------------------ parameters
    def text_parameters(self) -> list[nn.Parameter]:
        return list(self.text_adapter.parameters())

    def image_parameters(self) -> list[nn.Parameter]:
        return list(self.image_adapter.parameters())

    def adapter_parameters(self) -> list[nn.Parameter]:
        return self.text_parameters() + self.image_parameters()

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trainable tensors (text_adapter.*, image_adapter.*), detached copies."""
        return {
            k: v.detach().clone()
            for k, v in self.state_dict().items()
            if k.startswith(("text_adapter.", "image_adapter."))
        }

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Load adapters, refusing any missing, unexpected or misshapen key (named in the error)."""
        own = self.adapter_state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        for kind, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                raise AAClipError(
                    f"{source}: {kind} key(s) {', '.join(map(repr, keys))}; "
                    f"saved for another backbone or configuration than {self.backbone.name} with levels {self.levels}?"
                )
        for key, value in state.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise AAClipError(
                    f"{source}: key {key!r} has shape {tuple(value.shape)}, this model expects {tuple(own[key].shape)} "
                    f"(backbone {self.backbone.name})"
                )
        self.load_state_dict(state, strict=False)

    def describe(self) -> dict:
        """Sizes and switches; the parameter counts are book:method-adapters' check of a faithful build."""
        count = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
        b = self.backbone
        return {
            "backbone": b.name,
            "pretrained": b.pretrained,
            "weights_kind": b.weights.kind,
            "weights_location": str(Path(b.weights.location).resolve()) if b.weights.file else b.weights.location,
            "weights_sha256": b.weights.sha256,
            "activation": b.activation,
            "image_size": b.image_size,
            "patch_size": b.patch_size,
            "grid": [b.grid_size, b.grid_size],
            "n_patches": b.n_patches,
            "levels": list(self.levels),
            "vision_depth": b.vision_depth,
            "text_depth": b.text_depth,
            "vision_width": b.vision_width,
            "text_width": b.text_width,
            "embed_dim": b.embed_dim,
            "text_adapt_until": self.text_adapt_until,
            "image_adapt_until": self.image_adapt_until,
            "adapter_weight": self.adapter_weight,
            "seg_relu": self.seg_relu,
            "vv_attention": self.vv_mode,
            "trainable_text": count(self.text_parameters()),
            "trainable_image": count(self.image_parameters()),
            "frozen": count(self.clip.parameters()),
        }


def depth_setting(value: int | None, depth: int, name: str) -> int:
    """None -> a quarter of the depth (>= 1, book:method-backbone); otherwise checked against the depth."""
    if value is None:
        return max(1, depth // 4)
    if not 0 <= value <= depth:
        raise AAClipError(f"{name}={value}: must lie in 0..{depth} for this backbone")
    return value


def resolve_levels(levels: list[int] | None, depth: int) -> list[int]:
    if levels is None:
        return default_levels(depth)
    levels = list(levels)
    if not levels or levels != sorted(set(levels)) or levels[0] < 1 or levels[-1] > depth:
        raise AAClipError(f"levels={levels}: need increasing block numbers in 1..{depth}")
    return levels
