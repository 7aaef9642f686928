"""seedream-pipe: declarative prompt-exploration sweeps on RunComfy's Model API.

A notebook uses the same library the CLI does::

    import seedream_pipe as sp
    recipe = sp.load_recipe("recipes/demo.yaml")
    plan = recipe.plan()
    plan.to_dataframe()

Names are imported lazily so that `seedream-pipe --help` starts fast and each part of the
package loads only what it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seedream_pipe._lazy import lazy_exports

if TYPE_CHECKING:  # what type checkers see of the lazily loaded names ("X as X": re-exported)
    from seedream_pipe.errors import ApiError as ApiError
    from seedream_pipe.errors import AuthError as AuthError
    from seedream_pipe.errors import CreditError as CreditError
    from seedream_pipe.errors import FolderBusy as FolderBusy
    from seedream_pipe.errors import NothingToShow as NothingToShow
    from seedream_pipe.errors import OutputError as OutputError
    from seedream_pipe.errors import Problem as Problem
    from seedream_pipe.errors import RecipeError as RecipeError
    from seedream_pipe.errors import SeedreamPipeError as SeedreamPipeError
    from seedream_pipe.errors import StateError as StateError
    from seedream_pipe.errors import UsageError as UsageError
    from seedream_pipe.jobs import Job as Job
    from seedream_pipe.plan import Plan as Plan
    from seedream_pipe.recipe import Recipe as Recipe
    from seedream_pipe.recipe import load_recipe as load_recipe
    from seedream_pipe.recipe import parse_recipe as parse_recipe
    from seedream_pipe.sim import Simulator as Simulator
    from seedream_pipe.state import StateStore as StateStore

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "ApiError": "seedream_pipe.errors",
    "AuthError": "seedream_pipe.errors",
    "CreditError": "seedream_pipe.errors",
    "FolderBusy": "seedream_pipe.errors",
    "Job": "seedream_pipe.jobs",
    "NothingToShow": "seedream_pipe.errors",
    "OutputError": "seedream_pipe.errors",
    "Plan": "seedream_pipe.plan",
    "Problem": "seedream_pipe.errors",
    "Recipe": "seedream_pipe.recipe",
    "RecipeError": "seedream_pipe.errors",
    "SeedreamPipeError": "seedream_pipe.errors",
    "Simulator": "seedream_pipe.sim",
    "StateError": "seedream_pipe.errors",
    "StateStore": "seedream_pipe.state",
    "UsageError": "seedream_pipe.errors",
    "load_recipe": "seedream_pipe.recipe",
    "parse_recipe": "seedream_pipe.recipe",
}

__all__ = sorted([*_EXPORTS, "__version__"])


# Names earlier versions exported, and what a notebook uses instead.
_REMOVED: dict[str, str] = {
    "Interrupted": (
        "nothing raised it. A run started with handle_signals=True returns its result when "
        "interrupted (result.exit_code == 130); otherwise an interrupt ends it as KeyboardInterrupt "
        "or asyncio.CancelledError"
    ),
}

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS, __all__, _REMOVED)
