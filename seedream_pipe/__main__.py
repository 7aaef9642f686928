"""`python -m seedream_pipe` is the same as the `seedream-pipe` command."""

# (the console script's own entry: SIGTERM and a Ctrl-C while the CLI loads are "Interrupted.",
# 130, here as well; `seedream_pipe.cli.main` alone left SIGTERM's default, 143 and no word)
from seedream_pipe._entry import main

if __name__ == "__main__":
    main()
