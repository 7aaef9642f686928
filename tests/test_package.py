"""The package's public surface and the one place errors become exit codes."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import quote

import click
import pytest
from click.testing import CliRunner

import seedream_pipe
from seedream_pipe import errors, redaction
from seedream_pipe.cli import SeedreamCli, cli


@pytest.mark.parametrize("package", ["seedream_pipe", "seedream_pipe.runner"])
def test_every_exported_name_resolves(package: str) -> None:
    import importlib

    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    assert module.__all__ == sorted(module.__all__)


@pytest.mark.parametrize("package", ["seedream_pipe", "seedream_pipe.sim", "seedream_pipe.outputs", "seedream_pipe.runner"])
def test_type_checkers_see_every_lazily_exported_name(package: str) -> None:
    # A name only in _EXPORTS was `Any` to mypy and editors: `sp.load_recipe(123)` passed a check.
    import ast
    import importlib

    module = importlib.import_module(package)
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))  # type: ignore[arg-type]
    seen = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for statement in node.body
        if isinstance(statement, ast.ImportFrom)
        for alias in statement.names
    }
    assert set(module._EXPORTS) <= seen


def test_every_exported_exception_is_one_the_library_raises() -> None:
    # `sp.Interrupted` was exported and never raised: a notebook's `except sp.Interrupted` caught
    # nothing. A base class counts through the classes under it.
    package = Path(seedream_pipe.__file__).parent
    source = "\n".join(
        path.read_text(encoding="utf-8") for path in package.rglob("*.py") if path.name != "errors.py"
    )
    for name in seedream_pipe.__all__:
        exported = getattr(seedream_pipe, name)
        if isinstance(exported, type) and issubclass(exported, BaseException):
            assert f"{name}(" in source or exported.__subclasses__(), f"{name} is exported but never raised"


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        _ = seedream_pipe.does_not_exist  # type: ignore[attr-defined]


def test_a_removed_name_says_what_to_use_instead() -> None:
    # Notebooks written against 0.1's first cut may still say `except sp.Interrupted`.
    with pytest.raises(AttributeError, match=r"Interrupted was removed: .*exit_code == 130") as caught:
        _ = seedream_pipe.Interrupted  # type: ignore[attr-defined]
    assert caught.value.name == "Interrupted"
    assert "Interrupted" not in dir(seedream_pipe)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.UsageError("x"), 64),
        (errors.RecipeError(errors.Problem("r.yaml", "bad")), 65),
        (errors.NothingToShow("x"), 66),
        (errors.ServiceUnavailable("x"), 69),
        (errors.OutputError("x"), 73),
        (errors.StateError("x"), 74),
        (errors.CreditError("x", status=402), 75),
        (errors.RateLimited("x", status=429), 75),
        (errors.AuthError("x", status=401), 77),
        (KeyboardInterrupt(), 130),
        (PermissionError(13, "Permission denied"), 74),
        (RuntimeError("x"), 70),
    ],
)
def test_exit_codes(exc: BaseException, code: int) -> None:
    assert errors.exit_code_for(exc) == code


def test_problem_names_file_line_and_key_path() -> None:
    problem = errors.Problem("recipes/a.yaml", "unknown key", key_path="vars.mood", line=3, column=5)
    assert str(problem) == "recipes/a.yaml:3:5: vars.mood: unknown key"
    assert str(errors.Problem("a.yaml", "empty")) == "a.yaml: empty"


def test_redact_replaces_every_secret() -> None:
    assert redaction.redact("Bearer sk-123 and sk-123", "sk-123", None, "") == "Bearer *** and ***"
    # a stand-in token (RUNCOMFY_TOKEN=x for the simulator) is no secret: looked for, it mangles text
    assert redaction.redact('{"index": 1, "resolution": "2048x2048"}', "x") == '{"index": 1, "resolution": "2048x2048"}'


def _group_with(exc: Exception) -> click.Group:
    @click.group(cls=SeedreamCli)
    def group() -> None:
        pass

    @group.command()
    def boom() -> None:
        raise exc

    return group


def test_library_errors_become_a_message_and_their_exit_code() -> None:
    problems = [errors.Problem("a.yaml", "first", line=1), errors.Problem("a.yaml", "second")]
    result = CliRunner().invoke(_group_with(errors.RecipeError(problems)), ["boom"])
    assert result.exit_code == 65
    assert "error: a.yaml:1: first" in result.output
    assert "error: a.yaml: second" in result.output
    assert "Traceback" not in result.output


def test_usage_errors_exit_64() -> None:
    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 64
    assert "No such command" in result.output


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["-h"])
    assert result.exit_code == 0
    for name in cli.commands:
        assert name in result.output


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "seedream_pipe", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"seedream-pipe, version {seedream_pipe.__version__}"


@pytest.mark.parametrize(
    ("imports", "not_loaded"),
    [
        # `seedream-pipe --help` and `validate` start fast: each library loads in the commands
        # that use it
        ("import seedream_pipe.cli", ("pandas", "PIL", "aiohttp", "httpx")),
        # `sheet`, `report` and `gallery` look for a run at work through runner.folder: not
        # worth the HTTP stack (0.3 s)
        ("import seedream_pipe.runner.folder", ("aiohttp", "httpx")),
        # a contact sheet needs no DataFrame
        ("from seedream_pipe.outputs import open_output; from seedream_pipe.outputs.sheet import make_sheet", ("pandas",)),
    ],
)
def test_heavy_libraries_load_only_where_they_are_used(imports: str, not_loaded: tuple[str, ...]) -> None:
    code = f"import sys; {imports}; print(sorted(m for m in {not_loaded!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_redact_finds_the_token_in_any_letter_case() -> None:
    assert redaction.redact("echo: BEARER SK-SECRET-1 and sk-secret-1", "sk-Secret-1") == "echo: BEARER *** and ***"
    assert redaction.holds_secret("https://x/?t=SK-SECRET-1", "sk-secret-1")
    assert not redaction.holds_secret("index", "x")  # a stand-in token is never looked for


@pytest.mark.parametrize(
    "echo",
    [
        "seen Authorization=Bearer%20rc_AbC%2BdEf%2FGhI%3DjklMN%26Opq",  # percent-encoded
        "seen Authorization=Bearer+rc_AbC%2BdEf%2FGhI%3DjklMN%26Opq",  # a form's encoding
        "seen Authorization=Bearer%20RC_ABC%2bDEF%2fGHI%3dJKLMN%26OPQ",  # in other letter case
        '{"seen": "Bearer rc_AbC+dEf\\/GhI=jklMN&Opq"}'.replace("\\/", "/"),  # as is, in JSON
        "<p>Bearer rc_AbC+dEf/GhI=jklMN&amp;Opq</p>",  # escaped in HTML
    ],
)
def test_redact_finds_the_token_in_the_forms_a_server_echoes_it_in(echo: str) -> None:
    token = "rc_AbC+dEf/GhI=jklMN&Opq"
    assert redaction.holds_secret(echo, token)
    cleaned = redaction.redact(echo, token)
    assert "***" in cleaned and "jklMN" not in cleaned and "JKLMN" not in cleaned


def test_a_token_percent_encoded_with_its_slash_kept_is_cut_out() -> None:
    token = "abcdef/ghijk+lmn"
    assert redaction.redact("seen Bearer%20abcdef/ghijk%2Blmn", token) == "seen Bearer%20***"  # quote()


@pytest.mark.parametrize(
    ("echo", "cleaned"),
    [
        ("<p>Bearer some&#45;secret&#45;token&#45;123</p>", "<p>Bearer ***</p>"),  # entities
        ("x=some%2dsecret%2Dtoken%2d123", "x=***"),  # needless escapes
        # cut short (at a length limit) or split: none of the token's whole forms, but as much
        # of it as a run of its plain characters
        ("x=some%2dsecret%2Dto", "x=***"),
        ("<p>Bearer some&#x2D;secr&hellip;</p>", "<p>Bearer ***&hellip;</p>"),
        ("a=some%2Dsecret%2D ... b=%2Dtoken%2D123", "a=*** ... b=***"),
        # escaped twice: a URL quoted into another one's query, an entity for an escape's %
        ("next=%2Fcb%3Ft%3Dsome%252Dsecret%252Dto", "next=%2Fcb%3Ft%3D***"),
        ("<p>some&#37;2dsecret&#37;2dtoken</p>", "<p>***</p>"),
    ],
)
def test_a_token_or_a_piece_of_it_escaped_character_by_character_is_cut_out(echo: str, cleaned: str) -> None:
    token = "some-secret-token-123"
    assert redaction.holds_secret(echo, token)
    assert redaction.redact(f"HTTP 400: {echo}", token) == f"HTTP 400: {cleaned}"


@pytest.mark.parametrize(
    ("token", "echo"),
    [
        # a character of two bytes in UTF-8, escaped byte by byte, cut short: no run of the
        # token's characters reads the same in the text
        ("clé-secrète-123", "x=cl%C3%A9-secr%C3%A8te-1"),
        ("clé-secrète-123", "x=CL%c3%a9-SECR%c3%a8"),
    ],
)
def test_a_token_echoed_in_an_encoding_redact_cannot_cut_out_withholds_the_text(token: str, echo: str) -> None:
    assert redaction.holds_secret(echo, token)
    cleaned = redaction.redact(f"HTTP 400: {echo}", token)
    assert cleaned == redaction.WITHHELD
    # text that merely has a % or & in it is left alone
    assert redaction.redact("100% done & dusted", token) == "100% done & dusted"
    assert redaction.redact("x=caf%C3%A9&amp;y=%2D1", token) == "x=caf%C3%A9&amp;y=%2D1"


def test_a_character_reference_too_long_for_int_leaves_redact_working() -> None:
    # html.unescape reads a reference's digits with int(), which refuses more than 4300 of them:
    # a text holding `&#99...9;` raised ValueError out of redact instead of being scrubbed.
    token = "some-secret-token-123"
    text = "x &#" + "9" * 5000 + "; y"
    assert redaction.redact(text, token) == text and not redaction.holds_secret(text, token)
    hyphen = "&#" + "0" * 5000 + "45;"  # leading zeros: a hyphen all the same
    echo = f"some{hyphen}secret{hyphen}token{hyphen}123"
    assert redaction.holds_secret(echo, token)
    assert redaction.redact(echo, token) == "***"


def test_printable_escapes_controls_and_the_marks_that_reorder_text() -> None:
    assert errors.printable("\u202egnp.exe") == "\\u202egnp.exe"  # read as "exe.png" if shown
    assert errors.printable("a\u2066b\u2069c \x1b[2J\r") == "a\\u2066b\\u2069c \\x1b[2J\\r"
    assert errors.printable("line\nnext", keep_newlines=True) == "line\nnext"
    assert errors.printable("日本語 é ✓ café") == "日本語 é ✓ café"  # text is text


def test_every_branch_of_the_exception_tree_is_exported() -> None:
    # A notebook's `except sp.UsageError:` (what arun_recipe raises for arguments it cannot use)
    # was an AttributeError: only some branches of the tree were exported.
    branches = {cls.__name__ for cls in errors.SeedreamPipeError.__subclasses__()}
    assert branches <= set(seedream_pipe.__all__), sorted(branches - set(seedream_pipe.__all__))
    for name in branches:
        assert getattr(seedream_pipe, name) is getattr(errors, name)


@pytest.mark.parametrize(
    "echo",
    [
        "echo: Bearer rc_9f3KxQ2mZ7pL4vB8nW1tY6hJ0sD5a",  # all but the last character
        "echo: c_9f3KxQ2mZ7pL4vB8nW1tY6hJ0sD5aE",  # all but the first
        "echo: rc_9f3KxQ2mZ7pL4v ... B8nW1tY6hJ0sD5aE",  # split in two
        "key rc_9F3KXQ2MZ cut",  # a long head, in another case
    ],
)
def test_a_long_piece_of_the_token_is_cut_out_too(echo: str) -> None:
    # A server that echoes the token cut short (at a length limit, or split across a line)
    # gives most of it away all the same: any run of 8 or more of its characters goes.
    token = "rc_9f3KxQ2mZ7pL4vB8nW1tY6hJ0sD5aE"
    cleaned = redaction.redact(echo, token)
    assert "***" in cleaned
    assert not any(token[i : i + 8].casefold() in cleaned.casefold() for i in range(len(token) - 7)), cleaned
    assert redaction.redact("pL4v is not enough to matter", token) == "pL4v is not enough to matter"


def test_a_run_of_a_token_that_repeats_a_piece_is_cut_whole() -> None:
    # The run was followed on from the first place its piece occurs in the token: with the piece
    # twice in it, the run went on from the wrong one and the rest stayed in view.
    token = "abcdefghabcdefghXYZ12345QRS"
    assert redaction.redact("seen abcdefghXYZ1234 here", token) == "seen *** here"


B64_TOKEN = "rc_9f3K?xQ2mZ>7pL4vB8nW1tY~6hJ0sD5aE"  # (its base64 has both alphabets' own characters)


def _b64(text: str, *, urlsafe: bool = False) -> str:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return encode(text.encode()).decode("ascii")


def _shows_base64_of_token(text: str) -> bool:
    """Whether `text` holds 11 characters in a row (8 bytes' worth) of B64_TOKEN's base64 that
    read the same whatever surrounds the token, in either alphabet and however its bytes fall
    into base64's characters."""
    for lead in range(3):
        for urlsafe in (False, True):
            zeros, ones = (
                _b64(filler * lead + B64_TOKEN + filler * 2, urlsafe=urlsafe) for filler in ("\0", "\x7f")
            )
            if any(zeros[i : i + 11] == ones[i : i + 11] and zeros[i : i + 11] in text for i in range(len(zeros) - 10)):
                return True
    return False


@pytest.mark.parametrize(
    ("echo", "cleaned"),
    [
        # a debug dump of the request's headers, the header's value or the token encoded
        (f"Authorization: {_b64('Bearer ' + B64_TOKEN)}", "Authorization: ***"),
        (f"Authorization: Bearer {_b64(B64_TOKEN)}", "Authorization: Bearer ***"),
        (f"auth={_b64(B64_TOKEN, urlsafe=True).rstrip('=')}&x=1", "auth=***&x=1"),  # JWT-style
        # cut short at a length limit, from its start or from within `Bearer `
        # (what is left is `Bearer ` alone: QmVhcmVyI)
        (f"Authorization: {_b64('Bearer ' + B64_TOKEN)[:24]}...", "Authorization: QmVhcmVyI***..."),
        (f"seen {_b64('Bearer ' + B64_TOKEN)[3:20]} here", "seen hcmVyI*** here"),
        # cut short and percent-encoded, in a URL's query
        (f"next={quote(_b64(B64_TOKEN), safe='')[:40]}", "next=***"),
    ],
)
def test_the_token_in_base64_whole_or_cut_short_is_cut_out(echo: str, cleaned: str) -> None:
    # (the token's base64 has a + for a URL to escape, and its URL-safe base64 a -)
    assert "%2B" in quote(_b64(B64_TOKEN), safe="") and "-" in _b64(B64_TOKEN, urlsafe=True)
    assert redaction.holds_secret(echo, B64_TOKEN)
    assert redaction.redact(echo, B64_TOKEN) == cleaned


@pytest.mark.parametrize(
    ("kept", "echo"),
    [
        # Basic auth with the token as the password: "user:" shifts it within base64's groups
        ("Authorization: Basic dXNlcj", f"Authorization: Basic {_b64('user:' + B64_TOKEN)}"),
        # a JWT-like echo whose body holds the token; a body wrapped at 20 characters a line
        ("eyJhbGciOiJub25lIn0.", f"eyJhbGciOiJub25lIn0.{_b64(json.dumps({'tok': B64_TOKEN}), urlsafe=True)}.x"),
        ("body:\n", "body:\n" + "\n".join(textwrap.wrap(_b64(json.dumps({"auth": f"Bearer {B64_TOKEN}"})), 20))),
    ],
)
def test_the_token_within_a_longer_base64_text_is_cut_out(kept: str, echo: str) -> None:
    assert _shows_base64_of_token(echo)
    assert redaction.holds_secret(echo, B64_TOKEN)
    cleaned = redaction.redact(echo, B64_TOKEN)
    assert cleaned.startswith(kept) and "***" in cleaned
    assert not _shows_base64_of_token(cleaned), cleaned


def test_base64_of_anything_but_the_token_is_left_alone() -> None:
    for text in (
        f"Authorization: {_b64('Bearer rc_another-token-of-the-same-length-0')}",
        f"data:image/png;base64,{base64.b64encode(bytes(range(256))).decode()}",
        "id 5c0b6f1e-3a7d-4a59-9d8e-0c2f7b1a9e44 at https://cdn.example/a/b.png?X-Amz-Signature=9f3Kx",
    ):
        assert redaction.redact(text, B64_TOKEN) == text and not redaction.holds_secret(text, B64_TOKEN)
    # a stand-in token is not looked for, encoded or not
    assert redaction.redact(_b64("Bearer x"), "x") == _b64("Bearer x")


def test_ctrl_c_while_the_command_loads_says_interrupted_not_a_traceback() -> None:
    # The console script imported seedream_pipe.cli before calling it: a Ctrl-C in those first
    # milliseconds printed a KeyboardInterrupt traceback. Loading it is now the entry's own work.
    code = """
import sys
class Pressed:
    def find_spec(self, name, path=None, target=None):
        if name == "seedream_pipe.cli":
            raise KeyboardInterrupt
sys.meta_path.insert(0, Pressed())
from seedream_pipe._entry import main
main()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (130, "Interrupted.\n")
    script = (Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    assert 'seedream-pipe = "seedream_pipe._entry:main"' in script


def test_a_reader_that_stops_reading_ends_the_command_quietly_with_141(tmp_path: Path) -> None:
    # `seedream-pipe plan big.yaml --format csv | head -1`: click's own handling of the closed
    # pipe exited 1, which the README keeps for "some jobs failed".
    values = ", ".join(str(i) for i in range(100))
    recipe = tmp_path / "big.yaml"
    recipe.write_text(f'template: "{{{{ a }}}} {{{{ b }}}}"\nvars:\n  a: [{values}]\n  b: [{values}]\n')
    command = [sys.executable, "-m", "seedream_pipe", "plan", str(recipe), "--format", "csv"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith(b"job_id,")
        proc.stdout.close()  # as `head -1` does: 10,000 rows are far more than a pipe holds
        stderr = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    assert code == 141, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr and "error" not in stderr, stderr


#: How each way of starting the command is started, for a script that sends a signal first.
_STARTS = {
    "console script": "from seedream_pipe._entry import main\nmain()",
    "python -m": 'import runpy\nsys.argv = ["seedream_pipe", "--version"]\n'
                 'runpy.run_module("seedream_pipe", run_name="__main__", alter_sys=True)',
}


@pytest.mark.parametrize("start", sorted(_STARTS))
def test_sigterm_while_the_command_loads_is_an_interrupt_too(start: str) -> None:
    # Until a run installs its own handlers, SIGTERM's default killed the process: 143, no word,
    # where the README says 130 for Ctrl-C and SIGTERM alike. `python -m seedream_pipe`, the
    # same command by the README, called seedream_pipe.cli.main directly, with no handler.
    code = f"""
import os, signal, sys
class Terminated:
    def find_spec(self, name, path=None, target=None):
        if name == "seedream_pipe.cli":
            os.kill(os.getpid(), signal.SIGTERM)
sys.meta_path.insert(0, Terminated())
{_STARTS[start]}
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (130, "Interrupted.\n")


def test_a_command_started_with_no_stdout_ends_as_it_did(tmp_path: Path) -> None:
    # `seedream-pipe validate r.yaml >&-` (a cron line, a daemon): Python's sys.stdout is None,
    # which click's echo allows; the flush added for a closed pipe raised AttributeError on it,
    # and every command ended 'unexpected AttributeError ... a bug' (exit 70) once done.
    recipe = tmp_path / "r.yaml"
    recipe.write_text('template: "a {{ n }}"\nvars:\n  n: [x, y]\n')
    code = f"""
import sys
sys.stdout = None
from seedream_pipe.cli import cli
sys.exit(cli.main(args=["validate", {str(recipe)!r}], standalone_mode=False))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize(
    ("token", "echo"),
    [
        # a character that case-folds to two (ß -> ss, ﬁ -> fi, İ -> i̇): the runs were looked for
        # case-folded in the text as it was, where `ss` is not `ß`, so a head cut short stayed
        ("Straße12345678abc", "err: Straße123456 end"),
        ("Straße12345678abc", "err: sTRAßE123456 end"),
        ("aﬁle_token_12345678", "err: aﬁle_toke end"),
        ("İstanbul12345678", "err: xİstanbul1 end"),
    ],
)
def test_a_piece_of_a_token_with_a_character_that_folds_to_two_is_cut_out(token: str, echo: str) -> None:
    cleaned = redaction.redact(echo, token)
    folded_token, folded = token.casefold(), cleaned.casefold()
    assert not any(folded_token[i : i + 8] in folded for i in range(len(folded_token) - 7)), cleaned
    assert cleaned.startswith("err: ") and cleaned.endswith(" end") and "***" in cleaned


def test_a_token_holding_a_byte_that_is_not_utf8_is_still_cut_out() -> None:
    # RUNCOMFY_TOKEN=$'rc_abc\xff...': Python reads the byte as a lone surrogate, which quote()
    # refused (UnicodeEncodeError): every message of the run ended with exit 70, "a bug".
    token = "rc_abcdef\udcffghijklmnop"
    assert redaction.redact(f"echo: {token}", token) == "echo: ***"
    assert redaction.redact("echo: ghijklmnop", token) == "echo: ***"
    assert redaction.redact("nothing here", token) == "nothing here"


def test_a_short_token_written_with_a_character_that_folds_to_two_is_withheld() -> None:
    # A token of 6 or 7 characters is looked for whole only (its runs are too short to cut on
    # their own): echoed upper-cased, `ß` is `SS`, which the case-insensitive pattern missed
    assert redaction.redact("err: STRASSE end", "Straße") == redaction.WITHHELD
    assert redaction.holds_secret("err: STRASSE end", "Straße")
    assert redaction.redact("err: Straße end", "Straße") == "err: *** end"

