"""Write each command's own `--help` into README.md between the `commands` markers.

    python scripts/readme_reference.py          # rewrite the README section
    python scripts/readme_reference.py --check  # exit 1 if the README is out of date (tests do this)
"""

from __future__ import annotations

import sys
from pathlib import Path

from click.testing import CliRunner

from seedream_pipe.cli import cli

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- commands:start -->", "<!-- commands:end -->"


def reference() -> str:
    """The Markdown of every command's help, in the order `seedream-pipe --help` lists them."""
    runner = CliRunner()
    blocks = []
    for name in cli.list_commands(None):  # type: ignore[arg-type]
        result = runner.invoke(cli, [name, "--help"], prog_name="seedream-pipe", terminal_width=100)
        if result.exit_code != 0:
            raise SystemExit(f"seedream-pipe {name} --help failed:\n{result.output}")
        blocks.append(f"### `seedream-pipe {name}`\n\n```\n{result.output.rstrip()}\n```\n")
    return "\n".join(blocks)


def render(readme: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{reference()}{END}{tail}"


def main(argv: list[str]) -> int:
    current = README.read_text(encoding="utf-8")
    wanted = render(current)
    if "--check" in argv:
        if current != wanted:
            print("README.md: the command reference is out of date; run scripts/readme_reference.py")
            return 1
        return 0
    README.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
