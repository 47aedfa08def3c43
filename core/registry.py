"""A small name -> class registry for extension points (criteria, schedules, readers, gates).

What prunectl knows about layer classes is not here but in the layer table,
:mod:`prunectl.core.layers`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

T = TypeVar("T")


class Registered:
    """Base of registered extension classes: the name the registry gave the class."""

    registered_name: ClassVar[str] = ""


class Registry(Generic[T]):
    """A small name -> class registry for extension points (criteria, schedules, readers).

    The CLI builds its ``click.Choice`` lists from ``names()``, so a name is never
    typed twice.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Class decorator registering ``cls`` under ``name``."""

        def decorate(cls: Any) -> Any:
            self._items[name] = cls
            cls.registered_name = name
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> type[T]:
        from prunectl.core.errors import OptionError

        try:
            return self._items[name]
        except KeyError:
            raise OptionError(f"unknown {self.kind} (known: {', '.join(self.names())}). Received: {name!r}") from None
