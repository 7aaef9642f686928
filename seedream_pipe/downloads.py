"""Turning a fetched file into a kept image: proven by Pillow, renamed into place, thumbnailed,
and later re-checked against the sha256 the state recorded.

CPU work (decode, thumbnail, hashing): callers run these in a thread so the event loop keeps
polling while an image is checked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from seedream_pipe.images import IMAGE_FORMATS, IMAGE_FORMATS_SAID, THUMB_SIZE, save_thumbnail

# Twice the largest image the API makes (4096x4096): anything bigger is a decompression bomb,
# not an image we asked for. Checked here from the header, before any pixel is decoded, rather
# than by lowering Pillow's global limit under a notebook user's own code.
MAX_PIXELS = 4096 * 4096 * 2


class NotAnImage(Exception):
    """The bytes are not a complete image Pillow can decode (corrupt, truncated, garbage)."""


@dataclass(frozen=True, slots=True)
class KeptImage:
    path: Path  # `dest` with the suffix of the image's real format
    width: int
    height: int


def keep_image(tmp: Path, dest: Path, thumb: Path) -> KeptImage:
    """Check `tmp` is a whole PNG, JPEG or WebP image, write its thumbnail, then rename it to
    `dest` with the suffix of its real format (a JPEG is never kept under a .png name).

    The thumbnail is written first so that an image in place always has one. On any failure
    `tmp` is deleted and NotAnImage raised with Pillow's reason.
    """
    try:
        with Image.open(tmp, formats=list(IMAGE_FORMATS)) as img:
            size = img.size
            if size[0] * size[1] > MAX_PIXELS:
                raise ValueError(f"{size[0]}x{size[1]} pixels, more than any image the API makes")
            if img.format == "JPEG":
                # libjpeg decodes at 1/2 to 1/8 scale for the thumbnail: it still reads every
                # byte (a body cut short still fails) for less work than the full size
                img.draft("RGB", (THUMB_SIZE, THUMB_SIZE))
            img.load()  # a full decode: catches garbage and a body cut short
            final = dest.with_suffix(IMAGE_FORMATS[img.format or "PNG"])
            shrunk = _shrunk(img)
    except Image.UnidentifiedImageError:
        tmp.unlink(missing_ok=True)
        raise NotAnImage(f"not a {IMAGE_FORMATS_SAID} image") from None
    except Exception as exc:  # Pillow raises many kinds for bad bytes
        tmp.unlink(missing_ok=True)
        raise NotAnImage(f"not a valid image ({type(exc).__name__}: {exc})") from None
    try:
        save_thumbnail(shrunk, thumb)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None:
            # the file system refused the thumbnail (a full disk, say): not the image's fault,
            # and no download again would help; the run stops as for the image's own file
            raise
        raise NotAnImage(f"not a valid image ({type(exc).__name__}: {exc})") from None
    except BaseException:  # (Ctrl-C, a cancel: the file is not kept half done either)
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)
    return KeptImage(path=final, width=size[0], height=size[1])


def _shrunk(img: Image.Image) -> Image.Image:
    """The image reduced by a whole factor (a box filter) to about thumbnail size.

    Resampling a 1024px image to 512 with Lanczos costs twice the decode; a 2x2 box average
    is ten times cheaper and looks the same at thumbnail size. save_thumbnail finishes the job.
    """
    factor = max(img.size) // THUMB_SIZE
    return img.reduce(factor) if factor >= 2 else img


def remake_thumbnail(image: Path, thumb: Path) -> bool:
    """Write a missing thumbnail from the kept image; False when the image will not open."""
    try:
        with Image.open(image, formats=list(IMAGE_FORMATS)) as img:
            img.load()
            save_thumbnail(_shrunk(img), thumb)
    except Exception:
        return False
    return True
