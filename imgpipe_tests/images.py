"""Generated test images: nothing is shipped, everything is made by the test that needs it."""
from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter


def noisy_gradient(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """Gradients plus noise, so that a JPEG's quality shows in its tables and its bytes."""
    return Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize(size),
            Image.effect_noise(size, 40),
            Image.radial_gradient("L").resize(size),
        ),
    )


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """Gradients, shapes and grain: compresses like a photo, unlike a flat test card."""
    rng = random.Random(seed)
    im = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(30):
        x, y, r = rng.randrange(width), rng.randrange(height), rng.randrange(8, max(9, width // 6))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(rng.randrange(256) for _ in range(3)))
    return im.filter(ImageFilter.GaussianBlur(1.5)).effect_spread(2)


def save_jpeg(path: Path, quality: int, size=(640, 480), seed: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    photo_like(*size, seed=seed).save(path, quality=quality)
    return path


def illustration(width: int, height: int, seed: int) -> Image.Image:
    """Smooth gradients under sharp-edged shapes: the kind of picture AVIF compresses best, ahead of WebP, both
    well ahead of JPEG (where a test needs each format to be the smaller one by a margin)."""
    rng = random.Random(seed)
    image = Image.merge("RGB", [Image.radial_gradient("L").resize((width, height)),
                                Image.linear_gradient("L").resize((width, height)),
                                Image.linear_gradient("L").rotate(90).resize((width, height))])
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y, r = rng.randrange(width), rng.randrange(height), rng.randrange(20, width // 5)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(rng.randrange(256) for _ in range(3)))
    return image
