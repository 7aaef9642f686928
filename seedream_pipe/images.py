"""Image conventions shared by the runner (which makes thumbnails as it downloads) and the
outputs (which lay sheets out from them and remake any that are missing).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from PIL import Image

from seedream_pipe.paths import fresh_temp, removed_on_error

#: Longest side of a thumbnail, in pixels.
THUMB_SIZE = 512
#: Thumbnails are JPEG: a 512px JPEG decodes several times faster than a PNG of the same
#: picture, and Pillow's draft mode can decode it at half size for a 256px sheet cell.
THUMB_SUFFIX = ".jpg"
THUMB_QUALITY = 85

#: What an image API sends back, and all Pillow is asked to decode: a downloaded file is
#: untrusted, and some of Pillow's other formats hand the bytes to outside programs
#: (EPS to Ghostscript). The value is the suffix a kept image of that format gets.
IMAGE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
IMAGE_FORMATS_SAID = "PNG, JPEG or WebP"  # the same three, as a message names them


def thumb_name(image_name: str) -> str:
    """The thumbnail file name of an image file name (same stem)."""
    return Path(image_name).stem + THUMB_SUFFIX


def save_thumbnail(image: Image.Image, dest: Path) -> tuple[int, int]:
    """Write a thumbnail of `image` (longest side THUMB_SIZE) to `dest` atomically; return its size."""
    thumb = image.copy() if image.mode == "RGB" else image.convert("RGB")
    thumb.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if dest.parent.is_symlink():  # (a thumbs/ pointing elsewhere: never written through)
        raise OSError(errno.ELOOP, f"{dest.parent.name}/ is a symbolic link", str(dest.parent))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp, out = fresh_temp(dest.parent, f".{dest.name}.", ".tmp")
    with removed_on_error(tmp):
        with out:
            thumb.save(out, "JPEG", quality=THUMB_QUALITY, optimize=False)
        os.replace(tmp, dest)
    return thumb.size
