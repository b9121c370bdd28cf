"""Rendering a scene: background with clutter, shapes with their textures, pixel noise."""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

from lsdet.data.synth.scenes import SceneObject
from lsdet.data.synth.settings import FAMILIES, TEXTURES, SynthSettings
from lsdet.data.synth.taxonomy import Taxonomy


def _unit_polygons(family: int, shape: int) -> list[tuple[np.ndarray, int]]:
    """The shape as filled (255) and cut-out (0) polygons in unit coordinates (radius 1)."""
    kind = FAMILIES[family]
    circle = np.linspace(0, 2 * np.pi, 33)[:-1]
    unit_circle = np.stack([np.cos(circle), np.sin(circle)], axis=1)
    if kind == "polygon":
        n = 3 + shape
        t = np.linspace(0, 2 * np.pi, n + 1)[:-1] - np.pi / 2
        return [(np.stack([np.cos(t), np.sin(t)], axis=1), 255)]
    if kind == "star":
        n = 4 + shape
        t = np.linspace(0, 2 * np.pi, 2 * n + 1)[:-1] - np.pi / 2
        r = np.where(np.arange(2 * n) % 2 == 0, 1.0, 0.45)
        return [(np.stack([r * np.cos(t), r * np.sin(t)], axis=1), 255)]
    if kind == "oval":
        aspect = 1 + 0.35 * shape
        return [(unit_circle * np.array([1.0, 1.0 / aspect]), 255)]
    if kind == "ring":
        hole = 0.25 + 0.12 * shape
        return [(unit_circle, 255), (unit_circle * hole, 0)]
    if kind == "cross":
        w = 0.12 + 0.06 * shape
        plus = np.array(
            [[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1], [-w, w],
             [-1, w], [-1, -w], [-w, -w]]
        )  # fmt: skip
        return [(plus, 255)]
    offset = 0.2 + 0.12 * shape
    return [(unit_circle, 255), (unit_circle * 0.85 + np.array([offset + 0.3, -0.1]), 0)]


def _texture_factor(texture: int, size: int, period: float, angle: float) -> np.ndarray:
    """Per-pixel brightness factor in [0, 1] (1 = full colour) for one texture."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = TEXTURES[texture]
    if kind == "plain":
        return np.ones((size, size), dtype=np.float32)
    if kind == "stripes":
        u = xx * math.cos(angle) + yy * math.sin(angle)
        return ((u / period) % 2.0 < 1.0).astype(np.float32)
    if kind == "dots":
        dx = (xx % period) - period / 2
        dy = (yy % period) - period / 2
        return (dx * dx + dy * dy > (period / 3.2) ** 2).astype(np.float32)
    return (((xx // period) + (yy // period)) % 2 == 0).astype(np.float32)


def _background(rng: np.random.Generator, settings: SynthSettings) -> Image.Image:
    size = settings.image_size
    c0, c1 = (
        np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.35), rng.uniform(0.25, 0.9)))
        for _ in range(2)
    )
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (xx * math.cos(angle) + yy * math.sin(angle) + 1.5) / 3.0
    pixels = (c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]) * 255
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    low = settings.object_size[0] * size
    for _ in range(
        int(rng.integers(settings.clutter_per_image[0], settings.clutter_per_image[1] + 1))
    ):
        colour = tuple(
            int(255 * c)
            for c in colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.8), rng.uniform(0.2, 1))
        )
        x0, y0 = rng.uniform(0, size, size=2)
        if rng.random() < 0.6:  # a line or a thin arc
            x1, y1 = rng.uniform(0, size, size=2)
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 3)))
        else:  # a small blob, well below the smallest object
            r = rng.uniform(1.5, max(2.0, low / 4))
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=colour)
    return image


def _render(
    objects: list[SceneObject], settings: SynthSettings, taxonomy: Taxonomy, seed_key: list[int]
) -> tuple[Image.Image, list[tuple[int, int, int, int] | None]]:
    """Draws the scene; returns the image and each object's tight pixel box (None if the
    object ended up invisible)."""
    rng = np.random.default_rng(seed_key)
    size = settings.image_size
    image = _background(rng, settings)
    tight: list[tuple[int, int, int, int] | None] = []
    for obj in objects:
        mask = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(mask)
        polygons = _unit_polygons(
            int(taxonomy.leaf_family[obj.leaf]), int(taxonomy.leaf_shape[obj.leaf])
        )
        for cx, cy, side, angle in obj.instances:
            rad = math.radians(angle)
            rot = np.array([[math.cos(rad), -math.sin(rad)], [math.sin(rad), math.cos(rad)]])
            for vertices, fill in polygons:
                points = vertices @ rot.T * (side / 2) + np.array([cx, cy])
                draw.polygon([tuple(p) for p in points.tolist()], fill=fill)
        tight.append(mask.getbbox())
        period = max(2.0, size / 32)
        factor = _texture_factor(
            int(taxonomy.leaf_texture[obj.leaf]), size, period, obj.stripe_angle
        )
        shade = 1.0 - settings.texture_contrast * (1.0 - factor)
        fill = (np.asarray(obj.colour, dtype=np.float32)[None, None] * shade[..., None]).astype(
            np.uint8
        )
        image.paste(Image.fromarray(fill, "RGB"), (0, 0), mask)
    if settings.noise_std > 0:
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels + rng.normal(0, settings.noise_std, size=pixels.shape)
        image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB")
    return image, tight
