"""The tiny CLIP: an open_clip `CLIP` built from a small config, pretrained on the world.

It is an ordinary open_clip model (ViT image tower, transformer text tower, OpenAI BPE
tokenizer), saved as an open_clip folder (`open_clip_config.json` + `open_clip_model.safetensors`)
that open_clip's own `local-dir:` loader reads, like any model a user brings. It is only small: 64 px input with patch 8, so an 8x8 patch grid at its native size;
vision depth 8 and text depth 4, so AA-CLIP's levels fall at blocks 2, 4, 6, 8 and its
adapters after a quarter of each tower (book:method-backbone). AA-CLIP then runs it at a larger input with
the positional embedding resized, as the paper runs a 336 px CLIP at 518.

Pretraining is contrastive with open_clip's own `ClipLoss` on captioned normal pictures, so
the model learns class, colour, background and light words but never sees a defect word. Half
the pictures carry a neutral mark (a line, dots, a patch; "a blue line on it") and meet their
unmarked twin in the same batch: without that, contrastive training on whole-picture captions
leaves the patch features blind to local marks (a linear probe separates defect patches no
better than on a random network), and no adapter can find what the features do not carry.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from aaclip.io import atomic_path, write_json

MODEL_NAME = "aaclip-tiny"
NATIVE_SIZE = 64
MODEL_CFG = {  # open_clip's CLIP(**model_cfg) arguments, as its JSON configs spell them
    # 128, twice the towers' width: with 64, AA-CLIP's mini-target image AUROC stayed near 0.69; with
    # 128 it reaches 0.75 and with 256 0.74, the probe unchanged (book:protocol-miniature-clip).
    "embed_dim": 128,
    "quick_gelu": False,  # plain GELU, which is what the AA-CLIP default (book:method-backbone) builds
    "vision_cfg": {"image_size": NATIVE_SIZE, "layers": 8, "width": 64, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 4},
}
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # CLIP's own (OpenAI)
CONFIG_FILE = "open_clip_config.json"  # what open_clip's local-dir: loader reads
WEIGHTS_FILE = "open_clip_model.safetensors"
RECIPE_FILE = "pretraining.json"  # how the weights were made (ours; open_clip ignores it)


def create_model(seed: int | None = None):
    """A randomly initialised tiny CLIP (seeded when `seed` is given) and its tokenizer."""
    import open_clip

    if seed is not None:
        torch.manual_seed(seed)
    return open_clip.CLIP(**copy.deepcopy(MODEL_CFG)), get_tokenizer()


def get_tokenizer():
    """open_clip's OpenAI BPE tokenizer at the config's context length (works offline)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=MODEL_CFG["text_cfg"]["context_length"])


RECIPES = {  # pretraining per world size (catalog.SIZES draws the images): epochs over the set, batch 64
    # 6000 steps on 24000 pictures (~25 min on one core; shipped, aaclip_miniature/shipped.py): the
    # probe of the frozen patch features on mini-target rises from 0.67 at 744 steps to 0.83
    "default": {"epochs": 16},
    "smoke": {"epochs": 3},  # 30 steps: enough to beat random initialisation, not to be good
}


@dataclass
class PretrainSettings:
    epochs: int = 7
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup_steps: int = 40  # at most half the run; a short warmup at this lr collapses the features
    betas: tuple[float, float] = (0.9, 0.98)
    shift: int = 4  # random translation in pixels (pad + crop): light augmentation that keeps captions true
    twins: bool = True  # images come in twin pairs (2k, 2k + 1) that must share a batch (generate.pretrain_set)


def pretrain(images: torch.Tensor, tokens: torch.Tensor, settings: PretrainSettings, seed: int, progress: bool = True):
    """Train a fresh tiny CLIP contrastively; returns (model, history of per-epoch mean losses).

    images: uint8 (N, 3, 64, 64); tokens: (N, K, context) with K captions per image, one drawn
    per step. Seeded: the same inputs and seed give the same weights on the same machine.
    """
    from open_clip.loss import ClipLoss

    if settings.twins and (images.shape[0] % 2 or settings.batch_size % 2):
        raise ValueError(f"twin pairs need an even image count and batch size, got {images.shape[0]} and {settings.batch_size}")
    model, _ = create_model(seed=seed)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, settings)
    n = images.shape[0]
    steps_per_epoch = max(1, n // settings.batch_size)
    total = pretrain_steps(n, settings)
    warmup = max(1, min(settings.warmup_steps, total // 2))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total))
    loss_fn = ClipLoss()
    mean, std = clip_mean_std()
    history = []
    bar = tqdm(total=total, desc="pretraining tiny CLIP", unit="step", disable=not progress)
    for epoch in range(settings.epochs):
        order = shuffle(n, settings.twins, generator)
        losses = []
        for step in range(steps_per_epoch):
            index = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            pick = torch.randint(tokens.shape[1], (len(index),), generator=generator)
            batch = shift_batch(images[index], settings.shift, generator)
            batch = (batch.float() / 255.0 - mean) / std
            image_features, text_features, logit_scale = model(batch, tokens[index, pick])[:3]
            loss = loss_fn(image_features, text_features, logit_scale)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pretraining loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():  # CLIP's clamp: a temperature below 1/100 makes training unstable
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        history.append({"epoch": epoch + 1, "loss": sum(losses) / len(losses)})
    bar.close()
    model.eval()
    return model, history


def pretrain_steps(n: int, settings: PretrainSettings) -> int:
    """Optimiser steps of a pretraining run on n images (whole batches only, at least one per epoch)."""
    return max(1, n // settings.batch_size) * settings.epochs


def shuffle(n: int, twins: bool, generator: torch.Generator) -> torch.Tensor:
    """A random order of n images; with `twins`, pairs (2k, 2k + 1) stay side by side, so an
    even batch size never splits a pair and each picture meets its twin as a hard negative."""
    if not twins:
        return torch.randperm(n, generator=generator)
    pairs = torch.randperm(n // 2, generator=generator)
    return torch.stack([2 * pairs, 2 * pairs + 1], dim=1).reshape(-1)


def make_optimizer(model, settings: PretrainSettings) -> torch.optim.AdamW:
    """AdamW; no weight decay on gains, biases, embeddings' scale and the temperature (CLIP's recipe)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "logit_scale" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=settings.betas, eps=1e-6)


def lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def shift_batch(batch: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `shift` pixels (edge padding), one offset per image."""
    if shift <= 0:
        return batch
    size = batch.shape[-1]
    padded = torch.nn.functional.pad(batch.float(), (shift,) * 4, mode="replicate")
    offsets = torch.randint(2 * shift + 1, (batch.shape[0], 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + size, dx : dx + size] for i, (dy, dx) in enumerate(offsets)])


def clip_mean_std() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)


# ---------------------------------------------------------------------------- files
def save(model, directory: str | Path, settings: PretrainSettings, seed: int, extra: dict | None = None) -> dict:
    """An open_clip folder: the weights (open_clip's state-dict names), its config, and our recipe."""
    from safetensors.torch import save_file

    directory = Path(directory)
    weights = directory / WEIGHTS_FILE
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"model_name": MODEL_NAME})
    config = {
        "model_name": MODEL_NAME,
        "model_cfg": MODEL_CFG,
        "preprocess_cfg": {"size": NATIVE_SIZE, "mean": list(MEAN), "std": list(STD)},
    }
    recipe = {
        "seed": seed,
        **asdict(settings), "loss": "open_clip.loss.ClipLoss", "optimizer": "AdamW", **(extra or {}),
    }  # fmt: skip
    return {
        "weights": weights,
        "config": write_json(directory / CONFIG_FILE, config),
        "recipe": write_json(directory / RECIPE_FILE, recipe),
    }


def load(directory: str | Path):
    """(model at its native size, in eval mode, tokenizer) from a folder written by `save`, by open_clip's loader."""
    import open_clip

    model = open_clip.create_model(f"local-dir:{directory}")
    return model.eval(), open_clip.get_tokenizer(f"local-dir:{directory}")
