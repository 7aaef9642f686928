"""The contact sheet: layout (pure), label wrapping, geometry, and the pixels Pillow draws."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _outputs_fixture import COLOURS, make_folder, plan_jobs
from PIL import Image, ImageFont

from seedream_pipe.errors import OutputError, UsageError
from seedream_pipe.outputs import fonts as fonts_module
from seedream_pipe.outputs import layout as layout_module
from seedream_pipe.outputs import make_sheet, open_output
from seedream_pipe.outputs.fonts import font_for, needs_fallback
from seedream_pipe.outputs.layout import (
    ELLIPSIS,
    Metrics,
    SheetOptions,
    Span,
    page_geometry,
    plan_sheet,
    resolve_options,
    wrap_label,
)
from seedream_pipe.outputs.sheet import LETTERBOX, PLACEHOLDER_STYLE
from seedream_pipe.state import JobRecord, StateStore

AXES = ["subject", "style", "resolution"]
SENTENCE = "an ultra detailed watercolor of terraced rice fields at blue hour"


def records(tmp_path: Path, **kwargs: object) -> list[JobRecord]:
    make_folder(tmp_path, **kwargs)  # type: ignore[arg-type]
    with StateStore.for_output_dir(tmp_path) as store:
        return store.jobs()


def width_of(text: str, size: int = 10, bold: bool = False) -> float:
    """A fake measure: every character is 10 px wide."""
    return 10.0 * len(text)


# --- layout ------------------------------------------------------------------------------------


def test_default_layout_is_vars_down_the_side_and_resolution_across(tmp_path: Path) -> None:
    layout = plan_sheet(records(tmp_path), AXES, SheetOptions())
    assert (layout.rows, layout.cols, layout.page_by, layout.inline) == (
        ["subject", "style"],
        ["resolution"],
        None,
        [],
    )
    (page,) = layout.pages
    assert page.row_keys == [
        ("cat", "watercolor"),
        ("cat", "photo"),
        ("tea", "watercolor"),
        ("tea", "photo"),
    ]
    assert page.col_keys == [("1:1",), ("16:9",)]
    # the outer axis spans its inner values
    assert page.row_spans == [
        Span("subject", "cat", 0, 0, 2),
        Span("subject", "tea", 0, 2, 2),
        Span("style", "watercolor", 1, 0, 1),
        Span("style", "photo", 1, 1, 1),
        Span("style", "watercolor", 1, 2, 1),
        Span("style", "photo", 1, 3, 1),
    ]
    assert page.col_spans == [
        Span("resolution", "1:1", 0, 0, 1),
        Span("resolution", "16:9", 0, 1, 1),
    ]
    assert [j.job_index for j in page.jobs_at(1, 1)] == [4]  # cat/photo/16:9
    assert [j.job_index for j in page.jobs_at(2, 0)] == [5]


def test_named_axes_and_nested_columns(tmp_path: Path) -> None:
    options = resolve_options({}, rows="style", cols="subject,resolution")
    layout = plan_sheet(records(tmp_path), AXES, options)
    (page,) = layout.pages
    assert page.col_keys == [("cat", "1:1"), ("cat", "16:9"), ("tea", "1:1"), ("tea", "16:9")]
    assert page.col_spans[:2] == [Span("subject", "cat", 0, 0, 2), Span("subject", "tea", 0, 2, 2)]
    assert [j.job_index for j in page.jobs_at(1, 3)] == [8]  # photo / tea / 16:9


def test_recipe_settings_apply_and_the_command_line_wins() -> None:
    settings = {"rows": ["style"], "cols": ["subject"], "cell": 128, "max_cells": 9}
    assert resolve_options(settings) == SheetOptions(("style",), ("subject",), None, 128, 9)
    assert resolve_options(settings, rows="subject", cols="style", cell=64).rows == ("subject",)
    assert resolve_options(settings, cell=64).cell == 64
    with pytest.raises(UsageError, match="png or jpeg"):
        resolve_options({}, fmt="gif")


def test_an_axis_the_command_line_names_leaves_the_recipe_s_other_side(tmp_path: Path) -> None:
    # The user typed one option: a clash with the recipe's sheet settings is theirs to win, not
    # an error blaming the option. The sides they did not name keep the recipe's other axes.
    jobs = records(tmp_path)
    settings = {"rows": ["subject", "style"], "cols": ["resolution"], "page_by": None}

    def sides(**given: str) -> tuple[list[str], list[str], str | None]:
        layout = plan_sheet(jobs, AXES, resolve_options(settings, **given))
        return layout.rows, layout.cols, layout.page_by

    assert sides(cols="style") == (["subject"], ["style"], None)
    assert sides(rows="resolution") == (["resolution"], [], None)  # the recipe's cols emptied: the default
    assert sides(page_by="subject") == (["style"], ["resolution"], "subject")
    assert sides(rows="style", cols="subject") == (["style"], ["subject"], None)
    # a side the command line empties falls back to its default, as if the recipe had not set it
    assert resolve_options({"rows": ["style"], "cols": ["subject"]}, cols="style").rows is None
    # the recipe's page_by put on a side no longer pages
    assert resolve_options({**settings, "page_by": "style"}, rows="style").page_by is None
    # two options of the command line still clash
    with pytest.raises(UsageError, match=r"axis 'style' is named in both --rows and --cols"):
        sides(rows="style", cols="style")
    with pytest.raises(UsageError, match=r"--page-by 'style' is also a row or column axis"):
        sides(rows="style", page_by="style")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rows": ["style"], "cols": ["style"]}, r"axis 'style' is named in both sheet.rows and sheet.cols"),
        ({"rows": ["style"], "page_by": "style"}, r"sheet.page_by 'style' is also a row or column axis"),
        ({"rows": ["mood"]}, r"sheet.rows: no axis 'mood' in this sweep"),
        ({"cols": ["style", "style"]}, r"sheet.cols: axis style named twice"),
    ],
)
def test_a_clash_within_the_recipe_s_sheet_settings_names_them(
    tmp_path: Path, settings: dict[str, object], message: str
) -> None:
    # (recipe validation refuses these; a folder's recorded settings may still hold them)
    jobs = records(tmp_path)
    with pytest.raises(UsageError, match=message):
        plan_sheet(jobs, AXES, resolve_options(settings))
    # an unrelated option of the command line does not make them its own
    with pytest.raises(UsageError, match=message):
        plan_sheet(jobs, AXES, resolve_options(settings, max_cells=50))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            SheetOptions(rows=("subject", "mood")),
            r"--rows: no axis 'mood' in this sweep; its axes are: subject, style, resolution",
        ),
        (
            SheetOptions(cols=("colour",)),
            r"--cols: no axis 'colour'.*its axes are: subject, style, resolution",
        ),
        (
            SheetOptions(rows=("style",), cols=("style",)),
            r"axis 'style' is named in both --rows and --cols",
        ),
        (
            SheetOptions(rows=("style",), page_by="style"),
            r"--page-by 'style' is also a row or column axis",
        ),
        (SheetOptions(page_by="nope"), r"--page-by: no axis 'nope'"),
    ],
)
def test_bad_axes_are_usage_errors_that_list_the_axes(
    tmp_path: Path, options: SheetOptions, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        plan_sheet(records(tmp_path), AXES, options)


def test_paging_by_max_cells_keeps_whole_rows(tmp_path: Path) -> None:
    layout = plan_sheet(records(tmp_path), AXES, SheetOptions(max_cells=4))
    assert [p.number for p in layout.pages] == [1, 2]
    assert [p.row_keys for p in layout.pages] == [
        [("cat", "watercolor"), ("cat", "photo")],
        [("tea", "watercolor"), ("tea", "photo")],
    ]
    # each page has its own headers, counted from its first row
    assert layout.pages[1].row_spans[0] == Span("subject", "tea", 0, 0, 2)
    assert [j.job_index for j in layout.pages[1].jobs_at(0, 1)] == [6]


def test_page_by_gives_a_page_per_label(tmp_path: Path) -> None:
    layout = plan_sheet(records(tmp_path), AXES, SheetOptions(page_by="subject"))
    assert [(p.number, p.page_label) for p in layout.pages] == [(1, "cat"), (2, "tea")]
    assert layout.rows == ["style"] and layout.cols == ["resolution"]
    assert [j.job_index for j in layout.pages[1].jobs_at(1, 0)] == [7]


def test_repeats_sit_side_by_side_or_become_an_axis(tmp_path: Path) -> None:
    jobs = plan_jobs(repeats=2)
    inline = plan_sheet(records(tmp_path, jobs=jobs, states={}), [*AXES, "repeat"], SheetOptions())
    assert inline.inline == ["repeat"] and inline.slots == 2
    assert [j.job_index for j in inline.pages[0].jobs_at(0, 0)] == [1, 2]
    assert inline.warnings == []  # repeats inside a cell are expected, not a warning
    (tmp_path / "b").mkdir()
    as_axis = plan_sheet(
        records(tmp_path / "b", jobs=jobs, states={}),
        [*AXES, "repeat"],
        SheetOptions(repeats="axis"),
    )
    assert as_axis.cols == ["resolution", "repeat"] and as_axis.slots == 1


def test_an_axis_on_no_side_shares_the_cell_with_a_warning(tmp_path: Path) -> None:
    layout = plan_sheet(
        records(tmp_path), AXES, SheetOptions(rows=("subject",), cols=("resolution",))
    )
    assert layout.inline == ["style"] and layout.slots == 2
    assert "axis style is on no side" in layout.warnings[0]
    two = plan_sheet(records(tmp_path / "two"), AXES, SheetOptions(rows=("subject",), cols=()))
    assert two.warnings and two.warnings[0].startswith("axes style, resolution are on no side")


# --- label wrapping ----------------------------------------------------------------------------


def test_labels_wrap_at_spaces_and_never_cut_a_word_without_an_ellipsis() -> None:
    assert wrap_label("terraced rice fields", 100, 3, width_of) == ["terraced", "rice", "fields"]
    assert wrap_label("golden hour light", 120, 2, width_of) == ["golden hour", "light"]
    # too many lines: the last kept line ends in an ellipsis after a whole word
    assert wrap_label("one two three four five", 80, 2, width_of) == ["one two", "three…"]
    # a word longer than a line is cut, and the cut is marked
    assert wrap_label("supercalifragilistic", 80, 2, width_of) == ["superca…"]
    for lines in (
        wrap_label(
            "an ultra detailed watercolor of terraced rice fields at blue hour", 90, 3, width_of
        ),
        wrap_label("x" * 50 + " y", 60, 1, width_of),
    ):
        assert all(width_of(line) <= 90 for line in lines)
        words = [*SENTENCE.split(), "x" * 50, "y"]
        for line in lines:
            for word in line.split():
                assert word in words or word.endswith(ELLIPSIS)


def test_cjk_breaks_between_characters() -> None:
    lines = wrap_label("棚田の朝霧と古い茶屋", 40, 5, width_of)
    assert lines == ["棚田の朝", "霧と古い", "茶屋"]


# --- geometry ----------------------------------------------------------------------------------


def test_geometry_places_nested_headers_over_their_cells(tmp_path: Path) -> None:
    layout = plan_sheet(records(tmp_path), AXES, SheetOptions())
    metrics = Metrics(cell=100)
    geo = page_geometry(layout, layout.pages[0], metrics, width_of, title="t", subtitle="s")
    cat = next(h for h in geo.row_headers if h.span.label == "cat")
    first, second = geo.cell(0, 0).box, geo.cell(1, 0).box
    # "cat" spans exactly the two rows of its inner values, in the outermost header column
    assert (cat.box.y, cat.box.bottom) == (first.y, second.bottom)
    assert cat.box.x == metrics.margin
    watercolor = next(
        h for h in geo.row_headers if h.span.label == "watercolor" and h.span.start == 0
    )
    assert watercolor.box.x == cat.box.right + metrics.gap
    assert (watercolor.box.y, watercolor.box.h) == (first.y, first.h)
    wide = next(h for h in geo.col_headers if h.span.label == "16:9")
    assert (wide.box.x, wide.box.w) == (geo.cell(0, 1).box.x, geo.cell(0, 1).box.w)
    assert wide.box.bottom + metrics.gap == first.y
    # the label is centred in its box, on one line
    assert wide.text.lines == ("16:9",)
    x, y = wide.text.origins[0]
    assert x == wide.box.x + (wide.box.w - 40) // 2
    assert wide.box.y <= y < wide.box.bottom
    # the corner reads like a pivot table's: the column axis at the right of its band, on top;
    # each row axis over its own header column, in the bottom line just above the grid
    col_name, *row_names = geo.axis_names
    assert col_name.lines == ("resolution",)
    assert [b.lines for b in row_names] == [(axis,) for axis in layout.rows]
    for name, header in zip(row_names, (cat, watercolor), strict=True):
        assert (name.box.x, name.box.w) == (header.box.x, header.box.w)
        assert name.box.bottom == wide.box.bottom  # level with the column headers' foot
        assert name.origins[0][0] == header.box.x + metrics.pad  # left-aligned
    assert col_name.box.bottom <= row_names[0].box.y  # one above the other, never overlapping
    assert geo.width == geo.cell(0, 1).box.right + metrics.margin
    assert geo.height == geo.cell(3, 1).box.bottom + metrics.margin


# --- rendering ---------------------------------------------------------------------------------


def near(pixel: object, colour: tuple[int, int, int], tolerance: int = 8) -> bool:
    """Thumbnails are JPEG: a solid colour comes back within a few levels of itself."""
    assert isinstance(pixel, tuple)
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


def centre(box: object) -> tuple[int, int]:
    return (box.x + box.w // 2, box.y + box.h // 2)  # type: ignore[attr-defined]


def test_rendered_sheet_has_images_letterboxed_and_placeholders(tmp_path: Path) -> None:
    make_folder(tmp_path)
    result = make_sheet(open_output(tmp_path), cell=64)
    assert result.paths == [tmp_path / "contact_sheet.png"]
    image = Image.open(result.paths[0]).convert("RGB")
    geo = result.geometries[0]
    assert image.size == (geo.width, geo.height)
    square = geo.cell(0, 0).slots[0]
    assert near(image.getpixel(centre(square)), COLOURS[1])
    assert near(image.getpixel((square.x + 1, square.y + 1)), COLOURS[1])  # a square fills its cell
    wide = geo.cell(0, 1).slots[0]  # 128x72 in a 64x64 cell: 64x36, bars above and below
    assert near(image.getpixel(centre(wide)), (0, 200, 0))
    assert image.getpixel((wide.x + 32, wide.y + 3)) == LETTERBOX
    assert image.getpixel((wide.x + 32, wide.bottom - 3)) == LETTERBOX
    failed, cancelled, queued = (
        geo.cell(1, 0).slots[0],
        geo.cell(2, 1).slots[0],
        geo.cell(3, 1).slots[0],
    )
    assert image.getpixel((failed.x + 1, failed.y + 1)) == PLACEHOLDER_STYLE["failed"][0]
    assert image.getpixel((cancelled.x + 1, cancelled.y + 1)) == PLACEHOLDER_STYLE["cancelled"][0]
    assert image.getpixel((queued.x + 1, queued.y + 1)) == PLACEHOLDER_STYLE["not_done"][0]
    assert result.warnings == []


def test_a_deleted_or_corrupt_image_gives_a_placeholder_and_a_warning(tmp_path: Path) -> None:
    fx = make_folder(tmp_path, states={})
    fx.image(5).unlink()
    fx.thumb(5).unlink()  # nothing left of job 5
    fx.image(7).write_bytes(b"not a png")
    fx.thumb(7).write_bytes(b"not a jpeg either")
    fx.thumb(1).write_bytes(b"corrupt thumbnail, intact image")
    result = make_sheet(open_output(tmp_path), cell=64)
    image = Image.open(result.paths[0]).convert("RGB")
    geo = result.geometries[0]
    missing, broken = geo.cell(2, 0).slots[0], geo.cell(3, 0).slots[0]
    assert image.getpixel((missing.x + 1, missing.y + 1)) == PLACEHOLDER_STYLE["missing"][0]
    assert image.getpixel((broken.x + 1, broken.y + 1)) == PLACEHOLDER_STYLE["unreadable"][0]
    # a corrupt thumbnail is remade from the image
    assert near(image.getpixel(centre(geo.cell(0, 0).slots[0])), COLOURS[1])
    assert Image.open(fx.thumb(1)).size == (64, 64)
    text = "\n".join(result.warnings)
    assert "j005" in text and "image file missing" in text
    assert "j007" in text and "unreadable" in text
    assert "j001" in text and "remade" in text


def test_missing_thumbnails_are_made_in_worker_processes_and_kept(tmp_path: Path) -> None:
    fx = make_folder(tmp_path, states={}, no_thumbs=[1, 2, 4, 6])
    assert not fx.thumb(2).exists()
    result = make_sheet(open_output(tmp_path), cell=64)
    assert result.made_thumbnails == 4
    assert Image.open(fx.thumb(2)).size == (128, 72)  # the image is smaller than a thumbnail
    image = Image.open(result.paths[0]).convert("RGB")
    assert near(image.getpixel(centre(result.geometries[0].cell(0, 1).slots[0])), (0, 200, 0))
    again = make_sheet(open_output(tmp_path), cell=64)
    assert again.made_thumbnails == 0


@pytest.mark.parametrize(
    ("label", "written"),
    [
        # The header of a label "\u202egnp.exe" read "exe.png" on the sheet (the gallery, the
        # plan and the terminal all write the mark out): it is drawn as the text "\u202e" is.
        ("\u202egnp.exe", "\\u202egnp.exe"),
        # "bell\x07" and "bell\x08" were both drawn "bell" and an empty box: two labels that
        # read the same (the plan and the terminal write "bell\x07").
        ("bell\x07", "bell\\x07"),
    ],
)
def test_bidi_marks_and_control_characters_are_drawn_as_text(tmp_path: Path, label: str, written: str) -> None:
    sheets = []
    for name, subject in (("raw", label), ("written", written)):
        make_folder(tmp_path / name, jobs=plan_jobs(subjects={subject: "a cat", "tea": "tea"}))
        sheets.append(make_sheet(open_output(tmp_path / name), cell=64).paths[0])
    raw, as_text = (Image.open(path).convert("RGB") for path in sheets)
    assert raw.size == as_text.size and raw.tobytes() == as_text.tobytes()


def test_thumbnails_that_could_not_be_made_are_not_counted_as_made(tmp_path: Path) -> None:
    # Two corrupt images with no thumbnail: `sheet` said "made 2 missing thumbnails (kept for
    # next time)" after warning that both were unreadable, and said it again at every sheet.
    fx = make_folder(tmp_path, states={}, no_thumbs=[1, 2, 4])
    fx.image(1).write_bytes(b"not a png")
    fx.image(2).write_bytes(b"nor this")
    result = make_sheet(open_output(tmp_path), cell=64)
    assert result.made_thumbnails == 1  # job 4's, the only one made
    assert not fx.thumb(1).exists() and fx.thumb(4).exists()
    assert "j001" in "\n".join(result.warnings) and "unreadable" in "\n".join(result.warnings)


def test_pages_are_numbered_and_stale_pages_removed(tmp_path: Path) -> None:
    make_folder(tmp_path)
    paged = make_sheet(open_output(tmp_path), cell=32, max_cells=2)
    assert [p.name for p in paged.paths] == [f"contact_sheet-0{i}.png" for i in range(1, 5)]
    single = make_sheet(open_output(tmp_path), cell=32, fmt="jpeg")
    assert [p.name for p in single.paths] == ["contact_sheet.jpg"]
    assert Image.open(single.paths[0]).format == "JPEG"
    assert sorted(p.name for p in tmp_path.glob("contact_sheet*")) == ["contact_sheet.jpg"]


def test_a_page_too_wide_for_jpeg_is_a_usage_error(tmp_path: Path) -> None:
    # 1,800 cells in one row as JPEG: libjpeg refused the 68,000 px page and `sheet` said
    # "cannot write: broken data stream" (exit 73, as if the folder could not be written)
    subjects = {f"s{i}": f"s{i}" for i in range(1800)}
    jobs = plan_jobs(subjects=subjects, styles={"ink": "ink"}, resolutions={"1:1": "2048x2048 (1:1)"})
    make_folder(tmp_path, jobs=jobs, states={job.index: "planned" for job in jobs})
    with pytest.raises(UsageError, match=r"too large for JPEG \(65,500 px a side at most\); use fmt='png'"):
        make_sheet(open_output(tmp_path), rows=[], cols=["subject"], cell=32, max_cells=5000, fmt="jpeg")
    assert list(tmp_path.glob("contact_sheet*")) == []


def test_big_cells_page_so_that_no_page_outgrows_the_pixel_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 100 cells of 2048 px made one 420-megapixel page: 1.8 GB of memory, a 60 MB PNG. The
    # budget is lowered here so that small cells stand in for big ones.
    make_folder(tmp_path)
    monkeypatch.setattr(layout_module, "MAX_PAGE_PIXELS", 3 * 64 * 64)
    result = make_sheet(open_output(tmp_path), cell=64)
    assert len(result.paths) > 1
    assert all(len(p.row_keys) * len(p.col_keys) <= 3 for p in result.layout.pages)
    assert any("at most 3 a page" in w for w in result.warnings)
    # within the budget, the page is as asked, and nothing is said
    monkeypatch.setattr(layout_module, "MAX_PAGE_PIXELS", 100 * 64 * 64)
    one = make_sheet(open_output(tmp_path), cell=64)
    assert [p.name for p in one.paths] == ["contact_sheet.png"]
    assert not any("a page" in w for w in one.warnings)


def test_a_page_too_long_a_side_for_some_viewers_is_said_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every axis inside one row of cells made an 18,899 px wide page ImageMagick would not open;
    # made as asked, but said (the limit lowered here, for a small page).
    from seedream_pipe.outputs import sheet as sheet_module

    make_folder(tmp_path)
    monkeypatch.setattr(sheet_module, "VIEWABLE_SIDE", 300)
    result = make_sheet(open_output(tmp_path), cell=64)
    said = [w for w in result.warnings if "px on a side" in w]
    assert len(said) == 1 and "contact_sheet.png" in said[0] and "(page_by=)" in said[0]  # (a notebook: no flags)
    monkeypatch.setattr(sheet_module, "VIEWABLE_SIDE", 16_384)
    assert not any("px on a side" in w for w in make_sheet(open_output(tmp_path), cell=64).warnings)


def test_an_unwritable_sheet_path_is_an_output_error(tmp_path: Path) -> None:
    make_folder(tmp_path)
    (tmp_path / "contact_sheet.png").mkdir()  # something that cannot be replaced by a file
    with pytest.raises(OutputError, match=r"contact_sheet.png: cannot write"):
        make_sheet(open_output(tmp_path), cell=32)


def test_unwritable_thumbs_still_show_the_image(tmp_path: Path) -> None:
    fx = make_folder(tmp_path, states={}, no_thumbs=[1, 2])
    for thumb in (tmp_path / "thumbs").iterdir():
        thumb.unlink()
    (tmp_path / "thumbs").rmdir()
    (tmp_path / "thumbs").write_text("a file where the thumbnails folder should be")
    result = make_sheet(open_output(tmp_path), cell=64)
    image = Image.open(result.paths[0]).convert("RGB")
    assert near(image.getpixel(centre(result.geometries[0].cell(0, 0).slots[0])), COLOURS[1])
    assert any("could not save a thumbnail" in w for w in result.warnings)
    assert fx.image(1).exists()


# --- fonts -------------------------------------------------------------------------------------


def test_cjk_labels_render_and_fonts_never_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert needs_fallback("golden hour, café") is None
    assert needs_fallback("棚田 at dawn") == "棚"
    assert font_for("棚田", 14).getlength("棚田") > 0
    jobs = plan_jobs(subjects={"棚田": "棚田の朝霧", "茶屋": "古い茶屋"})
    make_folder(tmp_path, jobs=jobs)
    assert make_sheet(open_output(tmp_path), cell=48).paths
    # no fontconfig on the machine: the default font, still no crash
    monkeypatch.setattr(fonts_module.shutil, "which", lambda name: None)
    fonts_module._fc_match.cache_clear()
    assert font_for("茶屋", 15).getlength("茶屋") > 0
    fonts_module._fc_match.cache_clear()


def test_a_character_no_font_covers_does_not_cost_the_rest_its_font(monkeypatch: pytest.MonkeyPatch) -> None:
    # fc-match answers DejaVu for an emoji (its best, not a cover), the CJK font for CJK
    def fc_match(block: int, sample: int, bold: bool) -> str:
        return "/fonts/NotoSansCJK-Regular.ttc" if 0x3000 <= sample < 0xA000 else "/fonts/DejaVuSans.ttf"

    monkeypatch.setattr(fonts_module, "_fc_match", fc_match)
    cjk = ImageFont.load_default(size=20)  # a stand-in for the CJK font, not the default font object
    monkeypatch.setattr(fonts_module, "_truetype", lambda path, size: cjk if "CJK" in path else None)
    assert font_for("\U0001f338 桜の木", 20) is cjk


def test_cells_larger_than_a_thumbnail_use_the_full_image(tmp_path: Path) -> None:
    fx = make_folder(tmp_path, states={})
    # a detail only the full image has: the thumbnail of job 1 is a different colour
    Image.new("RGB", (64, 64), (10, 20, 30)).save(fx.thumb(1), "JPEG")
    big = make_sheet(open_output(tmp_path), cell=600)
    image = Image.open(big.paths[0]).convert("RGB")
    assert image.getpixel(centre(big.geometries[0].cell(0, 0).slots[0])) == COLOURS[1]
    assert big.made_thumbnails == 0


def test_a_row_wider_than_a_page_is_cut_into_column_chunks(tmp_path: Path) -> None:
    options = SheetOptions(rows=(), cols=("subject", "style", "resolution"), max_cells=3)
    layout = plan_sheet(records(tmp_path), AXES, options)
    assert [len(p.col_keys) for p in layout.pages] == [3, 3, 2]
    assert all(p.row_keys == [()] for p in layout.pages)
    assert [j.job_index for j in layout.pages[2].jobs_at(0, 1)] == [8]
    # the outer header of a chunk spans only the chunk's part of it
    assert layout.pages[1].col_spans[:2] == [
        Span("subject", "cat", 0, 0, 1),
        Span("subject", "tea", 0, 1, 2),
    ]


def test_thumbnails_are_made_safely_while_other_threads_run(tmp_path: Path) -> None:
    import threading

    from seedream_pipe.outputs.thumbs import _pool_context

    fx = make_folder(tmp_path, states={}, no_thumbs=[1, 2])
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait)  # like the runner's loop or an in-process simulator
    busy.start()
    try:
        assert _pool_context().get_start_method() != "fork"
        result = make_sheet(open_output(tmp_path), cell=64)
    finally:
        stop.set()
        busy.join()
    assert result.made_thumbnails == 2
    assert fx.thumb(1).is_file() and fx.thumb(2).is_file()


def test_missing_thumbnails_on_a_paged_sheet(tmp_path: Path) -> None:
    make_folder(tmp_path, states={}, no_thumbs=[1, 8])
    result = make_sheet(open_output(tmp_path), cell=48, max_cells=4)
    assert result.made_thumbnails == 2 and len(result.paths) == 2
    first = Image.open(result.paths[0]).convert("RGB")
    assert near(first.getpixel(centre(result.geometries[0].cell(0, 0).slots[0])), COLOURS[1])
    last = Image.open(result.paths[1]).convert("RGB")
    assert near(last.getpixel(centre(result.geometries[1].cell(1, 1).slots[0])), COLOURS[8])


def test_an_excluded_combination_says_no_job_across_its_whole_cell(tmp_path: Path) -> None:
    # with repeats side by side, a cell whose combination was excluded has no job in any slot:
    # "no job" must fill the whole cell, not its first slot beside a blank
    jobs = [job for job in plan_jobs(repeats=2) if job.axes["subject"] != "tea" or job.axes["resolution"] != "16:9"]
    make_folder(tmp_path, jobs=jobs, states={})
    result = make_sheet(open_output(tmp_path), cell=64)
    image = Image.open(result.paths[0]).convert("RGB")
    geo = result.geometries[0]
    assert result.layout.slots == 2
    empty = geo.cell(2, 1)  # tea/watercolor/16:9: excluded
    fill = PLACEHOLDER_STYLE["no_job"][0]
    for x in (empty.box.x + 1, centre(empty.box)[0], empty.box.right - 2):
        assert image.getpixel((x, empty.box.y + 1)) == fill
    # the gap between the two slots is filled too: one box, one "no job"
    ink = [
        x for x in range(empty.box.x, empty.box.right)
        if image.getpixel((x, centre(empty.box)[1])) != fill
    ]
    assert ink and empty.box.x + empty.box.w // 4 < min(ink) and max(ink) < empty.box.right - empty.box.w // 4


COLOUR_NAMES = ["red", "orange", "yellow", "green", "blue", "indigo", "violet", "black", "white", "grey", "pink", "brown"]


def one_axis_jobs(count: int = 12, repeats: int = 1) -> list:  # type: ignore[type-arg]
    subjects = {name: f"a {name} balloon" for name in COLOUR_NAMES[:count]}
    return plan_jobs(subjects=subjects, styles={"photo": "photo"}, resolutions={"1:1": "1K"}, repeats=repeats)


def test_a_single_axis_wraps_into_a_grid_in_reading_order(tmp_path: Path) -> None:
    jobs = records(tmp_path, jobs=one_axis_jobs(), states={})
    layout = plan_sheet(jobs, AXES, SheetOptions(), wrap=True)
    assert (layout.rows, layout.cols, layout.wrap) == ([], [], "subject")
    (page,) = layout.pages
    assert (len(page.row_keys), len(page.col_keys)) == (3, 4)  # about sqrt(12) across
    # reading order: left to right, then down; each cell labelled
    assert [page.cell_labels[(r, c)] for r in range(3) for c in range(4)] == COLOUR_NAMES
    assert [j.job_index for j in page.jobs_at(1, 2)] == [7]  # violet
    # a grid that does not fill its last row leaves the rest empty (no "no job" cells)
    (tmp_path / "ten").mkdir()
    ten = plan_sheet(records(tmp_path / "ten", jobs=one_axis_jobs(10), states={}), AXES, SheetOptions(), wrap=True)
    assert (len(ten.pages[0].row_keys), len(ten.pages[0].col_keys)) == (3, 4)
    assert sorted(ten.pages[0].cell_labels) == [(r, c) for r in range(3) for c in range(4)][:10]
    # without wrap= (the gallery's grid), or with the axis named, it stays one column
    assert plan_sheet(jobs, AXES, SheetOptions()).rows == ["subject"]
    named = plan_sheet(jobs, AXES, SheetOptions(rows=("subject",)), wrap=True)
    assert (named.rows, named.wrap, len(named.pages[0].row_keys)) == (["subject"], None, 12)


def test_a_wrapped_grid_pages_by_whole_rows_and_keeps_repeats_side_by_side(tmp_path: Path) -> None:
    jobs = records(tmp_path, jobs=one_axis_jobs(), states={})
    paged = plan_sheet(jobs, AXES, SheetOptions(max_cells=8), wrap=True)
    assert [(len(p.row_keys), len(p.col_keys)) for p in paged.pages] == [(2, 4), (1, 4)]
    assert [p.cell_labels[(0, 0)] for p in paged.pages] == ["red", "white"]
    (tmp_path / "rep").mkdir()
    two = plan_sheet(records(tmp_path / "rep", jobs=one_axis_jobs(repeats=2), states={}), [*AXES, "repeat"], SheetOptions(), wrap=True)
    assert two.slots == 2 and two.wrap == "subject"
    # two images a cell: fewer cells across, so the sheet stays about square
    assert (len(two.pages[0].row_keys), len(two.pages[0].col_keys)) == (4, 3)
    assert [j.job_index for j in two.pages[0].jobs_at(0, 1)] == [3, 4]


def test_a_wrapped_sheet_labels_every_cell_over_its_image(tmp_path: Path) -> None:
    make_folder(tmp_path, jobs=one_axis_jobs(), states={})
    result = make_sheet(open_output(tmp_path), cell=64)
    geo = result.geometries[0]
    image = Image.open(result.paths[0]).convert("RGB")
    assert image.size == (geo.width, geo.height)
    # a grid of 4 x 3, not one tall column
    assert (len({c.box.x for c in geo.cells}), len({c.box.y for c in geo.cells})) == (4, 3)
    assert len(geo.cells) == 12 and len(geo.cell_labels) == 12
    for label in geo.cell_labels:
        cell = geo.cell(label.span.start // 4, label.span.start % 4)
        assert (label.box.x, label.box.w) == (cell.box.x, cell.box.w)
        assert label.box.bottom < cell.box.y
        assert label.text.lines == (COLOUR_NAMES[label.span.start],)
    assert "subject" in geo.subtitle.lines[0] + " ".join(geo.subtitle.lines[1:])


def test_the_title_counts_one_job_in_the_singular(tmp_path: Path) -> None:
    jobs = plan_jobs(subjects={"cat": "a cat"}, styles={"photo": "photo"}, resolutions={"1:1": "1K"})
    make_folder(tmp_path, jobs=jobs, states={})
    subtitle = " ".join(make_sheet(open_output(tmp_path), cell=32).geometries[0].subtitle.lines)
    assert "1 job: 1 done" in subtitle, subtitle
    (tmp_path / "two").mkdir()
    make_folder(tmp_path / "two", jobs=one_axis_jobs(2), states={})
    subtitle = " ".join(make_sheet(open_output(tmp_path / "two"), cell=32).geometries[0].subtitle.lines)
    assert "2 jobs: 2 done" in subtitle, subtitle


def test_an_image_deleted_with_its_thumbnail_left_is_shown_marked_with_a_warning(tmp_path: Path) -> None:
    fx = make_folder(tmp_path, states={})
    fx.image(1).unlink()  # the thumbnail stays
    result = make_sheet(open_output(tmp_path), cell=64)
    image = Image.open(result.paths[0]).convert("RGB")
    slot = result.geometries[0].cell(0, 0).slots[0]
    assert near(image.getpixel((slot.x + 2, slot.y + 2)), COLOURS[1])  # the thumbnail still shows
    assert image.getpixel((slot.x + 1, slot.bottom - 2)) == PLACEHOLDER_STYLE["missing"][0]  # marked
    assert len(result.warnings) == 1
    assert "j001" in result.warnings[0] and "image file missing" in result.warnings[0]
    assert "run the recipe again to fetch it" in result.warnings[0]


def test_a_character_no_font_draws_is_spelled_out_so_two_emoji_labels_differ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # as on a machine with no emoji font: every character goes to DejaVu Sans
    monkeypatch.setattr(fonts_module, "font_for", lambda text, size, bold=False: fonts_module.default_font(size, bold))
    fonts_module._drawable.cache_clear()
    try:
        assert fonts_module.spelled_out("✨ magic") == "[sparkles] magic"
        assert fonts_module.spelled_out("🌙") == "[crescent moon]"
        # letters, accents and combining marks stay as written (whatever font: none is asked)
        for text in ("café", "Привет", "e\u0301", "plain"):
            assert fonts_module.spelled_out(text) == text
        # a script no font here has: in Latin letters, not as names (a label of "[devanagari
        # letter na][devanagari letter ma]..." was cut to "..."), its marks with its letters
        assert fonts_module.spelled_out("नमस्ते दुनिया") == "nmste duniya"
        assert fonts_module.spelled_out("東京 ✨") == "DongJing [sparkles]"
        assert fonts_module.undrawn(["नमस्ते", "plain", "नमस्ते"]) == [("नमस्ते", "nmste")]
    finally:
        fonts_module._drawable.cache_clear()


def test_a_sheet_says_which_labels_no_font_here_draws_and_how_it_writes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as on a machine with DejaVu Sans alone: Devanagari reads in Latin letters, and the sheet says so
    monkeypatch.setattr(fonts_module, "font_for", lambda text, size, bold=False: fonts_module.default_font(size, bold))
    fonts_module._drawable.cache_clear()
    try:
        make_folder(tmp_path, jobs=plan_jobs(subjects={"नमस्ते": "namaste", "cat": "a cat"}), states={})
        result = make_sheet(open_output(tmp_path))
    finally:
        fonts_module._drawable.cache_clear()
    said = [w for w in result.warnings if w.startswith("no font on this machine")]
    assert len(said) == 1 and "'नमस्ते' as 'nmste'" in said[0] and "fonts-noto" in said[0]


def test_the_sheet_measures_and_draws_text_as_spelled_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from seedream_pipe.outputs import sheet as sheet_module

    drawn: list[str] = []
    monkeypatch.setattr(sheet_module, "spelled_out", lambda text: text.replace("🌙", "[moon]"))
    monkeypatch.setattr(sheet_module, "font_for", lambda text, size, bold=False: drawn.append(text) or fonts_module.default_font(size, bold))
    assert sheet_module.pillow_measure("🌙", 20, False) == sheet_module.pillow_measure("[moon]", 20, False)
    assert drawn == ["[moon]", "[moon]"]


def test_the_results_a_notebook_shows_are_one_line(tmp_path: Path) -> None:
    # A cell ending in either showed every job with its signed URLs: pages of text.
    make_folder(tmp_path)
    folder = open_output(tmp_path)
    assert repr(folder) == f"<OutputFolder {str(tmp_path)!r}: 8 jobs, 1 run>"
    result = make_sheet(folder)
    shown = repr(result)
    assert "\n" not in shown and len(shown) < 300 and "req-j001" not in shown
    assert shown.startswith(f"<SheetResult [{str(tmp_path / 'contact_sheet.png')!r}]: ")


def test_a_narrow_paged_sheet_keeps_the_value_that_names_its_page_in_the_title(tmp_path: Path) -> None:
    # With small cells the title was cut at one line, "exploration — page 2/15 —…": the value
    # that tells the pages apart was the part lost.
    styles = {f"style{i}": f"style {i}" for i in range(3)}
    jobs = plan_jobs(subjects={"cat": "a cat"}, styles=styles, resolutions={"1:1": "1K", "16:9": "2K"})
    make_folder(tmp_path / "a rather long experiment name", jobs=jobs, states={})
    folder = open_output(tmp_path / "a rather long experiment name")
    result = make_sheet(folder, cell=32, page_by="resolution", cols="style")
    assert len(result.geometries) == 2
    for geo, value in zip(result.geometries, ("1:1", "16:9"), strict=True):
        title = " ".join(geo.title.lines)
        assert f"resolution: {value}" in title and "…" not in title, title
        assert geo.title.box.bottom <= geo.subtitle.box.y  # (the second line pushes the rest down)


def test_a_page_value_too_long_for_the_title_is_cut_before_the_page_number(tmp_path: Path) -> None:
    # A value of the page's axis longer than the title's two lines cut "page 2/2" off its end.
    long = "in a thick fog that rolls over the harbour walls at dawn " * 3
    jobs = plan_jobs(subjects={"cat": "a cat"}, styles={"s": "s"}, resolutions={"1:1": "1K", "16:9": "2K"})
    for job in jobs:
        job.axes["resolution"] = (long + job.axes["resolution"]).strip()
    make_folder(tmp_path / "sweep", jobs=jobs, states={})
    result = make_sheet(open_output(tmp_path / "sweep"), cell=32, page_by="resolution")
    assert len(result.geometries) == 2
    for number, geo in enumerate(result.geometries, 1):
        title = " ".join(geo.title.lines)
        assert title.startswith("sweep — resolution: in a thick fog") and "…" in title, title
        assert title.endswith(f"— page {number}/2"), title
        assert len(geo.title.lines) <= 2


def test_pages_are_drawn_two_at_a_time_on_any_number_of_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One page per core: on eight cores, eight canvases (up to ~190 MB each) in memory at once.
    # (the pool's size is what is checked: counting pages drawn at once needs workers to meet,
    # a sleep that says nothing about the reverted code on a slow or busy machine)
    from concurrent.futures import ThreadPoolExecutor

    import seedream_pipe.outputs.sheet as sheet_module

    monkeypatch.setattr(sheet_module.os, "cpu_count", lambda: 8)
    sizes: list[int | None] = []

    class Pool(ThreadPoolExecutor):
        def __init__(self, max_workers: int | None = None, *args: Any, **kwargs: Any) -> None:
            sizes.append(max_workers)
            super().__init__(max_workers, *args, **kwargs)

    monkeypatch.setattr(sheet_module, "ThreadPoolExecutor", Pool)
    make_folder(tmp_path, states={})
    result = make_sheet(open_output(tmp_path), cell=32, max_cells=1)
    assert len(result.paths) == 8
    assert sizes == [2]  # (one per core made it 8)
