"""Heatmap overlays with a fixed colour scale, so that two images' colours mean the same score."""

from __future__ import annotations

import numpy as np


def denormalize(image_tensor, mean, std) -> np.ndarray:
    """Undo the CLIP normalisation: (3,H,W) or (B,3,H,W) tensor -> uint8 (H,W,3) or (B,H,W,3)."""
    image = _numpy(image_tensor).astype(np.float32)
    channel_shape = (3, 1, 1) if image.ndim == 3 else (1, 3, 1, 1)
    image = image * np.asarray(std, np.float32).reshape(channel_shape) + np.asarray(mean, np.float32).reshape(
        channel_shape
    )
    image = np.moveaxis(image, -3, -1)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def overlay(image, anomaly_map, vmin: float = 0.0, vmax: float = 1.0, alpha: float = 0.5, cmap: str = "jet",
            threshold: float | None = None):
    """Blend a colour-mapped anomaly map over an RGB image -> uint8 (H, W, 3).

    `image`: uint8 or float in [0, 1], (H, W, 3) or (H, W), or a PIL image. `anomaly_map`: (h, w);
    resized bilinearly to the image if needed. Colours span [vmin, vmax] whatever the map's own
    range, so a clean image stays blue instead of being stretched to red. With `threshold`, the
    heat is drawn only where the map reaches it.
    """
    import matplotlib

    rgb = _rgb_float(image)
    heat = _resize(_numpy(anomaly_map).astype(np.float32), rgb.shape[:2])
    if vmax <= vmin:
        raise ValueError(f"overlay: vmax ({vmax}) must exceed vmin ({vmin})")
    scaled = np.clip((heat - vmin) / (vmax - vmin), 0.0, 1.0)
    colours = matplotlib.colormaps[cmap](scaled)[..., :3].astype(np.float32)
    if threshold is not None:
        alpha = np.where(heat >= threshold, alpha, 0.0)[..., None].astype(np.float32)
    blended = (1.0 - alpha) * rgb + alpha * colours
    return (np.clip(blended, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def annotated_overlay(image, anomaly_map, lines: list[str], vmin: float = 0.0, vmax: float = 1.0,
                      alpha: float = 0.5, cmap: str = "jet"):
    """The overlay at the image's own size, with a colour bar of the fixed [vmin, vmax] scale on the right
    and `lines` of text (the score, what the heat means) above: uint8 (H + text, W + bar, 3).

    A map that found nothing (all near vmin) then reads as "blue everywhere on a 0-1 scale", not as a
    broken picture.
    """
    from PIL import Image, ImageDraw

    picture = overlay(image, anomaly_map, vmin, vmax, alpha, cmap)
    height, width = picture.shape[:2]
    font, size = _font(width)
    line_height = size + 4
    top = line_height * len(lines) + 6
    bar = colour_bar(height, vmin, vmax, cmap, width=max(12, width // 30), font_size=size)
    canvas = Image.new("RGB", (width + 6 + bar.shape[1], height + top), "white")
    canvas.paste(Image.fromarray(picture), (0, top))
    canvas.paste(Image.fromarray(bar), (width + 6, top))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(lines):
        draw.text((4, 3 + i * line_height), text, fill="black", font=font)
    return np.asarray(canvas)


def colour_bar(height: int, vmin: float, vmax: float, cmap: str = "jet", width: int = 12,
               font_size: int | None = None, label: str | None = None) -> np.ndarray:
    """A vertical colour bar of [vmin, vmax] (vmax at the top) with three ticks, on white: uint8 (height, W, 3)."""
    import matplotlib
    from PIL import Image, ImageDraw

    font, size = _font(4 * height, font_size)
    ticks = 5 * size // 2 + 8
    extra = size + 6 if label else 0
    canvas = Image.new("RGB", (width + ticks + extra, height), "white")
    gradient = matplotlib.colormaps[cmap](np.linspace(1.0, 0.0, height))[:, :3]  # top of the bar = vmax
    canvas.paste(Image.fromarray((np.repeat(gradient[:, None, :], width, axis=1) * 255 + 0.5).astype(np.uint8)))
    draw = ImageDraw.Draw(canvas)
    for fraction in (0.0, 0.5, 1.0):
        y = int(round((1 - fraction) * (height - 1)))
        draw.line([(width, y), (width + 3, y)], fill="black")
        text = f"{vmin + fraction * (vmax - vmin):.2g}"
        draw.text((width + 5, min(max(0, y - size // 2), height - size)), text, fill="black", font=font)
    if label:  # written bottom to top beside the ticks
        strip = Image.new("RGB", (height, size + 4), "white")
        ImageDraw.Draw(strip).text((2, 1), label, fill="black", font=font)
        canvas.paste(strip.rotate(90, expand=True), (width + ticks + 2, 0))
    return np.asarray(canvas)


def _font(width: int, size: int | None = None):
    from PIL import ImageFont

    size = size or max(11, min(18, width // 24))
    return ImageFont.load_default(size=size), size


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Boolean edge pixels of a mask (the mask minus its 4-neighbour erosion)."""
    m = np.asarray(mask, bool)
    inner = m.copy()
    inner[1:] &= m[:-1]
    inner[:-1] &= m[1:]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _rgb_float(image) -> np.ndarray:
    array = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else _numpy(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"overlay: expected an (H, W, 3) or (H, W) image, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return np.clip(array.astype(np.float32), 0.0, 1.0)


def _resize(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if heat.ndim != 2:
        raise ValueError(f"overlay: expected an (H, W) anomaly map, got shape {heat.shape}")
    if heat.shape == tuple(size):
        return heat
    import torch
    import torch.nn.functional as F

    resized = F.interpolate(torch.from_numpy(heat)[None, None], size=size, mode="bilinear", align_corners=True)
    return resized[0, 0].numpy()
