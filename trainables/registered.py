"""A vocabulary registry seen from trainables: name -> what the entry's module registers.

vocabulary/registry.py declares each method and sparsity set torch-free and names the module that implements
it (vocabulary imports nothing of ours); :class:`Registered` resolves an entry's module on access, so that
module may itself import the trainables module that holds the view (a newcomer's set imports SparsitySet
from trainables.sparsity) and a registry changed at run time (a test's throwaway entry) is seen at once.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any, Callable

__all__ = ["Registered"]


class Registered(Mapping):
    """``specs()`` (name -> spec with a ``module``) as name -> ``getattr(module, attr)``; ``valid`` checks the
    registered object, else TypeError names the entry and says it is not ``what``."""

    def __init__(self, specs: Callable[[], Mapping[str, Any]], attr: str, what: str,
                 valid: Callable[[Any], bool]):
        self._specs, self._attr, self._what, self._valid = specs, attr, what, valid

    def __getitem__(self, name: str) -> Any:
        module = self._specs()[name].module
        value = getattr(importlib.import_module(module), self._attr)
        if not self._valid(value):
            raise TypeError(f"{name}: {module}.{self._attr} is not {self._what}")
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs())

    def __len__(self) -> int:
        return len(self._specs())
