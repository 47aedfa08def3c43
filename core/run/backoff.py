"""Back off a per-layer choice until the layers, pruned together, stay within a drop budget.

A sensitivity run measures each layer (or group of units) alone; pruned together the
drops add up, and usually more than add. :func:`back_off` takes the per-layer picks,
measures the combined choice through a callback, and while the combined drop is over
the budget takes the most fragile pick back one notch. ``prunectl sensitivity --budget``
uses it for weights and for units; a search for a target can use it for any per-layer
setting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from prunectl.core.errors import OptionError
from prunectl.core.options import validate_budget


def metric_drop(metric: str, dense: float, value: float) -> float:
    """How much worse ``value`` is than ``dense``: accuracy (or any metric) lost, or loss gained."""
    return dense - value if metric != "loss" else value - dense


@dataclass(frozen=True)
class Option:
    """One tested setting of one layer.

    Attributes:
        setting: the sparsity or unit ratio, > 0 (0 is dense and never listed).
        drop: the measured drop when this layer alone is set so, all others dense.
        removed: what the setting removes (weights zeroed, params or FLOPs removed), > 0.
    """

    setting: float
    drop: float
    removed: float


@dataclass(frozen=True)
class BackOff:
    """What :func:`back_off` found.

    Attributes:
        choice: the final choice ``{key: setting}``; empty when no non-empty choice holds the budget.
        drop: the measured combined drop of ``choice`` (0.0 for an empty choice: the dense model,
            not measured).
        fits: whether a non-empty choice held the budget.
        checks: every combined measurement in order: ``{"choice", "drop"}``, and, where it was over
            the budget, ``"backed_off": {"key", "from", "to" (None for dense), "reason"}``.
    """

    choice: dict
    drop: float
    fits: bool
    checks: list = field(default_factory=list)


def fragility(option: Option) -> tuple[float, float]:
    """The rule that picks which layer to back off: its own drop per unit removed, then its own drop.

    The per-layer drop is the only evidence of each layer's share of the combined loss;
    dividing it by what the setting removes prefers to give back the pick that costs the
    most for the least compression, so the layers that carry most of the saving (large,
    robust ones) stay pruned longest. Ties (drops of 0 are common on small validation sets)
    fall to the larger drop, then (in :func:`back_off`) to the key that removes least.
    """
    return (option.drop / option.removed, option.drop)


def back_off(
    choice: Mapping[str, float],
    options: Mapping[str, Sequence[Option]],
    combined_drop: Callable[[dict[str, float]], float],
    budget: float,
) -> BackOff:
    """Measure ``choice`` together and back off its most fragile pick one notch until the drop is within budget.

    Each round measures ``combined_drop(current)``. If it is at most ``budget``, that choice is
    the answer. Otherwise the chosen key with the largest :func:`fragility` at its current setting
    (ties: the larger own drop, then the one removing less, then the first in ``choice``'s order)
    moves to its next lower setting in ``options`` whose own drop is within ``budget``, or leaves
    the choice (dense) when there is none, and the new choice is measured again. Every round takes
    one notch away, so it ends; an empty choice is never measured.

    Args:
        choice: the starting picks ``{key: setting}``; each setting must be one of ``options[key]``.
        options: each key's tested settings (any order; settings of 0 are ignored).
        combined_drop: measures a choice applied all at once and returns its drop (larger = worse);
            it must leave the model as it found it.
        budget: the largest combined drop allowed.

    Returns:
        The :class:`BackOff`: final choice, its combined drop, whether it fits, and every check made.

    Raises:
        OptionError: a negative budget, or a chosen setting that is not among its key's options.

    Example:
        >>> opts = {"a": [Option(0.5, 0.0, 50)], "b": [Option(0.5, 0.01, 5)]}
        >>> back_off({"a": 0.5, "b": 0.5}, opts, lambda c: 0.02 * len(c), 0.02).choice
        {'a': 0.5}
    """
    validate_budget(budget)
    ladders = {
        key: sorted((o for o in opts if o.setting > 0), key=lambda o: o.setting) for key, opts in options.items()
    }
    current = dict(choice)
    for key, setting in current.items():
        if not any(o.setting == setting for o in ladders.get(key, ())):
            raise OptionError(f"a chosen setting must be one of its tested options. Received: {key!r}={setting}")
    checks: list[dict] = []
    order = list(current)
    while current:
        drop = float(combined_drop(dict(current)))
        check: dict = {"choice": dict(current), "drop": drop}
        checks.append(check)
        if drop <= budget:
            return BackOff(dict(current), drop, True, checks)
        at = {key: next(o for o in ladders[key] if o.setting == current[key]) for key in current}
        key = max(current, key=lambda k: (*fragility(at[k]), -at[k].removed, -order.index(k)))
        lower = [o for o in ladders[key] if o.setting < current[key] and o.drop <= budget]
        to = lower[-1].setting if lower else None
        check["backed_off"] = {
            "key": key,
            "from": current[key],
            "to": to,
            "reason": f"most fragile: drop {at[key].drop:+.4f} alone at {at[key].setting:g} for "
            f"{at[key].removed:,.0f} removed ({at[key].drop / at[key].removed:+.3g} each)",
        }
        if to is None:
            del current[key]
        else:
            current[key] = to
    return BackOff({}, 0.0, False, checks)
