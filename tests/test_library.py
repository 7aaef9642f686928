"""The package used as a library, the way a script or a notebook does."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

from seedream_pipe import errors
from seedream_pipe.config import api_settings
from seedream_pipe.words import speaking_to_cli


@pytest.mark.parametrize("send", [lambda e: pickle.loads(pickle.dumps(e)), copy.copy], ids=["pickle", "copy"])
def test_a_recipe_error_comes_back_whole_from_a_worker_process(send: Callable[[errors.RecipeError], errors.RecipeError]) -> None:
    # A recipe loaded in a ProcessPoolExecutor worker sends its RecipeError back pickled: made
    # again from its message, it took the text for its problems, one per character.
    problems = [errors.Problem("r.yaml", "bad", "vars.x", 3, 4), errors.Problem("s.yaml", "worse")]
    exc = errors.RecipeError(problems)
    again = send(exc)
    assert again.problems == problems
    assert str(again) == "r.yaml:3:4: vars.x: bad\ns.yaml: worse"
    assert again.exit_code == errors.EX_DATAERR


def test_api_settings_tells_a_notebook_its_parameter_and_the_simulator_not_the_cli_s_options(tmp_path: Path) -> None:
    # A notebook's api_settings() without a token was told to "add --sim", and a bad base_url
    # was named "--base-url": it has neither option. The CLI's words stay as they were.
    nobody = {"HOME": str(tmp_path)}
    with pytest.raises(errors.AuthError) as no_token:
        api_settings(None, nobody)
    assert "--sim" not in str(no_token.value) and "seedream_pipe.Simulator()" in str(no_token.value)
    with pytest.raises(errors.UsageError, match=r"^base_url: 'ftp://x' is not an http"):
        api_settings("ftp://x", {"RUNCOMFY_TOKEN": "a-token"})
    with speaking_to_cli():
        with pytest.raises(errors.AuthError, match=r"or add --sim to run against the built-in simulator"):
            api_settings(None, nobody)
        with pytest.raises(errors.UsageError, match=r"^--base-url: 'ftp://x' is not an http"):
            api_settings("ftp://x", {"RUNCOMFY_TOKEN": "a-token"})
