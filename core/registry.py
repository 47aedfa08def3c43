"""A small name -> class registry for extension points (criteria, schedules, readers, gates).

What prunectl knows about layer classes is not here but in the layer table,
:mod:`prunectl.core.layers`.
"""

from __future__ import annotations


class Registry:
    """A small name -> class registry for extension points (criteria, schedules, readers).

    The CLI builds its ``click.Choice`` lists from ``names()``, so a name is never
    typed twice.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, type] = {}

    def register(self, name: str):
        """Class decorator registering ``cls`` under ``name``."""

        def decorate(cls):
            self._items[name] = cls
            cls.registered_name = name
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> type:
        from prunectl.core.errors import OptionError

        try:
            return self._items[name]
        except KeyError:
            raise OptionError(
                f"unknown {self.kind} (known: {', '.join(self.names())}). Received: {name!r}"
            ) from None
