"""Drawing the miniature world's objects, textures and scans with numpy, deterministic from a seed.

A picture is kept as layers until the very end so that a defect can change exactly the pixels
it means to: `surface` (the object's own colours, or the texture's pattern), `under` (what
shows where the object is not: the background, or a texture's backing), `alpha` (object
coverage, antialiased from a signed distance), then a `finish` (light falloff and sensor grain)
that is a fixed per-pixel function of the scene. Two pictures of the same scene therefore
differ only where their composites differ, which is what makes the defect masks exact.

Shapes live in object coordinates (u, v): the pose (centre, angle, scale) maps image
coordinates in [-1, 1] onto them, so the drawing does not depend on the pixel size.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

from aaclip_miniature.catalog import BACKGROUNDS, CAPTIONS, CLASSES, COLOURS, LIGHTS, world_classes


@dataclass(frozen=True)
class Scene:
    """Everything that decides one normal picture; `seed` drives its noise and layout details."""

    class_name: str
    colour: str
    second: str | None  # a texture's or capsule's second colour
    background: str | None  # objects only
    light: str  # a key of catalog.LIGHTS
    brightness: float
    light_strength: float
    cx: float
    cy: float
    angle: float  # radians
    scale: float
    seed: int

    @property
    def kind(self) -> str:
        return CLASSES[self.class_name]["kind"]

    def colour_phrase(self) -> str:
        return f"{self.colour} and {self.second}" if self.second else self.colour

    def caption(self, template: str) -> str:
        name = world_classes()[self.class_name]
        return template.format(name=name, colour=self.colour_phrase(), background=self.background, light=self.light)

    def captions(self) -> list[str]:
        return [self.caption(t) for t in CAPTIONS[self.kind]]


@dataclass
class Layers:
    surface: np.ndarray  # (S, S, 3) float32
    under: np.ndarray  # (S, S, 3) float32
    alpha: np.ndarray  # (S, S) float32 in [0, 1]
    region: np.ndarray  # (S, S) bool: where a defect may be placed (well inside the object)
    gain: np.ndarray  # (S, S) float32: light falloff
    grain: np.ndarray  # (S, S, 3) float32: sensor noise
    grayscale: bool = False

    @property
    def size(self) -> int:
        return self.alpha.shape[0]

    def composite(self) -> np.ndarray:
        a = self.alpha[..., None]
        return a * self.surface + (1.0 - a) * self.under


def finish(composite: np.ndarray, layers: Layers) -> np.ndarray:
    """Light and grain, then 8 bits: a fixed per-pixel function, so equal composites give equal pixels."""
    lit = composite * layers.gain[..., None] + layers.grain
    return np.clip(np.rint(lit * 255.0), 0, 255).astype(np.uint8)


def to_pil(pixels: np.ndarray, grayscale: bool) -> Image.Image:
    """8-bit grayscale (mode L) for scans, RGB otherwise."""
    return Image.fromarray(np.ascontiguousarray(pixels[..., 0]) if grayscale else pixels)


# ---------------------------------------------------------------------------- scenes
SCALES = {"object": (1.05, 1.3), "texture": (0.8, 1.25), "scan": (0.98, 1.12)}


def sample_scene(class_name: str, rng: np.random.Generator) -> Scene:
    """A random pose, palette colour, background and light for one picture of `class_name`."""
    look = CLASSES[class_name]
    kind = look["kind"]
    colour = str(rng.choice(look["colours"]))
    second = None
    if "second" in look:
        second = str(rng.choice([c for c in look["second"] if c != colour]))
    background = None
    if kind == "object":
        background = str(rng.choice([b for b in BACKGROUNDS if b != colour]))
    light = "evenly lit" if kind == "scan" else str(rng.choice(list(LIGHTS)))
    return Scene(
        class_name=class_name,
        colour=colour,
        second=second,
        background=background,
        light=light,
        brightness=float(rng.uniform(0.85, 1.12)),
        light_strength=float(rng.uniform(0.15, 0.35)),
        cx=float(rng.uniform(-0.08, 0.08)),
        cy=float(rng.uniform(-0.08, 0.08)),
        angle=float(rng.uniform(-0.2, 0.2) if kind == "scan" else rng.uniform(0, 2 * np.pi)),
        scale=float(rng.uniform(*SCALES[kind])),
        seed=int(rng.integers(2**31)),
    )


def render(scene: Scene, size: int) -> Layers:
    """The layers of a normal picture of `scene` at `size` x `size` pixels."""
    rng = np.random.default_rng(scene.seed)
    x, y = image_grid(size)
    cos, sin = np.cos(scene.angle), np.sin(scene.angle)
    u = (cos * (x - scene.cx) + sin * (y - scene.cy)) / scene.scale
    v = (-sin * (x - scene.cx) + cos * (y - scene.cy)) / scene.scale
    pixel = 2.0 / (size * scene.scale)  # one pixel in object units: the antialiasing width
    main = rgb(scene.colour)
    second = rgb(scene.second) if scene.second else None
    draw = DRAW[scene.class_name]
    if scene.kind == "texture":
        surface = draw(u, v, main, second, rng, size)
        under = np.broadcast_to(main * 0.25, surface.shape).copy()  # the backing seen through a hole
        alpha = np.ones((size, size), np.float32)
        margin = int(round(0.08 * size))
        region = np.zeros((size, size), bool)
        region[margin:-margin, margin:-margin] = True
    else:
        distance, surface = draw(u, v, main, second, rng, size)
        alpha = np.clip(0.5 - distance / pixel, 0.0, 1.0).astype(np.float32)
        region = distance < -0.06  # defects sit well inside the outline
        if scene.kind == "scan":
            under = np.full_like(surface, 0.03)
            region = distance < -0.16  # inside the skull
        else:
            under = background_layer(scene.background, rng, size)
    # light: a brightness and a linear falloff from the light's side
    dx, dy = LIGHTS[scene.light]
    gain = scene.brightness * (1.0 + scene.light_strength * (-dx * x - dy * y) * 0.5)
    grayscale = scene.kind == "scan"
    grain = 0.012 * rng.standard_normal((size, size, 1 if grayscale else 3), dtype=np.float32)
    grain = np.broadcast_to(grain, (size, size, 3)).copy()
    return Layers(
        surface=np.ascontiguousarray(surface, np.float32),
        under=np.ascontiguousarray(under, np.float32),
        alpha=alpha,
        region=region,
        gain=gain.astype(np.float32),
        grain=grain,
        grayscale=grayscale,
    )


def render_pixels(scene: Scene, size: int) -> np.ndarray:
    layers = render(scene, size)
    return finish(layers.composite(), layers)


# ---------------------------------------------------------------------------- helpers
def image_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in [-1, 1]: x to the right, y down."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(c, c, indexing="xy")


def rgb(name: str) -> np.ndarray:
    return np.asarray(COLOURS[name], np.float32)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise with about `cells` blobs across, unit standard deviation."""
    coarse = rng.standard_normal((cells + 3, cells + 3), dtype=np.float32)
    weights = cubic_weights(size, cells)
    field = weights @ coarse @ weights.T  # separable cubic interpolation of the coarse grid
    return (field - field.mean()) / (field.std() + 1e-6)


@functools.lru_cache(maxsize=64)
def cubic_weights(size: int, cells: int) -> np.ndarray:
    """(size, cells + 3) Catmull-Rom weights sampling `cells` intervals of a padded coarse grid."""
    position = 1.0 + (np.arange(size) + 0.5) * cells / size
    base = np.floor(position).astype(int)
    t = position - base
    taps = [
        (-1, -0.5 * t**3 + t**2 - 0.5 * t),
        (0, 1.5 * t**3 - 2.5 * t**2 + 1),
        (1, -1.5 * t**3 + 2 * t**2 + 0.5 * t),
        (2, 0.5 * t**3 - 0.5 * t**2),
    ]
    weights = np.zeros((size, cells + 3), np.float32)
    for offset, w in taps:
        np.add.at(weights, (np.arange(size), base + offset), w)
    return weights


def background_layer(name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    mottle = 0.035 * smooth_noise(rng, size, 4)
    return np.clip(rgb(name)[None, None, :] * (1.0 + mottle[..., None]), 0, 1)


def shade(colour: np.ndarray, factor: np.ndarray) -> np.ndarray:
    return colour[None, None, :] * factor[..., None]


def paint(surface: np.ndarray, where: np.ndarray, colour: np.ndarray) -> np.ndarray:
    surface[where] = colour  # in place: surfaces are fresh arrays
    return surface


def box(u, v, half_u, half_v, round_=0.0):
    qu, qv = np.abs(u) - half_u + round_, np.abs(v) - half_v + round_
    outside = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0))
    return outside + np.minimum(np.maximum(qu, qv), 0) - round_


def polygon(u, v, sides, inradius, phase=0.0):
    angles = phase + np.arange(sides) * 2 * np.pi / sides
    return np.max([u * np.cos(a) + v * np.sin(a) for a in angles], axis=0) - inradius


def bevel(distance, width):
    """0 at the outline, 1 deeper than `width` inside: darkens edges like a chamfer."""
    return np.clip(-distance / width, 0.0, 1.0)


# ---------------------------------------------------------------------------- objects
# Each returns (signed distance in object units, surface colours).
def draw_ring(u, v, main, second, rng, size):
    r = np.hypot(u, v)
    radius, tube = 0.5, 0.13
    distance = np.abs(r - radius) - tube
    t = np.clip((r - radius) / tube, -1, 1)
    tube_light = 0.45 + 0.55 * np.sqrt(1 - t**2)
    highlight = 0.25 * np.exp(-(((t + 0.35) / 0.2) ** 2))
    return distance, shade(main, tube_light) + highlight[..., None]


def draw_plate(u, v, main, second, rng, size):
    outline = box(u, v, 0.55, 0.55, 0.1)
    holes = np.min([np.hypot(u - a, v - b) - 0.075 for a in (-0.36, 0.36) for b in (-0.36, 0.36)], axis=0)
    distance = np.maximum(outline, -holes)
    brushed = 0.05 * np.sin(u * 90 + 2.0 * smooth_noise(rng, size, 6))
    light = (0.78 + 0.12 * v + brushed) * (0.7 + 0.3 * bevel(outline, 0.07)) * (0.75 + 0.25 * bevel(-holes, 0.05))
    return distance, shade(main, light)


def draw_pcb(u, v, main, second, rng, size):
    distance = box(u, v, 0.62, 0.44, 0.03)
    surface = shade(main, 0.85 + 0.05 * smooth_noise(rng, size, 5))
    copper = rgb("gold")
    for k in range(-3, 4):  # traces
        lane = np.abs(v - k * 0.11) < 0.012
        surface = paint(surface, lane & (np.abs(u + 0.1 * k) < 0.45), copper * 0.9)
    for a, b in ((-0.52, -0.34), (-0.52, 0.34), (0.52, -0.34), (0.52, 0.34)):  # mounting pads
        surface = paint(surface, np.hypot(u - a, v - b) < 0.05, copper)
    chips = [(-0.22, 0.0, 0.16, 0.2), (0.25, -0.12, 0.12, 0.1), (0.28, 0.2, 0.08, 0.08)]
    for cu, cv, hu, hv in chips:
        cu, cv = cu + rng.uniform(-0.04, 0.04), cv + rng.uniform(-0.04, 0.04)
        surface = paint(surface, box(u - cu, v - cv, hu, hv) < 0, np.full(3, 0.1, np.float32))
    return distance, surface * (0.75 + 0.25 * bevel(distance, 0.04))[..., None]


def draw_cookie(u, v, main, second, rng, size):
    r, phi = np.hypot(u, v), np.arctan2(v, u)
    lobes = 0.36 + 0.2 * (0.5 + 0.5 * np.cos(5 * phi))
    distance = (r - lobes) * 0.8
    light = (0.8 + 0.07 * smooth_noise(rng, size, 10)) * (0.7 + 0.3 * bevel(distance, 0.08))
    surface = shade(main, light)
    chocolate = rgb("brown") * 0.45
    for _ in range(int(rng.integers(4, 8))):
        a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.28)
        surface = paint(surface, np.hypot(u - d * np.cos(a), v - d * np.sin(a)) < rng.uniform(0.03, 0.05), chocolate)
    return distance, surface


def draw_nut(u, v, main, second, rng, size):
    outline = polygon(u, v, 6, 0.5)
    hole = np.hypot(u, v) - 0.21
    distance = np.maximum(outline, -hole)
    phi = np.arctan2(v, u)
    facets = 0.9 + 0.1 * np.cos(6 * phi)
    light = facets * (0.6 + 0.4 * bevel(outline, 0.09)) * (0.55 + 0.45 * bevel(-hole, 0.1)) + 0.08 * (u - v)
    return distance, shade(main, light)


def draw_capsule(u, v, main, second, rng, size):
    half, radius = 0.42, 0.24
    distance = np.hypot(u - np.clip(u, -half, half), v) - radius
    across = np.clip(v / radius, -1, 1)
    light = 0.6 + 0.4 * np.sqrt(1 - across**2)
    colours = np.where((u < 0)[..., None], main[None, None, :], (second if second is not None else main)[None, None, :])
    highlight = 0.2 * np.exp(-(((across + 0.4) / 0.15) ** 2))
    return distance, colours * light[..., None] + highlight[..., None]


def draw_bottle(u, v, main, second, rng, size):
    r = np.hypot(u, v)
    distance = r - 0.6
    light = np.select(
        [r > 0.52, r > 0.4, r > 0.24],
        [1.15 - 0.5 * (r - 0.52) / 0.08, 0.7 + 0.0 * r, 0.95 + 0.3 * (u + v)],
        0.25 + 0.1 * r,
    )
    return distance, shade(main, light)


def draw_screw(u, v, main, second, rng, size):
    head = np.hypot(u + 0.48, v) - 0.22
    shaft = box(u - 0.12, v, 0.48, 0.11)
    tip = polygon(u - 0.62, v, 3, 0.09, phase=0.0)
    distance = np.minimum(np.minimum(head, shaft), tip)
    threads = 0.72 + 0.28 * (np.mod((u + 0.6 * v) / 0.075, 1.0) > 0.5)
    slot = (np.abs(v) < 0.025) & (head < -0.03)
    light = np.where(head < 0, 0.8 + 0.25 * bevel(head, 0.08) - 0.5 * slot, threads)
    light = light * (0.8 + 0.2 * bevel(distance, 0.03))
    return distance, shade(main, light)


def draw_brain(u, v, main, second, rng, size):
    scale_u, scale_v = 0.66, 0.8
    r = np.hypot(u / scale_u, v / scale_v)
    distance = (r - 1.0) * scale_u
    skull = r > 0.88
    folds = 0.07 * smooth_noise(rng, size, 14) + 0.05 * np.sin(18 * r + 3 * smooth_noise(rng, size, 4))
    tissue = 0.45 + folds - 0.1 * r
    left, right = np.hypot((u + 0.09) / 0.05, (v + 0.02) / 0.18), np.hypot((u - 0.09) / 0.05, (v + 0.02) / 0.18)
    ventricles = np.minimum(left, right) < 1
    grey = np.where(skull, 0.88, np.where(ventricles, 0.12, tissue))
    return distance, np.repeat(grey[..., None], 3, axis=2)


# ---------------------------------------------------------------------------- textures
def draw_stripes(u, v, main, second, rng, size):
    period = rng.uniform(0.18, 0.32)
    stripe = np.mod(u / period + rng.uniform(), 1.0) < rng.uniform(0.35, 0.6)
    weave = 0.9 + 0.06 * np.sin(v * 160) + 0.04 * smooth_noise(rng, size, 12)
    return np.where(stripe[..., None], main, second) * weave[..., None]


def draw_mesh(u, v, main, second, rng, size):
    period, wire = rng.uniform(0.16, 0.24), 0.2
    fu, fv = np.mod(u / period, 1.0), np.mod(v / period, 1.0)
    on_u, on_v = np.abs(fu - 0.5) < wire, np.abs(fv - 0.5) < wire
    roundness = np.maximum(on_u * (1 - np.abs(fu - 0.5) / wire), on_v * (1 - np.abs(fv - 0.5) / wire))
    backing = shade(second, 0.55 + 0.05 * smooth_noise(rng, size, 6))
    metal = shade(main, 0.55 + 0.45 * roundness)
    return np.where((on_u | on_v)[..., None], metal, backing)


def draw_marble(u, v, main, second, rng, size):
    veins = np.abs(np.sin(3.0 * u + 2.2 * smooth_noise(rng, size, 3) + 0.8 * smooth_noise(rng, size, 9)))
    vein = np.clip(1.0 - veins / 0.18, 0, 1)
    base = shade(main, 0.9 + 0.05 * smooth_noise(rng, size, 5))
    return base * (1 - 0.7 * vein[..., None]) + second[None, None, :] * 0.7 * vein[..., None]


def draw_weave(u, v, main, second, rng, size):
    cell = rng.uniform(0.26, 0.36)
    i, j = np.floor(u / cell), np.floor(v / cell)
    lengthwise = np.mod(i + j, 2) == 0  # warp threads in one colour, weft threads in the other
    across = np.where(lengthwise, np.mod(v / cell, 1.0), np.mod(u / cell, 1.0))
    threads = 0.6 + 0.4 * np.abs(np.sin(np.pi * across * 2)) + 0.05 * smooth_noise(rng, size, 16)
    return np.where(lengthwise[..., None], shade(main, threads), shade(second, threads))


def draw_grain(u, v, main, second, rng, size):
    rings = np.sin(rng.uniform(14, 22) * (v + 0.18 * smooth_noise(rng, size, 3)) + 2 * u)
    streaks = 0.04 * np.sin(u * 60 + 4 * smooth_noise(rng, size, 8))
    return shade(main, 0.78 + 0.18 * rings + streaks)


def draw_tile(u, v, main, second, rng, size):
    period = rng.uniform(0.5, 0.65)
    fu, fv = np.mod(u / period, 1.0), np.mod(v / period, 1.0)
    grout = (np.minimum(fu, 1 - fu) < 0.035) | (np.minimum(fv, 1 - fv) < 0.035)
    surface = shade(main, 0.88 + 0.05 * smooth_noise(rng, size, 7))
    # speckles: at most one dot per small cell of the tile's own coordinates, from a random table
    cell, table = 0.07, rng.uniform(size=(32, 32, 4))
    ci, cj = np.floor(u / cell).astype(int) % 32, np.floor(v / cell).astype(int) % 32
    spot = table[ci, cj]
    du, dv = np.mod(u / cell, 1.0) - (0.25 + 0.5 * spot[..., 0]), np.mod(v / cell, 1.0) - (0.25 + 0.5 * spot[..., 1])
    dot = (np.hypot(du, dv) < 0.28) & (spot[..., 2] < 0.45)
    surface = np.where((dot & (spot[..., 3] < 0.5))[..., None], second[None, None, :], surface)
    surface = np.where((dot & (spot[..., 3] >= 0.5))[..., None], surface * 0.5, surface)
    return np.where(grout[..., None], np.full(3, 0.8, np.float32), surface)


DRAW = {
    "ring": draw_ring,
    "plate": draw_plate,
    "pcb": draw_pcb,
    "cookie": draw_cookie,
    "stripes": draw_stripes,
    "mesh": draw_mesh,
    "marble": draw_marble,
    "nut": draw_nut,
    "capsule": draw_capsule,
    "bottle": draw_bottle,
    "screw": draw_screw,
    "weave": draw_weave,
    "grain": draw_grain,
    "tile": draw_tile,
    "brain": draw_brain,
}
