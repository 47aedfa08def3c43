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
# How structural pruning meets a normalization over the channels (LayerNormalization and kin). Leaving it
# whole recovered more accuracy after fine-tuning at equal params (benchmarks/layernorm.py).
NORM_MODES = ("boundary", "joint")
DEFAULT_NORMS = "boundary"
ENGINES = ("auto", "file", "keras")
# gzip levels. "fast" (1) is the default: on the README's VGG16 benchmark it removes the most bytes per
# second of compression; "balanced" is 6% smaller for 1.7x the time, "strong" 10% smaller for 38x.
COMPRESSION_LEVELS = {"none": 0, "fast": 1, "balanced": 4, "strong": 9}
DEFAULT_COMPRESSION = "fast"


def _finite_non_negative(value: float, name: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise OptionError(f"{name} must be a finite number >= 0. Received: {name}={value}")
    return number


def check_number(
    value,
    field: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as float if it is a finite number within the given bounds.

    The one check every float option goes through, so that NaN and infinity,
    which pass any comparison-based range check, are refused everywhere.

    Args:
        value: the value given.
        field: the option's field name, shown as ``{field}`` (the CLI shows its flag).
        low, high: the bounds, or None for none.
        low_open, high_open: exclude the bound itself.

    Returns:
        The value as a float.

    Raises:
        OptionError: a value that is not a number, NaN, infinite, or out of bounds.

    Example:
        >>> check_number(0.5, "initial_sparsity", 0, 1, high_open=True)
        0.5
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    below = low is not None and (number <= low if low_open else number < low)
    above = high is not None and (number >= high if high_open else number > high)
    if not math.isfinite(number) or below or above:
        if low is not None and high is not None:
            where = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            where = f"{'>' if low_open else '>='} {low:g}"
        elif high is not None:
            where = f"{'<' if high_open else '<='} {high:g}"
        else:
            where = ""
        raise OptionError(
            f"{{{field}}} must be a finite number{' ' + where if where else ''}. Received: {{{field}}}={value}", field
        )
    return number


# numpy's and Python's generators, which keras.utils.set_random_seed seeds, take seeds in [0, 2**32).
SEED_MAX = 2**32 - 1


def validate_seed(seed) -> int:
    """Return ``seed`` if it is an integer in [0, 2**32 - 1].

    Raises:
        OptionError: a negative, too large or non-integer seed.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise OptionError(f"{{seed}} must be an integer in [0, {SEED_MAX}]. Received: {{seed}}={seed}", "seed")
    return seed


def validate_threshold(threshold: float) -> float:
    """Return ``threshold`` as float if it is a finite, non-negative number.

    Raises:
        OptionError: for NaN, infinity or a negative value.
    """
    return _finite_non_negative(threshold, "threshold")


def validate_sparsity(sparsity: float) -> float:
    """Return ``sparsity`` as float if it lies in [0, 1).

    Raises:
        OptionError: for NaN or a value outside [0, 1).
    """
    return _fraction(sparsity, "sparsity")


def _fraction(value, name: str) -> float:
    """``value`` as float if it lies in [0, 1), else an OptionError naming ``name``."""
    number = float(value)
    if not (0.0 <= number < 1.0):  # also rejects NaN
        raise OptionError(f"{name} must be in [0, 1). Received: {name}={value}")
    return number


def compile_patterns(patterns: Sequence[str], option: str) -> list[re.Pattern]:
    """Compile layer-name patterns.

    Raises:
        OptionError: a pattern is not a valid regular expression.
    """
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise OptionError(f"{option} is not a valid regular expression ({exc}). Received: {pattern!r}") from None
    return compiled


def validate_neuron_ratio(ratio: float) -> float:
    """Return ``ratio`` as float if it lies in (0, 1).

    Raises:
        OptionError: for NaN or a value outside (0, 1).
    """
    value = float(ratio)
    if not (0.0 < value < 1.0):  # also rejects NaN
        raise OptionError(f"neuron_ratio must be in (0, 1). Received: neuron_ratio={ratio}")
    return value


def validate_neuron_threshold(threshold: float) -> float:
    """Return ``threshold`` as float if it is a finite, non-negative number.

    Raises:
        OptionError: for NaN, infinity or a negative value.
    """
    return _finite_non_negative(threshold, "neuron_threshold")


# A group always keeps this fraction of its units (and at least one). It is a safety net against a layer
# collapsing, not the mechanism of the global cut (LAMP scores do that): 0.1 leaves every ratio up to 0.9
# reachable and only binds where a score ranks most of a layer below everything else.
DEFAULT_MIN_KEEP = 0.1


def validate_min_keep(min_keep: float) -> float:
    """Return ``min_keep`` as float if it lies in [0, 1).

    Raises:
        OptionError: for NaN or a value outside [0, 1).
    """
    return _fraction(min_keep, "min_keep")


def validate_round_to(round_to: int) -> int:
    """Return ``round_to`` if it is an integer >= 1.

    Raises:
        OptionError: for a value below 1.
    """
    if int(round_to) != round_to or round_to < 1:
        raise OptionError(f"round_to must be an integer >= 1. Received: round_to={round_to}")
    return int(round_to)


# Sensitivity analysis (``prunectl sensitivity``).
DEFAULT_SPARSITIES = (0.5, 0.7, 0.9, 0.95)


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
        raise OptionError(f"sparsities must be a comma-separated list of numbers in [0, 1). Received: {text!r}")
    values = []
    for item in items:
        try:
            values.append(float(item))
        except ValueError:
            raise OptionError(
                f"sparsities must be a comma-separated list of numbers in [0, 1). Received: {item!r} in {text!r}"
            ) from None
    return tuple(sorted({validate_sparsity(v) for v in values}))


def validate_budget(budget: float) -> float:
    """Return ``budget`` as float if it is a finite number >= 0.

    Raises:
        OptionError: for NaN, infinity or a negative value.
    """
    return _finite_non_negative(budget, "budget")


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
