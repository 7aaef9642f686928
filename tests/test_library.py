"""The package used as a library, the way a script or a notebook does."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable

import pytest

from seedream_pipe import errors


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
