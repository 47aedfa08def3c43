"""Option vocabularies and value checks shared by the library and the CLI.

This module imports nothing heavy (no numpy, h5py or TensorFlow), so the CLI can
build its choices and checks from it while ``prunectl --help`` stays instant.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from prunectl.core.errors import OptionError

SCOPES = ("layer", "global")
# How a weight step scores weights: magnitude needs no data; the others read calibration data (--data).
WEIGHT_CRITERIA = ("magnitude", "wanda", "sparsegpt")
# How structural pruning meets a normalization over the channels (LayerNormalization and kin). Leaving it
# whole recovered more accuracy after fine-tuning at equal params (benchmarks/layernorm.py).
NORM_MODES = ("boundary", "joint")
DEFAULT_NORMS = "boundary"
ENGINES = ("auto", "file", "keras")
# --compression names; core/io/compress.py POLICIES says what each writes (deflate chosen per tensor, all loadable by
# stock Keras). "fast" is the default: faster than plain zlib 1; "strong" is the smallest file, several times slower.
COMPRESSIONS = ("none", "fast", "balanced", "strong")
DEFAULT_COMPRESSION = "fast"


def _bound(number: float) -> str:
    """A range bound as people write it: ``1``, ``0.5``, ``4294967295`` (not ``4.29497e+09``)."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def check_number(
    value,
    field: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> float:
    """Return ``value`` as float (int with ``integer``) if it is a finite number within the given bounds.

    The one check every number option goes through, so that NaN and infinity,
    which pass any comparison-based range check, are refused everywhere, and every
    range error reads the same: ``{field} must be a finite number in [0, 1).
    Received: {field}=1.5``, where the CLI shows ``{field}`` as the flag or
    environment variable the value came from.

    Args:
        value: the value given.
        field: the option's field name, shown as ``{field}`` (the CLI shows its flag).
        low, high: the bounds, or None for none.
        low_open, high_open: exclude the bound itself.
        integer: the value must also be a whole number (not a bool); it is returned as int.

    Returns:
        The value as a float, or an int with ``integer``.

    Raises:
        OptionError: a value that is not a number, NaN, infinite, out of bounds, or not whole where it must be.

    Example:
        >>> check_number(0.5, "initial_sparsity", 0, 1, high_open=True)
        0.5
        >>> check_number(0.0, "round_to", 1, integer=True)
        Traceback (most recent call last):
        ...
        prunectl.core.errors.OptionError: round_to must be an integer >= 1. Received: round_to=0.0
    """
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    below = low is not None and (number <= low if low_open else number < low)
    above = high is not None and (number >= high if high_open else number > high)
    whole = not integer or (math.isfinite(number) and number == int(number))
    if not math.isfinite(number) or below or above or not whole:
        if low is not None and high is not None:
            where = f"in {'(' if low_open else '['}{_bound(low)}, {_bound(high)}{')' if high_open else ']'}"
        elif low is not None:
            where = f"{'>' if low_open else '>='} {_bound(low)}"
        elif high is not None:
            where = f"{'<' if high_open else '<='} {_bound(high)}"
        else:
            where = ""
        kind = "an integer" if integer else "a finite number"
        raise OptionError(
            f"{{{field}}} must be {kind}{' ' + where if where else ''}. Received: {{{field}}}={value}", field
        )
    return int(number) if integer else number


# numpy's and Python's generators, which keras.utils.set_random_seed seeds, take seeds in [0, 2**32).
SEED_MAX = 2**32 - 1


def validate_seed(seed) -> int:
    """Return ``seed`` if it is an integer in [0, 2**32 - 1].

    Raises:
        OptionError: a negative, too large or non-integer seed.
    """
    return int(check_number(seed, "seed", 0, SEED_MAX, integer=True))


def validate_threshold(threshold: float, field: str = "threshold") -> float:
    """Return ``threshold`` as float if it is a finite, non-negative number.

    Args:
        threshold: the value given.
        field: the option it was given as, named in the error.

    Raises:
        OptionError: for NaN, infinity or a negative value.
    """
    return check_number(threshold, field, 0)


def validate_sparsity(sparsity: float, field: str = "sparsity") -> float:
    """Return ``sparsity`` as float if it lies in [0, 1).

    Args:
        sparsity: the value given.
        field: the option it was given as (``initial_sparsity``), named in the error.

    Raises:
        OptionError: for NaN or a value outside [0, 1).
    """
    return check_number(sparsity, field, 0, 1, high_open=True)


def compile_patterns(patterns: Sequence[str], option: str) -> list[re.Pattern]:
    """Compile layer-name patterns.

    Args:
        patterns: the regular expressions.
        option: the field they were given as (``include``; the CLI shows its flag), or a
            description (``a layer override``).

    Raises:
        OptionError: a pattern is not a valid regular expression.
    """
    fields = (option,) if option.isidentifier() else ()
    shown = "{" + option + "}" if fields else option
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise OptionError(
                f"{shown} is not a valid regular expression ({exc}). Received: {pattern!r}", *fields
            ) from None
    return compiled


def validate_neuron_ratio(ratio: float) -> float:
    """Return ``ratio`` as float if it lies in (0, 1).

    Raises:
        OptionError: for NaN or a value outside (0, 1).
    """
    return check_number(ratio, "neuron_ratio", 0, 1, low_open=True, high_open=True)


def validate_neuron_threshold(threshold: float) -> float:
    """Return ``threshold`` as float if it is a finite, non-negative number.

    Raises:
        OptionError: for NaN, infinity or a negative value.
    """
    return check_number(threshold, "neuron_threshold", 0)


# A group always keeps this fraction of its units (and at least one). It is a safety net against a layer
# collapsing, not the mechanism of the global cut (LAMP scores do that): 0.1 leaves every ratio up to 0.9
# reachable and only binds where a score ranks most of a layer below everything else.
DEFAULT_MIN_KEEP = 0.1


def validate_min_keep(min_keep: float) -> float:
    """Return ``min_keep`` as float if it lies in [0, 1).

    Raises:
        OptionError: for NaN or a value outside [0, 1).
    """
    return check_number(min_keep, "min_keep", 0, 1, high_open=True)


def residual_norms(norms: str | None, prune_residual: bool) -> str:
    """The norms mode of a structural step: pruning the residual stream prunes through its normalizations.

    A transformer's residual stream passes through a LayerNormalization in every block, so
    ``prune_residual`` would remove nothing if they were boundaries: it implies ``"joint"``.

    Args:
        norms: one of :data:`NORM_MODES`, or None for the default (``"joint"`` with ``prune_residual``).
        prune_residual: whether the residual stream's width is pruned.

    Returns:
        The norms mode.

    Raises:
        OptionError: ``prune_residual`` is not a bool, or it is given with ``norms="boundary"``.
    """
    if not isinstance(prune_residual, bool):
        raise OptionError(f"prune_residual must be true or false. Received: prune_residual={prune_residual!r}")
    if norms is None:
        return "joint" if prune_residual else DEFAULT_NORMS
    if prune_residual and norms == "boundary":
        raise OptionError(
            "{prune_residual} prunes through the normalizations on the residual stream, so it needs "
            "{norms} joint (its default). Received: {norms} boundary",
            "prune_residual",
            "norms",
        )
    return norms


def validate_round_to(round_to: int) -> int:
    """Return ``round_to`` if it is an integer >= 1.

    Raises:
        OptionError: for a value below 1.
    """
    return int(check_number(round_to, "round_to", 1, integer=True))


# Sensitivity analysis (``prunectl sensitivity``).
DEFAULT_SPARSITIES = (0.5, 0.7, 0.9, 0.95)


def parse_neuron_ratios(text: str) -> tuple[float, ...]:
    """Parse a comma-separated list of unit ratios, each in (0, 1), into a sorted tuple without duplicates.

    Example:
        >>> parse_neuron_ratios("0.5,0.25")
        (0.25, 0.5)

    Raises:
        OptionError: an empty list, an item that is not a number, or one outside (0, 1).
    """
    message = "{neuron_ratios} must be a comma-separated list of numbers in (0, 1). Received: "
    items = [item.strip() for item in str(text).split(",")]
    values = []
    for item in items:
        try:
            values.append(float(item))
        except ValueError:
            raise OptionError(
                message + (f"{item!r} in {text!r}" if any(items) else repr(text)), "neuron_ratios"
            ) from None
    return tuple(sorted({check_number(v, "neuron_ratios", 0, 1, low_open=True, high_open=True) for v in values}))


def parse_sparsities(text: str) -> tuple[float, ...]:
    """Parse a comma-separated list of sparsities, each in [0, 1), into a sorted tuple without duplicates.

    Example:
        >>> parse_sparsities("0.9, 0.5,0.9")
        (0.5, 0.9)

    Raises:
        OptionError: an empty list, an item that is not a number, or one outside [0, 1).
    """
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise OptionError(
            f"{{sparsities}} must be a comma-separated list of numbers in [0, 1). Received: {text!r}", "sparsities"
        )
    values = []
    for item in items:
        try:
            values.append(float(item))
        except ValueError:
            raise OptionError(
                f"{{sparsities}} must be a comma-separated list of numbers in [0, 1). Received: {item!r} in {text!r}",
                "sparsities",
            ) from None
    return tuple(sorted({validate_sparsity(v, "sparsities") for v in values}))


def validate_budget(budget: float) -> float:
    """Return ``budget`` as float if it is a finite number >= 0.

    Raises:
        OptionError: for NaN, infinity or a negative value.
    """
    return check_number(budget, "budget", 0)


def check_reader(data, reader) -> None:
    """Check data-reader options against the data file's type.

    Args:
        data: the data file path.
        reader: ``(name, value)`` pairs (``x_key``, ``y_key``, ``label_col``).

    Raises:
        OptionError: array keys given for a ``.csv`` file, or a label column for another file.
    """
    keys = dict(reader)
    if not str(data).lower().endswith(".csv") and keys.get("label_col") is not None:
        raise OptionError(
            f"{{label_col}} applies to .csv data; .npz and .h5 data take {{x_key}} and {{y_key}}. Received: {data}",
            "label_col",
            "x_key",
            "y_key",
        )
    if str(data).lower().endswith(".csv") and (keys.get("x_key") or keys.get("y_key")):
        raise OptionError(
            f"{{x_key}} and {{y_key}} apply to .npz and .h5 data; a .csv takes {{label_col}}. Received: {data}",
            "x_key",
            "y_key",
            "label_col",
        )


def check_stdout(as_json: bool, markdown) -> None:
    """Only one report may go to stdout.

    Raises:
        OptionError: a JSON report and a Markdown report (``markdown="-"``) both on stdout.
    """
    if as_json and markdown is not None and str(markdown) == "-":
        raise OptionError(
            "{as_json} and {markdown} - both write to stdout; give {markdown} a file. Received: {as_json} {markdown} -",
            "as_json",
            "markdown",
        )
