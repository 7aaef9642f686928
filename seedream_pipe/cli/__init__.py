"""The `seedream-pipe` command: a thin click shell over the library.

Commands live in modules by topic (recipe, sim, run, outputs); each only parses arguments,
calls library code and prints. Errors are mapped to exit codes here and nowhere else.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from seedream_pipe import __version__
from seedream_pipe.errors import EX_INTERRUPTED, EX_USAGE, RecipeError, SeedreamPipeError, printable

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def echo_error(exc: SeedreamPipeError) -> None:
    """Print a library error the way every command does: one line per problem, on stderr."""
    if isinstance(exc, RecipeError):
        for problem in exc.problems:
            click.secho(f"error: {printable(str(problem))}", fg="red", err=True)
    else:
        click.secho(f"error: {printable(str(exc))}", fg="red", err=True)


class SeedreamCli(click.Group):
    """A click group whose `main` turns every known failure into a message and an exit code."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
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
