"""Where a recipe's files go, and names that no recipe value can turn into an escape.

Every command that takes `RECIPE|DIR` finds its output folder through `locate()`, so `run`,
`status`, `sheet`, `report` and `gallery` agree on it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from seedream_pipe.errors import NothingToShow, Problem, RecipeError, UsageError
from seedream_pipe.words import option

if TYPE_CHECKING:
    from seedream_pipe.recipe import Recipe

OUTPUTS_ROOT = Path("outputs")
IMAGES_DIR = "images"
THUMBS_DIR = "thumbs"

_UNSAFE = re.compile(r"[^a-z0-9]+")


def default_output_dir(recipe: Recipe) -> Path:
    """The recipe's `output:` if it set one, else `outputs/<recipe name>/` (relative to the cwd).

    An `output:` is named as the recipe's messages name it (`recipe.output_display`, such as
    `recipes/out/x`) while that is the folder it means, from the working folder the recipe was
    loaded in: what `run` and `status` print stays as short as it was. After a notebook's `%cd`,
    or in a worker process started elsewhere, it is the absolute `recipe.output`.

    Raises UsageError where this version's folder is not the one earlier versions ran the recipe
    into and only that one holds a run: see `_refuse_moved_output`.
    """
    if recipe.output is None:
        return OUTPUTS_ROOT / recipe.name
    shown = recipe.output_display
    if shown is not None and os.path.abspath(shown) == str(recipe.output):
        return Path(shown)
    if recipe.output_as_text is not None and recipe.output_as_text != recipe.output:
        _refuse_moved_output(recipe, recipe.output_as_text)
    return recipe.output


def _refuse_moved_output(recipe: Recipe, tidied: Path) -> None:
    """Versions before 2026-11-25 took `output: ../out/x` of a recipe reached through a linked
    folder (`links/r.yaml`) as `out/x` beside the link, tidied as text, where the system means
    `out/x` beside the folder linked to (and finds the recipe's var files and bases there). A
    run into that folder would pay for every job the old one holds again: said, not done."""
    from seedream_pipe.state import STATE_FILE

    assert recipe.output is not None
    if (tidied / STATE_FILE).is_file() and not (recipe.output / STATE_FILE).exists():
        raise UsageError(
            f"{recipe.display}: its output: {recipe.output_display} is read past a linked folder, and means "
            f"{recipe.output}; earlier versions ran it into {tidied}. Move that folder to {recipe.output} "
            f"to keep its images (a run into a new one would pay for each again), or give it with {option('--out', 'out_dir')}"
        )


def locate(target: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None) -> tuple[Path, Recipe | None]:
    """Resolve a `RECIPE|DIR` argument to (output folder, recipe or None).

    A directory is an output folder as it is; a file is a recipe (loaded, so its errors are the
    recipe's errors) whose output folder is `out`, else its default.
    """
    path = Path(target)
    if path.is_dir():
        if out is not None and not same_file(path, out):
            # (a folder is the output folder itself: `out` would have the command read another one)
            raise UsageError(f"{target} is an output folder, and --out names another ({out}); "
                             "--out is for a RECIPE whose folder is not its default: give one or the other")
        return path, None
    if path.is_file():
        from seedream_pipe.recipe import load_recipe

        try:
            recipe = load_recipe(path)
        except RecipeError as exc:
            # A typo made since the last run must not lock its folder away: status, cancel and
            # the outputs read the folder itself as well, and only the recipe names it.
            hint = _read_the_folder_instead(path, out)
            raise RecipeError([*exc.problems, *([hint] if hint else [])]) from exc
        return (Path(out) if out is not None else default_output_dir(recipe)), recipe
    # (66, as for a folder no run wrote into: the thing to read is not there. A recipe command,
    # given a recipe that is not there, says 65, a recipe problem)
    if path.is_symlink() and real_path(path) is None:  # (`ls` shows it: not "no such file")
        raise NothingToShow(f"{target}: a symbolic link that leads back to itself, neither a recipe file nor an output folder")
    raise NothingToShow(f"{target}: no such recipe file or output folder")


#: A top-level `name:` or `output:` line, read from a recipe that does not load, only to name
#: its folder in a hint (a guess that is checked: the folder must hold a state).
_TOP_LEVEL = re.compile(r"""^(name|output):[ \t]*(['"]?)([^'"#\r\n]+?)\2[ \t]*(?:#.*)?$""", re.MULTILINE)


def _read_the_folder_instead(recipe: Path, out: str | os.PathLike[str] | None) -> Problem | None:
    from seedream_pipe.recipe import default_name
    from seedream_pipe.state import STATE_FILE

    try:
        with open(recipe, "rb") as f:
            text = f.read(1 << 20).decode("utf-8", errors="replace")
    except OSError:
        text = ""
    keys = {match[1]: match[3] for match in _TOP_LEVEL.finditer(text)}
    guesses = [Path(out)] if out is not None else []
    if "output" in keys:
        guesses.append(recipe.parent / keys["output"])
    guesses.append(OUTPUTS_ROOT / (keys.get("name") or default_name(recipe.stem)))
    found = next((folder for folder in guesses if (folder / STATE_FILE).is_file()), None)
    if found is None:  # (never run, or run into a folder we cannot guess: nothing to point at)
        return None
    return Problem(str(recipe), f"to read what its runs left while it has errors, give {found} instead of the recipe")


def real_path(path: str | os.PathLike[str]) -> Path | None:
    """`Path(path).resolve()`, or None when the path has no real one: a symbolic link loop
    (RuntimeError before Python 3.13, OSError since: a link pointing at itself ended plan with
    exit 70), or a NUL written in it (ValueError), which no file name can hold."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError, ValueError):
        return None


def no_folder(path: Path) -> str:
    """What `path` is, said of a path that is there but no folder: a link loop or a dangling
    link is no file either (mkdir says "File exists" of it all the same)."""
    return "a symbolic link to no folder" if path.is_symlink() else "a file, not a folder"


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name the same file or folder (False when either cannot be resolved: a
    symbolic link loop, a name the system refuses)."""
    real = real_path(a)
    return real is not None and real == real_path(b)


def send_to_devnull(stream: IO[Any] | None) -> None:
    """Point a standard stream whose reader went away at /dev/null. Python flushes it once more
    at exit, into the same closed pipe: that flush then neither fails nor prints "Exception
    ignored ... BrokenPipeError" (and exit 120). No real file behind it: nothing to do."""
    try:
        fd = stream.fileno()  # type: ignore[union-attr]
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


def file_sha256(path: Path, *, max_bytes: int | None = None) -> str | None:
    """The sha256 of a file, or None when it cannot be read, is not a plain file of its own
    (a link, a device, a pipe), or holds more than `max_bytes`. The output folder may have been
    tampered with: a link to /dev/zero would be hashed forever, a pipe never opened."""
    digest = hashlib.sha256()
    left = None if max_bytes is None else max_bytes + 1
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            while chunk := f.read(1024 * 1024 if left is None else min(1024 * 1024, left)):
                digest.update(chunk)
                if left is not None:
                    left -= len(chunk)
                    if left <= 0:
                        return None
    except OSError:
        return None
    return digest.hexdigest()


class NotARegularFile(OSError):
    """A pipe, a device or a socket where a file was to be read."""


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """At most `limit` + 1 bytes of a regular file (one more than the limit: the caller tells a
    file over it), opened without waiting: a named pipe would wait for a writer for good, and a
    device (/dev/zero) never end. IsADirectoryError for a folder, NotARegularFile for the rest."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with open(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder", os.fspath(path))
        if not stat.S_ISREG(mode):
            raise NotARegularFile(errno.EINVAL, "not a regular file (a pipe or a device)", os.fspath(path))
        return f.read(limit + 1)


def folder_file(stored: str | None, folder: str) -> str | None:
    """A file path read back from a state, if it is what the runner writes there: `<folder>/<name>`,
    one plain name inside `folder` of the output folder. Anything else (`images/../../x`, an
    absolute path, a deeper path) is None, a file that is not there: a state file is just a file,
    and one crafted or corrupted must not steer a rename or a write outside the folder."""
    if not stored:
        return None
    head, sep, name = stored.partition("/")
    if head != folder or not sep or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        return None
    return stored


@contextlib.contextmanager
def removed_on_error(path: Path) -> Iterator[None]:
    """Remove `path` (a temporary file being written) if the block fails in any way, a Ctrl-C
    included: no half-written file is left behind."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        raise


def fresh_temp(folder: Path, prefix: str, suffix: str) -> tuple[Path, BinaryIO]:
    """A new file `<prefix><random><suffix>` in `folder`, open for writing, for a file written
    before it is renamed into place. Its name cannot be guessed, it is created exclusively
    (O_EXCL), and it is written through the file it was created as, never opened again by name:
    a link planted in the folder under its name, before or after, is never written through."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(8):
        tmp = folder / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        return tmp, os.fdopen(fd, "wb")
    raise FileExistsError(f"{folder}: no free temporary name for {prefix}*{suffix}")


def slug(text: str, *, max_length: int = 40) -> str:
    """Reduce any text to `[a-z0-9-]` (at most `max_length` chars, never empty, never a path).

    Accents are folded to ASCII; everything else (slashes, dots, spaces, quotes, control
    characters, other scripts) becomes a single hyphen.
    """
    return _cleaned(text, max_length) or "x"


def _cleaned(text: str, max_length: int) -> str:
    """`slug` that may be empty (text with nothing to keep)."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return _UNSAFE.sub("-", folded.lower()).strip("-")[:max_length].rstrip("-")


#: The labels' part of an image file name, and the least share of it each label gets.
_LABELS_LENGTH = 60
_LEAST_PER_LABEL = 8


def image_file_name(index: int, job_id: str, labels: list[str] | tuple[str, ...]) -> str:
    """`<index>_<job_id>_<labels>.png`, e.g. `0007_3f9a0c1b22de_mist-watercolor-16-9.png`
    (the runner then keeps the file under the suffix of its real format: `.jpg` for a JPEG).

    Each label gets a fair share of the name, and the room short labels leave goes to the
    long ones: a long first label does not push out the short ones after it that tell two
    images apart.
    """
    parts = [p for p in (_cleaned(label, _LABELS_LENGTH) for label in labels) if p]
    room = _LABELS_LENGTH - max(0, len(parts) - 1)  # (less the hyphens between them)
    cut: dict[int, int] = {}
    # shortest first: each takes what it needs, up to an equal share of the room left
    for done, i in enumerate(sorted(range(len(parts)), key=lambda i: len(parts[i]))):
        share = max(_LEAST_PER_LABEL, room // (len(parts) - done))
        cut[i] = min(len(parts[i]), share)
        room -= cut[i]
    shortened = [_cut(parts[i], cut[i]) for i in range(len(parts))]
    label_part = slug("-".join(p for p in shortened if p), max_length=_LABELS_LENGTH)
    return f"{index:04d}_{slug(job_id, max_length=32)}_{label_part}.png"


def _cut(part: str, length: int) -> str:
    """`part` cut to `length`, at a hyphen when that keeps most of it, and never inside a run
    of numbers: "2560x1440-16-9" (2560x1440, 16:9) cut to 13 is "2560x1440", not "2560x1440-16",
    which would read as another size."""
    if len(part) <= length:
        return part
    cut = part[:length]
    if part[length] != "-" and "-" in cut and cut.rindex("-") >= length // 2:
        cut = cut[: cut.rindex("-")]  # (a word cut short: drop it)
    cut = cut.rstrip("-")
    while "-" in cut and _numbers_go_on(part, cut):
        shorter = cut[: cut.rindex("-")]
        if len(shorter) < length // 2:
            break
        cut = shorter
    return cut


def _numbers_go_on(part: str, cut: str) -> bool:
    """Whether `cut` ends in a number that `part` continues with more (16 of 16-9)."""
    last = cut[cut.rindex("-") + 1 :]
    rest = part[len(cut) :]
    return last.isdigit() and len(rest) > 1 and rest[0] == "-" and rest[1].isdigit()
