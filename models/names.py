"""Name lookup in the registries, with suggestions for a misspelt name (a leaf: imports nothing of ours)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name. A KeyError for dict-like callers, a ValueError for option parsers."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def suggest(name: str, choices: list[str] | tuple[str, ...]) -> list[str]:
    return difflib.get_close_matches(name.lower(), [c.lower() for c in choices], n=3, cutoff=0.5)


def lookup(registry: Mapping[str, T], name: str, kind: str) -> T:
    """registry[name], or an error like: Unknown model 'pythia-1g'. Did you mean: pythia-1b? Available: ..."""
    if name in registry:
        return registry[name]
    close = suggest(name, list(registry))
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownNameError(f"Unknown {kind} {name!r}.{hint} Available: {', '.join(sorted(registry))}")
