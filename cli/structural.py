"""The structural-pruning options of ``prunectl prune`` and their checks."""

from __future__ import annotations

from typing import Any

import click

from prunectl.cli.checks import checked as _checked
from prunectl.cli.help import section
from prunectl.core.options import (
    DEFAULT_MIN_KEEP,
    DEFAULT_NORMS,
    NORM_MODES,
    validate_min_keep,
    validate_neuron_ratio,
    validate_neuron_threshold,
    validate_round_to,
)
from prunectl.core.structure.criteria import CRITERIA

_OPTIONS = (
    click.option(
        "--neuron-criterion",
        type=click.Choice(CRITERIA.names()),
        default=None,
        help="How units are scored: l1/l2 weight norms (no data), activation (mean |activation|) or "
        "apoz (1 - fraction of zero activations), both on --data.  [default: l1]",
    ),
    click.option(
        "--neuron-threshold",
        type=float,
        callback=_checked(validate_neuron_threshold),
        help="Remove whole units and filters scoring below T.",
    ),
    click.option(
        "--neuron-ratio",
        type=float,
        callback=_checked(validate_neuron_ratio),
        help="Remove the fraction R in (0, 1) of units, counting each layer's units (a unit shared by coupled "
        "layers counts once per layer): in every layer, or (--scope global) over the model, ranked by "
        "scale-free LAMP scores so that layers of different sizes compare.",
    ),
    click.option(
        "--min-keep",
        type=float,
        default=None,
        callback=_checked(validate_min_keep),
        help=f"Every layer keeps at least the fraction F in [0, 1) of its units (and at least one), whatever "
        f"the ratio, scope or threshold.  [default: {DEFAULT_MIN_KEEP}]",
    ),
    click.option(
        "--round-to",
        type=int,
        default=None,
        callback=_checked(validate_round_to),
        help="Keep unit counts multiples of N (fast kernels); at least one unit is always kept.",
    ),
    click.option(
        "--norms",
        type=click.Choice(NORM_MODES),
        default=None,
        help="LayerNormalization and other normalizations over the channels: leave them whole (boundary) or "
        "prune through them (joint; the plan notes how their outputs change, measured on --data).  "
        f"[default: {DEFAULT_NORMS}]",
    ),
    click.option(
        "--prune-residual",
        is_flag=True,
        default=None,
        help="Prune a transformer's residual stream too: its width, coupled across every block (Embedding "
        "outputs, attention outputs, every Add and LayerNormalization on it). Implies --norms joint. "
        "Without it the stream is left whole and only attention heads and feed-forward units go.",
    ),
    click.option("--dry-run", is_flag=True, help="Print the structural plan; write no model and no report."),
    click.option(
        "--benchmark",
        is_flag=True,
        help="Time the original and the pruned model on one batch of 256 (CPU), into the report.",
    ),
)


def structural_options(command):
    """Add the structural-pruning options to a click command, in their own help section."""
    return section("Structural pruning", *_OPTIONS)(command)


def structural_option(name: str):
    """One of prune's structural options by its flag (``"--round-to"``), to declare it on another command."""
    for option in _OPTIONS:
        decorated: Any = option(lambda: None)
        if name in decorated.__click_params__[0].opts:
            return option
    raise KeyError(name)
