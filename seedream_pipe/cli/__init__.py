"""The `seedream-pipe` command: a thin click shell over the library.

Commands live in modules by topic (recipe, sim, run, outputs); each only parses arguments,
calls library code and prints. Errors are mapped to exit codes here and nowhere else.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import click

from seedream_pipe import __version__
from seedream_pipe.errors import (
    EX_INTERRUPTED,
    EX_PIPE_CLOSED,
    EX_USAGE,
    RecipeError,
    SeedreamPipeError,
    exit_code_for,
    printable,
)
from seedream_pipe.paths import send_to_devnull
from seedream_pipe.words import speaking_to_cli

#: Set to 1 to see the traceback of an error seedream-pipe did not expect (for a bug report).
DEBUG_ENV = "SEEDREAM_PIPE_DEBUG"

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def echo_error(exc: SeedreamPipeError) -> None:
    """Print a library error the way every command does: one line per problem, on stderr."""
    if isinstance(exc, RecipeError):
        for problem in exc.problems:
            click.secho(f"error: {printable(str(problem))}", fg="red", err=True)
    else:
        click.secho(f"error: {printable(str(exc))}", fg="red", err=True)


def echo_unexpected(exc: Exception) -> None:
    """An error no library code turned into a SeedreamPipeError: one line, and the traceback only
    when asked for. The state in the output folder is safe either way: every step was committed
    before the next one began."""
    if isinstance(exc, OSError):
        # the file system refused: read-only folder, disk full, permissions
        where = f" ({exc.filename})" if exc.filename else ""
        text = f"{exc.strerror or exc}{where}"
    else:
        text = (
            f"unexpected {type(exc).__name__}: {exc} - a bug in seedream-pipe; "
            f"set {DEBUG_ENV}=1 to see where, for a bug report"
        )
    click.secho(f"error: {printable(text)}", fg="red", err=True)
    if os.environ.get(DEBUG_ENV):
        traceback.print_exception(exc, file=sys.stderr)


class _PipeClosed(Exception):
    """Whoever read our output stopped reading (`seedream-pipe plan ... | head`)."""


class SeedreamCli(click.Group):
    """A click group whose `main` turns every known failure into a message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            # click's own handling of it exits 1, which here means "some jobs failed"
            raise _PipeClosed from exc

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            with speaking_to_cli():  # (the library's messages name --options, not parameters)
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
                if sys.stdout is not None:  # (None: started with no stdout at all, `>&-`)
                    sys.stdout.flush()  # (a pipe closed after the last write says so here)
        except (_PipeClosed, BrokenPipeError):
            # What was asked was done (a run's state is committed); only its printing was cut
            # short. Exit as a shell tool killed by SIGPIPE does, quietly: the reader knows.
            send_to_devnull(sys.stdout)
            code = EX_PIPE_CLOSED
        except click.UsageError as exc:
            exc.show()
            code = EX_USAGE
        except click.ClickException as exc:
            exc.show()
            code = exc.exit_code
        except click.exceptions.Abort:
            click.echo("Interrupted.", err=True)
            code = EX_INTERRUPTED
        except SeedreamPipeError as exc:
            echo_error(exc)
            code = exc.exit_code
        except Exception as exc:  # the last line of defence: a message, never a traceback
            echo_unexpected(exc)
            code = exit_code_for(exc)
        else:
            code = rv if isinstance(rv, int) else 0
        if not standalone_mode:
            return code
        sys.exit(code)


@click.group(cls=SeedreamCli, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="seedream-pipe")
def cli() -> None:
    """Prompt-exploration sweeps on RunComfy's Model API, from a YAML recipe.

    Write a recipe (`seedream-pipe init`), check it (`validate`, `plan`), run it against the
    built-in simulator (`run --sim`) or the real API (`run`, with RUNCOMFY_TOKEN set), then
    look at the contact sheet, report and gallery it writes into its output folder.
    """


def _register() -> None:
    # Imported here so that `seedream_pipe.cli` stays importable while a topic is being built,
    # and so each topic module owns its commands.
    from seedream_pipe.cli import outputs_cmds, recipe_cmds, run_cmds, sim_cmds

    for module in (recipe_cmds, sim_cmds, run_cmds, outputs_cmds):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="seedream-pipe")
