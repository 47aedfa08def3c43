"""Choose which layers a step touches, by regular expressions on layer names."""

from __future__ import annotations

from collections.abc import Sequence

from prunectl.core.errors import SelectionError, shown_names
from prunectl.core.io.modelfile import WeightEntry
from prunectl.core.options import compile_patterns

# Layer names an error lists before it says how many more there are: enough to spot a naming scheme.
SHOWN_LAYERS = 20


def shown_layers(names: Sequence[str], limit: int = SHOWN_LAYERS) -> str:
    """Layer names joined for an error message: the first ``limit``, then how many more (``none`` for none)."""
    return shown_names(names, limit)


def select_names(names: Sequence[str], include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    """Return the ``names`` that match an include pattern (or all, with none) and no exclude pattern.

    Patterns are searched (``re.search``) in the names, which are the candidate
    layers of a step (the prunable ones); each pattern must match one of them.

    Raises:
        OptionError: a pattern is not a valid regular expression.
        SelectionError: a pattern matches no candidate layer.
    """
    includes = compile_patterns(include, "include")
    excludes = compile_patterns(exclude, "exclude")
    for option, raw, compiled in (("--include", include, includes), ("--exclude", exclude, excludes)):
        for text, pattern in zip(raw, compiled):
            if not any(pattern.search(n) for n in names):
                raise SelectionError(
                    f"{option} pattern matches no prunable layer (prunable layers: {shown_layers(names)}). "
                    f"Received: {text!r}"
                )
    return [
        n
        for n in names
        if (not includes or any(p.search(n) for p in includes)) and not any(p.search(n) for p in excludes)
    ]


def select_weights(
    entries: Sequence[WeightEntry], include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[WeightEntry]:
    """Return the prunable entries whose layer :func:`select_names` chooses.

    Raises:
        OptionError: a pattern is not a valid regular expression.
        SelectionError: a pattern matches no prunable layer, or nothing is left.
    """
    prunable = [e for e in entries if e.prunable]
    if not prunable:
        held = dict.fromkeys(f"{e.layer} ({e.class_name or 'unknown class'})" for e in entries)
        raise SelectionError(
            "nothing to prune: no weight of the model is of a kind weight pruning zeroes (kernels, embeddings); "
            f"a custom layer needs a registered LayerSpec. Received: weights in {shown_layers(list(held), 8)}"
        )
    names = list(dict.fromkeys(e.layer for e in prunable))
    chosen_names = set(select_names(names, include, exclude))
    chosen = [e for e in prunable if e.layer in chosen_names]
    if not chosen:
        raise SelectionError(
            f"no prunable weights selected (prunable layers: {shown_layers(names)}). "
            f"Received: include={list(include)}, exclude={list(exclude)}"
        )
    return chosen
