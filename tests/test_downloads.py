"""Turning a fetched file into a kept image: which bytes count as an image, and what it is named."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from seedream_pipe.downloads import NotAnImage, keep_image


def fetched(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / ".download-1-abc.part"
    path.write_bytes(data)
    return path


def encoded(fmt: str, size: tuple[int, int] = (1024, 768)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 40, 90)).save(out, fmt)
    return out.getvalue()


@pytest.mark.parametrize(("fmt", "suffix"), [("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp")])
def test_an_image_is_kept_under_the_suffix_of_its_real_format(tmp_path: Path, fmt: str, suffix: str) -> None:
    tmp = fetched(tmp_path, encoded(fmt))
    dest, thumb = tmp_path / "images" / "0001_abc_x.png", tmp_path / "thumbs" / "0001_abc_x.jpg"
    dest.parent.mkdir()

    kept = keep_image(tmp, dest, thumb)

    assert kept.path == dest.with_suffix(suffix)  # a JPEG is never kept as .png
    assert (kept.width, kept.height) == (1024, 768)
    assert not tmp.exists() and kept.path.exists()
    with Image.open(thumb) as made:
        assert made.format == "JPEG" and made.size == (512, 384)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("EPS, which Pillow would hand to Ghostscript", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"),
        ("BMP", encoded("BMP", (8, 8))),
        ("GIF", encoded("GIF", (8, 8))),
        ("garbage", b"\x00not an image\x00" * 100),
    ],
)
def test_only_png_jpeg_and_webp_are_decoded(tmp_path: Path, name: str, data: bytes) -> None:
    tmp = fetched(tmp_path, data)
    with pytest.raises(NotAnImage, match="not a PNG, JPEG or WebP image"):
        keep_image(tmp, tmp_path / "x.png", tmp_path / "x.jpg")
    assert not tmp.exists() and not (tmp_path / "x.png").exists() and not (tmp_path / "x.jpg").exists()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_file_cut_short_is_not_an_image(tmp_path: Path, fmt: str) -> None:
    import numpy as np

    noise = np.random.default_rng(7).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, fmt)  # noise: every part of the body matters
    whole = out.getvalue()
    tmp = fetched(tmp_path, whole[: len(whole) // 2])
    with pytest.raises(NotAnImage, match="not a valid image"):
        keep_image(tmp, tmp_path / "x.png", tmp_path / "x.jpg")
    assert not tmp.exists() and not (tmp_path / "x.png").exists()


def test_a_decompression_bomb_is_refused_from_its_header_without_touching_pillow_s_limit(tmp_path: Path) -> None:
    assert Image.MAX_IMAGE_PIXELS == 1024 * 1024 * 1024 // 4 // 3  # Pillow's default, untouched
    # a 10000x4000 PNG of one colour: a few kB on disk, 40 Mpx decoded
    tmp = fetched(tmp_path, encoded("PNG", (10000, 4000)))
    with pytest.raises(NotAnImage, match="10000x4000 pixels, more than any image the API makes"):
        keep_image(tmp, tmp_path / "x.png", tmp_path / "x.jpg")
    assert not tmp.exists() and not (tmp_path / "x.jpg").exists()


def test_a_full_disk_writing_the_thumbnail_is_the_file_systems_error_not_a_bad_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ENOSPC while writing the thumbnail was taken for a bad image (NotAnImage): the runner
    # fetched the paid-for image 4 times, then failed the job "not a valid image" (exit 1, and
    # skipped by the next run), where a full disk stops the run with 74 to resume once freed.
    import errno

    import seedream_pipe.images as images

    def full(folder: Path, prefix: str, suffix: str) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device", str(folder))

    monkeypatch.setattr(images, "fresh_temp", full)
    tmp = fetched(tmp_path, encoded("JPEG"))
    dest, thumb = tmp_path / "images" / "0001_abc_x.jpg", tmp_path / "thumbs" / "0001_abc_x.jpg"
    dest.parent.mkdir()
    with pytest.raises(OSError) as raised:
        keep_image(tmp, dest, thumb)
    assert not isinstance(raised.value, NotAnImage) and raised.value.errno == errno.ENOSPC
    assert not tmp.exists() and not dest.exists()  # (the partial file gone, nothing kept)
