"""File names from recipe values can never leave the output folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from seedream_pipe.errors import NothingToShow, RecipeError
from seedream_pipe.images import THUMB_SIZE, save_thumbnail, thumb_name
from seedream_pipe.paths import folder_file, image_file_name, locate, slug


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Golden hour", "golden-hour"),
        ("../../etc/passwd", "etc-passwd"),
        ("/abs/path", "abs-path"),
        ("Café crème", "cafe-creme"),
        ("東京の夜", "x"),
        ("..", "x"),
        ("a\x00b\nc", "a-b-c"),
        ("2560x1440 (16:9)", "2560x1440-16-9"),
    ],
)
def test_slug(text: str, expected: str) -> None:
    assert slug(text) == expected


def test_image_file_name_is_a_plain_name() -> None:
    name = image_file_name(7, "3f9a0c1b22de", ["../../x", "mist", "16:9"])
    assert name == "0007_3f9a0c1b22de_x-mist-16-9.png"
    assert Path(name).name == name
    long = image_file_name(1, "abc", ["word " * 100])
    assert len(long) < 100


def test_a_long_first_label_leaves_room_for_the_labels_after_it() -> None:
    scene = "a very long scene description about a lighthouse standing on a rocky coast"
    names = {image_file_name(1, "abc", [scene, style, "16:9"]) for style in ("ink", "oil")}
    assert len(names) == 2  # the style and resolution still tell them apart
    assert all(n.endswith(("-ink-16-9.png", "-oil-16-9.png")) for n in names)
    assert image_file_name(1, "abc", ["ラーメン", "ink"]) == "0001_abc_ink.png"  # (other scripts: a hyphen, dropped)
    # a label is cut at a hyphen where one keeps most of it: never "16:9" read as "16"
    name = image_file_name(1, "abc", ["terraced rice fields in Bali", "golden hour", "mist", "watercolor illustration", "2560x1440 (16:9)"])
    assert "-2560x1440" in name and "-2560x1440-16" not in name
    # the room a short label leaves goes to the long one
    name = image_file_name(1, "abc", ["red", scene])
    assert name == "0001_abc_red-a-very-long-scene-description-about-a-lighthouse.png"  # (cut between words)
    assert len(name.removeprefix("0001_abc_").removesuffix(".png")) <= 60


def test_locate_dir_and_missing(tmp_path: Path) -> None:
    assert locate(tmp_path) == (tmp_path, None)
    with pytest.raises(NothingToShow, match="no such recipe file or output folder") as caught:
        locate(tmp_path / "missing.yaml")
    assert caught.value.exit_code == 66  # as `status` of a folder no run wrote into


def test_locate_a_symbolic_link_loop_says_so(tmp_path: Path) -> None:
    # (status, sheet, report, gallery and cancel said "no such recipe file" of a file `ls` shows)
    (tmp_path / "loop.yaml").symlink_to("loop.yaml")
    with pytest.raises(NothingToShow) as caught:
        locate(tmp_path / "loop.yaml")
    assert str(caught.value) == (f"{tmp_path / 'loop.yaml'}: a symbolic link that leads back to itself, neither a "
                                 "recipe file nor an output folder")


@pytest.mark.parametrize(
    ("text", "folder"),
    [
        ("vars: {}\n", "outputs/sweep"),  # named after its file
        ("name: 'other'  # renamed\nvars: {}\n", "outputs/other"),
        ("output: runs/here\nvars: {}\n", "runs/here"),  # (relative to the recipe)
    ],
)
def test_a_recipe_with_errors_points_at_its_folder_when_it_has_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, folder: str
) -> None:
    # A typo made since the last run locked `status` and `cancel RECIPE` out of the folder, with
    # only the recipe's error said: the folder itself is read as well, and now named.
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text(text, encoding="utf-8")
    with pytest.raises(RecipeError) as caught:
        locate(recipe)
    assert "give" not in str(caught.value)  # (never run: no folder to point at)
    (tmp_path / folder).mkdir(parents=True)
    (tmp_path / folder / "state.sqlite").write_bytes(b"")
    with pytest.raises(RecipeError) as caught:
        locate(recipe)
    assert caught.value.problems[0].message.startswith("a recipe needs a prompt")
    shown = tmp_path / folder if text.startswith("output") else Path(folder)
    assert caught.value.problems[-1].message == (
        f"to read what its runs left while it has errors, give {shown} instead of the recipe"
    )


def test_thumbnail_is_jpeg_with_longest_side_512(tmp_path: Path) -> None:
    image = Image.new("RGBA", (2560, 1440), (200, 10, 10, 255))
    dest = tmp_path / "thumbs" / thumb_name("0001_abc_x.png")
    assert save_thumbnail(image, dest) == (THUMB_SIZE, 288)
    with Image.open(dest) as thumb:
        assert (thumb.format, thumb.size) == ("JPEG", (512, 288))
    assert list(dest.parent.iterdir()) == [dest]


@pytest.mark.parametrize(
    ("stored", "kept"),
    [
        ("images/0001_ab_fox.png", True),
        ("images/../x.png", False),
        ("images/../../x.png", False),
        ("/etc/passwd", False),
        ("images//x.png", False),
        ("images/a/b.png", False),
        ("thumbs/x.jpg", False),  # another folder than the column's
        ("images/..", False),
        ("images/", False),
        ("images", False),
        ("", False),
        (None, False),
    ],
)
def test_a_state_names_a_file_only_as_one_plain_name_in_its_folder(stored: str | None, kept: bool) -> None:
    assert folder_file(stored, "images") == (stored if kept else None)


def test_files_are_written_beside_their_place_never_through_a_planted_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Temporary names once were `.<name>.<pid>.tmp`: a link planted under that name in the
    # output folder had the thumbnail or report written through it, outside the folder. Now the
    # name is random, and were it guessed, the file is made anew (O_EXCL), never opened.
    from seedream_pipe import paths
    from seedream_pipe.outputs._folder import write_atomically

    folder, outside = tmp_path / "out", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    names = iter(["guessed", "guessed", "other1", "guessed", "other2"])
    monkeypatch.setattr(paths.secrets, "token_hex", lambda n: next(names))
    for name in ("report.csv", "t.jpg"):
        for planted in (f".{name}.{os.getpid()}.tmp", f".{name}.guessed.tmp"):
            (outside / planted).write_text("kept", encoding="utf-8")
            (folder / planted).symlink_to(outside / planted)

    write_atomically(folder / "report.csv", lambda out: out.write(b"a,b\n"))
    assert save_thumbnail(Image.new("RGB", (64, 32), "teal"), folder / "t.jpg") == (64, 32)

    assert (folder / "report.csv").read_text(encoding="utf-8") == "a,b\n"
    with Image.open(folder / "t.jpg") as thumb:
        assert thumb.format == "JPEG"
    assert all(p.read_text(encoding="utf-8") == "kept" for p in outside.iterdir())
    assert not list(folder.glob("*.other*"))  # (the temporary files were renamed into place)


def test_a_link_swapped_in_under_the_temporary_name_is_not_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Someone watching the folder swaps the new temporary file's name for a link to their
    # target: the file is written through what was created, never reopened by that name.
    from seedream_pipe import images, paths
    from seedream_pipe.outputs import _folder

    folder, victim = tmp_path / "out", tmp_path / "victim.txt"
    folder.mkdir()
    victim.write_text("kept", encoding="utf-8")

    def swapped(where: Path, prefix: str, suffix: str) -> tuple[Path, object]:
        tmp, out = paths.fresh_temp(where, prefix, suffix)
        tmp.unlink()
        tmp.symlink_to(victim)
        return tmp, out

    monkeypatch.setattr(_folder, "fresh_temp", swapped)
    monkeypatch.setattr(images, "fresh_temp", swapped)
    _folder.write_atomically(folder / "report.csv", lambda out: out.write(b"a,b\n"))
    images.save_thumbnail(Image.new("RGB", (8, 8), "teal"), folder / "t.jpg")
    assert victim.read_text(encoding="utf-8") == "kept"


def test_a_write_that_fails_any_way_leaves_no_temporary_file(tmp_path: Path) -> None:
    # The temporary file exists from the start now (made exclusively): a writer that raises
    # something other than an OSError (parquet asked without pyarrow, a bug) left it behind.
    from seedream_pipe.errors import OutputError, UsageError
    from seedream_pipe.outputs._folder import write_atomically

    def refused(out: object) -> None:
        raise UsageError("--format parquet needs pyarrow")

    def full(out: object) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(UsageError):
        write_atomically(tmp_path / "report.parquet", refused)
    with pytest.raises(OutputError, match=r"report\.csv: cannot write: No space left on device"):
        write_atomically(tmp_path / "report.csv", full)
    assert list(tmp_path.iterdir()) == []
