"""The simulator's images: real JPEGs (or PNGs), sized like Seedream's, that show what was asked for.

Pure functions (prompt and resolution in, pixels or file bytes out), used by the simulator's file
endpoint and by anyone who needs stand-in images (the contact-sheet benchmark). An image is
deterministic for a given (prompt, resolution, take) and visibly different per prompt: its colours
come from a hash of the prompt, and the prompt and the resolution are drawn on it, so a contact
sheet of simulator output is meaningful to look at.

`take` counts the images made for the same request, 1 for the first: the real model draws a new
picture each time it is asked (a recipe's `repeats` send the same body N times to get N
pictures), so a later take keeps the prompt's colours, moves its shapes and says "take N".
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import re
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from seedream_pipe.sim.config import SERVED_FORMATS

DEFAULT_RESOLUTION = "2048x2048 (1:1)"  # the schema's default
# 1K/2K/4K name a pixel budget of about side x side; the model picks the aspect ratio.
BUDGET_SIDES = {"1K": 1024, "2K": 2048, "4K": 4096}
# Sizes are rounded to a multiple of this, as image models do.
SIZE_STEP = 8
# zlib level 1: a 2048x2048 image encodes several times faster than at the default level 6
# for a file not much larger; speed matters more here than bytes on a loopback socket.
PNG_COMPRESS_LEVEL = 1
# Seedream 4.0 makes JPEGs (its providers document PNG output only from Seedream 5.0 on), at a
# quality that keeps fine detail: 90, a common choice for generated images.
JPEG_QUALITY = 90

_FIXED_SIZE = re.compile(r"^\s*(\d{2,5})\s*[xX×]\s*(\d{2,5})\b")
# "16:9", "3 : 4", "21:9"; only the aspect ratios people write, so that a time of day like
# "10:30" or "12:15" is never read as one
_RATIO = re.compile(r"(?<![\d:])(\d{1,2})\s*:\s*(\d{1,2})(?![\d:])")
_WIDE_RATIOS = ((1, 1), (4, 3), (3, 2), (16, 9), (21, 9), (5, 4), (2, 1), (16, 10), (7, 5), (3, 1))
_KNOWN_RATIOS = frozenset(_WIDE_RATIOS) | frozenset((b, a) for a, b in _WIDE_RATIOS)
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _prompt_ratio(prompt: str) -> tuple[int, int] | None:
    """The aspect ratio a prompt names (e.g. "16:9", "portrait 3:4"), or None for square."""
    for match in _RATIO.finditer(prompt):
        a, b = int(match.group(1)), int(match.group(2))
        if (a, b) not in _KNOWN_RATIOS:
            continue
        lowered = prompt.lower()
        # "portrait 4:3" means a tall image whichever way round the numbers are written
        if ("portrait" in lowered and a > b) or ("landscape" in lowered and a < b):
            a, b = b, a
        return a, b
    return None


def image_size(resolution: str | None, prompt: str = "") -> tuple[int, int]:
    """(width, height) of the image Seedream would return for this request.

    A fixed size ("2560x1440 (16:9)") is taken as is. 1K/2K/4K keep the pixel budget side²
    and take the aspect ratio the prompt names (square when it names none), each side rounded
    to a multiple of 8: "1K" with "16:9" in the prompt gives 1368x768.
    """
    resolution = DEFAULT_RESOLUTION if resolution is None else resolution
    side = BUDGET_SIDES.get(resolution.strip().upper())
    if side is not None:
        ratio = _prompt_ratio(prompt)
        if ratio is None:
            return side, side
        scale = math.sqrt(ratio[0] / ratio[1])
        width = max(SIZE_STEP, round(side * scale / SIZE_STEP) * SIZE_STEP)
        height = max(SIZE_STEP, round(side / scale / SIZE_STEP) * SIZE_STEP)
        return width, height
    match = _FIXED_SIZE.match(resolution)
    if match:
        return int(match.group(1)), int(match.group(2))
    # Unknown values never reach here through the API (the schema's enum rejects them).
    return 2048, 2048


@lru_cache(maxsize=64)
def _font(size: int, bold: bool) -> Font:
    names = ("DejaVuSans-Bold.ttf",) if bold else ("DejaVuSans.ttf",)
    for name in (*names, "DejaVuSans.ttf", "LiberationSans-Regular.ttf", "Arial.ttf"):
        try:
            # Pillow searches the system font folders for a bare file name
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _palette(prompt: str) -> tuple[tuple[int, int, int], tuple[int, int, int], bytes]:
    digest = _digest(prompt)
    hue = digest[0] / 255
    hue2 = (hue + 0.25 + digest[1] / 255 * 0.5) % 1.0
    sat = 0.45 + digest[2] / 255 * 0.4
    c1 = colorsys.hsv_to_rgb(hue, sat, 0.85)
    c2 = colorsys.hsv_to_rgb(hue2, sat, 0.45)

    def rgb(c: tuple[float, float, float]) -> tuple[int, int, int]:
        return (round(c[0] * 255), round(c[1] * 255), round(c[2] * 255))

    return rgb(c1), rgb(c2), digest


def _digest(prompt: str, take: int = 1) -> bytes:
    # (the first take hashes the prompt alone, as every image did before takes existed)
    text = prompt if take == 1 else f"{prompt}\x00take {take}"
    return hashlib.sha256(text.encode("utf-8")).digest()


def _background(prompt: str, width: int, height: int, take: int = 1) -> Image.Image:
    """A diagonal two-colour gradient with soft blobs: the colours chosen by the prompt's hash,
    the gradient's angle and the blobs by the hash of the prompt and the take."""
    c1, c2, digest = _palette(prompt)
    digest = digest if take == 1 else _digest(prompt, take)
    # Drawn small and scaled up: cheap at any size, and the upscale makes the blobs soft.
    small_w = 256
    small_h = max(16, round(256 * height / width))
    angle = digest[3] / 255 * 2 * math.pi
    ys, xs = np.mgrid[0:small_h, 0:small_w].astype(np.float32)
    t = (xs / small_w - 0.5) * math.cos(angle) + (ys / small_h - 0.5) * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    start = np.array(c1, dtype=np.float32)
    end = np.array(c2, dtype=np.float32)
    pixels = start + (end - start) * t[..., None]
    small = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(small, "RGBA")
    for i in range(4):
        b = digest[4 + i * 4 : 8 + i * 4]
        cx, cy = b[0] / 255 * small_w, b[1] / 255 * small_h
        r = (0.08 + b[2] / 255 * 0.25) * min(small_w, small_h)
        tone = (255, 255, 255, 40 + b[3] % 50) if i % 2 == 0 else (0, 0, 0, 30 + b[3] % 40)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tone)
    # a slight blur hides the staircase edges that upscaling would magnify
    small = small.filter(ImageFilter.GaussianBlur(1.5))
    return small.resize((width, height), Image.Resampling.BILINEAR)


def _wrap(text: str, font: Font, max_width: float) -> list[str]:
    """Greedy word wrap by measured width; a word too long for a line is split by characters."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = ""
        # split an over-long word (or a run of CJK with no spaces) into fitting pieces
        for char in word:
            if font.getlength(current + char) > max_width and current:
                lines.append(current)
                current = char
            else:
                current += char
    if current:
        lines.append(current)
    return lines


def render_image(prompt: str, resolution: str | None = None, take: int = 1) -> Image.Image:
    """The RGB image for a request: background from the prompt's hash, resolution and prompt on it.

    `take`: which image this is of those made for the same request (1 for the first)."""
    if take < 1:
        raise ValueError(f"take must be 1 or more, not {take}")
    resolution = DEFAULT_RESOLUTION if resolution is None else resolution
    width, height = image_size(resolution, prompt)
    image = _background(prompt, width, height, take)
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    margin = round(short * 0.06)
    usable = width - 2 * margin

    title_size = max(10, round(short / 9))
    title_font = _font(title_size, bold=True)
    # the resolution is the one thing that must be read at thumbnail size: largest that fits
    while title_size > 10 and title_font.getlength(resolution) > usable:
        title_size = round(title_size * 0.9)
        title_font = _font(title_size, bold=True)
    size_font = _font(max(8, round(short / 20)), bold=False)
    stroke = max(1, round(short / 300))
    y = margin
    draw.text((margin, y), resolution, font=title_font, fill="white", stroke_width=stroke * 2, stroke_fill="black")
    y += round(title_size * 1.25)
    size_line = f"{width} x {height}" if take == 1 else f"{width} x {height} · take {take}"
    draw.text((margin, y), size_line, font=size_font, fill="white", stroke_width=stroke, stroke_fill="black")
    y += round(short / 20 * 1.8)

    prompt_size = max(8, round(short / 24))
    prompt_font = _font(prompt_size, bold=False)
    line_height = round(prompt_size * 1.3)
    lines = _wrap(prompt, prompt_font, usable)
    room = max(1, (height - margin - y) // line_height)
    if len(lines) > room:
        lines = lines[:room]
        lines[-1] = lines[-1].rstrip(" .,;") + " …"
    for line in lines:
        draw.text((margin, y), line, font=prompt_font, fill="white", stroke_width=stroke, stroke_fill="black")
        y += line_height
    return image


def render_png(prompt: str, resolution: str | None = None) -> bytes:
    """`render_image` encoded as PNG (fast compression)."""
    return render_file(prompt, resolution, "png")


def render_file(prompt: str, resolution: str | None = None, image_format: str = "jpeg", take: int = 1) -> bytes:
    """`render_image` encoded as a file of `image_format` ("jpeg" or "png")."""
    if image_format not in SERVED_FORMATS:
        raise ValueError(f"image_format must be one of {', '.join(SERVED_FORMATS)}, not {image_format!r}")
    buffer = io.BytesIO()
    image = render_image(prompt, resolution, take)
    if image_format == "png":
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
