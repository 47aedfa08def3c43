"""Choose which layers' weights a step touches, by regular expressions on layer names."""

from __future__ import annotations

from typing import Sequence

from prunectl.core.errors import SelectionError
from prunectl.core.modelfile import WeightEntry
from prunectl.core.options import compile_patterns


def select_weights(
    entries: Sequence[WeightEntry], include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[WeightEntry]:
    """Return the prunable entries whose layer matches an include and no exclude pattern.

    Patterns are searched (``re.search``) in layer names. With no include pattern
    every prunable layer is included.

    Raises:
        OptionError: a pattern is not a valid regular expression.
        SelectionError: a pattern matches no prunable layer, or nothing is left.
    """
    prunable = [e for e in entries if e.prunable]
    names = list(dict.fromkeys(e.layer for e in prunable))
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    includes = compile_patterns(include, "--include")
    excludes = compile_patterns(exclude, "--exclude")
    for option, raw, compiled in (("--include", include, includes), ("--exclude", exclude, excludes)):
        for text, pattern in zip(raw, compiled):
            if not any(pattern.search(n) for n in names):
                raise SelectionError(
                    f"{option} pattern matches no prunable layer (prunable layers: {shown or 'none'}). "
                    f"Received: {text!r}"
                )
    chosen = [
        e for e in prunable
        if (not includes or any(p.search(e.layer) for p in includes))
        and not any(p.search(e.layer) for p in excludes)
    ]
    if not chosen:
        raise SelectionError(
            f"no prunable weights selected (prunable layers: {shown or 'none'}). "
            f"Received: include={list(include)}, exclude={list(exclude)}"
        )
    return chosen
