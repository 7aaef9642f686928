"""Lazy exports for a package's `__init__`: a name's module is imported on first use.

So `import seedream_pipe` (and so `seedream-pipe --help`) does not pay for pandas, Pillow or
aiohttp until something that needs them is touched.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(
    namespace: dict[str, Any],
    exports: Mapping[str, str],
    names: Sequence[str],
    removed: Mapping[str, str] | None = None,
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of a package whose `exports` map name -> module.

    Usage in a package's `__init__.py`: `__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS, __all__)`.
    A resolved name is stored in the package's namespace, so each is imported once. `removed` maps
    a name the package no longer has to what to use instead: code written against an older
    version is told that, not just that the name is missing.
    """
    package = namespace["__name__"]
    gone = dict(removed or {})

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            if name in gone:
                raise AttributeError(f"{package}.{name} was removed: {gone[name]}", name=name, obj=None)
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return list(names)

    return __getattr__, __dir__
