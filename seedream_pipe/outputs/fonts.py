"""Fonts for sheet text in whatever script a prompt uses, found without ever crashing.

DejaVu Sans covers Latin, Greek and Cyrillic and most symbols; for any other script (CJK,
Arabic, Devanagari, ...) fontconfig is asked for a font whose charset covers the character
(`fc-match ':charset=XXXX'`). Without fontconfig or any TrueType font, Pillow's built-in font
is used: the sheet is uglier, never missing.
"""

from __future__ import annotations

import shutil
import subprocess
import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from anyascii import anyascii
from PIL import ImageFont

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

_REGULAR = ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "Arial.ttf")
_BOLD = ("DejaVuSans-Bold.ttf", "LiberationSans-Bold.ttf", "Arial Bold.ttf")
# Code points the default fonts cover: Latin, Greek, Cyrillic (up to U+052F), general
# punctuation, arrows and common symbols (U+2000..U+2BFF).
_COVERED = ((0x0000, 0x052F), (0x1E00, 0x1FFF), (0x2000, 0x2BFF))


def _covered(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in _COVERED)


def needs_fallback(text: str) -> str | None:
    """The first character of `text` the default font does not cover, or None."""
    for char in text:
        if not _covered(char) and not char.isspace():
            return char
    return None


@lru_cache(maxsize=256)
def _fc_match(code_block: int, sample: int, bold: bool) -> str | None:
    """A font file covering code point `sample` (cached per 256-code-point block)."""
    fc = shutil.which("fc-match")
    if fc is None:
        return None
    pattern = f":charset={sample:x}" + (":weight=bold" if bold else "")
    try:
        done = subprocess.run(
            [fc, "-f", "%{file}", pattern], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    path = done.stdout.strip()
    return path or None


@lru_cache(maxsize=128)
def _truetype(path_or_name: str, size: int) -> Font | None:
    try:
        return ImageFont.truetype(path_or_name, size)
    except (OSError, ValueError):
        return None


@lru_cache(maxsize=64)
def default_font(size: int, bold: bool = False) -> Font:
    """DejaVu Sans (or a close relative) at `size`, else Pillow's built-in font."""
    for name in (*(_BOLD if bold else ()), *_REGULAR):
        font = _truetype(name, size)
        if font is not None:
            return font
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):  # Pillow built without FreeType
        return ImageFont.load_default()


#: At most this many blocks of uncovered characters are looked up per text.
_MAX_LOOKUPS = 4


def font_for(text: str, size: int, *, bold: bool = False) -> Font:
    """A font that covers `text` when the machine has one; the default font otherwise.

    Each block of characters the default font lacks is tried in turn: fc-match answers with its
    best font even when none covers the character (an emoji, say, gets DejaVu back), and such a
    character must not stop the CJK after it from finding its font.
    """
    blocks: list[int] = []
    for char in text:
        if not _covered(char) and not char.isspace() and ord(char) >> 8 not in blocks:
            blocks.append(ord(char) >> 8)
            path = _fc_match(ord(char) >> 8, ord(char), bold)
            if path and Path(path).name not in (*_REGULAR, *_BOLD):
                font = _truetype(path, size)
                if font is not None:
                    return font
            if len(blocks) >= _MAX_LOOKUPS:
                break
    return default_font(size, bold)


# A code point no font draws (a private-use noncharacter): what a font shows for a missing glyph.
_NO_GLYPH = "\U0010fffd"


@lru_cache(maxsize=4096)
def _drawable(char: str) -> bool:
    """Whether some font of this machine draws `char` (else it shows as an empty box)."""
    if _covered(char) and unicodedata.category(char) not in ("So", "Sk"):
        return True
    font = font_for(char, 24)
    if not isinstance(font, ImageFont.FreeTypeFont):
        return _covered(char)
    drawn, blank = font.getmask(char), font.getmask(_NO_GLYPH)
    return drawn.size != blank.size or bytes(drawn) != bytes(blank)


def spelled_out(text: str) -> str:
    """`text` with what no font here can draw written another way: a symbol by its Unicode name
    in brackets (with no emoji font, labels "✨" and "🌙" would be two identical boxes; they
    read "[sparkles]" and "[crescent moon]"), and a run of letters of a script no font here
    has in Latin letters (anyascii: "नमस्ते" reads "nmste", not as boxes, and two values still
    differ). Text that draws is returned as it is."""
    if text.isascii():
        return text
    out: list[str] = []
    letters: list[str] = []  # (a run of letters no font draws, with their combining marks)

    def flush() -> None:
        if letters:
            run = "".join(letters)
            out.append(anyascii(run) or "".join(_named(char) for char in run))
            letters.clear()

    for char in text:
        kind = unicodedata.category(char)
        if letters and kind.startswith("M"):
            letters.append(char)
        elif char.isspace() or kind in ("Mn", "Me", "Cf") or _drawable(char):
            flush()
            out.append(char)
        elif kind.startswith("L"):
            letters.append(char)
        else:
            flush()
            out.append(_named(char))
    flush()
    return "".join(out)


def _named(char: str) -> str:
    return "[" + unicodedata.name(char, f"U+{ord(char):04X}").lower() + "]"


def undrawn(texts: Iterable[str]) -> list[tuple[str, str]]:
    """Each text that `spelled_out` writes another way, with how (for a warning)."""
    return [(text, shown) for text in dict.fromkeys(texts) if (shown := spelled_out(text)) != text]
