"""`python -m seedream_pipe` is the same as the `seedream-pipe` command."""

from seedream_pipe.cli import main

if __name__ == "__main__":
    main()
