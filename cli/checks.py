"""Turn a library value check into a click callback, so a bad value exits 2 with the check's message."""

from __future__ import annotations

import click

from prunectl.core.errors import OptionError
from prunectl.core.options import check_number, compile_patterns


def flags(command: click.Command | None) -> dict[str, str]:
    """Each option's parameter name and its flag as a user types it (``neuron_ratio`` -> ``--neuron-ratio``)."""
    params = command.params if command is not None else ()
    return {p.name: max(p.opts, key=len) for p in params if isinstance(p, click.Option) and p.name}


def flag_of(command: click.Command | None, field: str) -> str:
    """The flag of ``command`` that sets library field ``field`` (``--`` and the field in kebab case if none does)."""
    return flags(command).get(field, "--" + field.replace("_", "-"))


def bad_parameter(exc: OptionError, ctx: click.Context, param: click.Parameter) -> click.BadParameter:
    """``exc`` as click's error for ``param``, its fields named as the command's flags.

    The OptionError rides along as ``option_error``, so that a recipe can name its own keys instead.
    """
    error = click.BadParameter(exc.render(lambda field: flag_of(ctx.command, field)), ctx, param)
    error.option_error = exc  # type: ignore[attr-defined]
    return error


def checked(validate):
    """A click callback running ``validate`` on a given value; its OptionError becomes click.BadParameter."""

    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            return validate(value)
        except OptionError as exc:
            raise bad_parameter(exc, ctx, param) from None

    return callback


def number(field: str, low: float | None = None, high: float | None = None, **bounds):
    """A click callback checking a number option with :func:`~prunectl.core.options.check_number`.

    Used instead of ``click.FloatRange``, which lets NaN through and words its errors its own way.

    Example:
        >>> callback = number("val_split", 0, 1, low_open=True, high_open=True)
    """
    return checked(lambda value: check_number(value, field, low, high, **bounds))


def patterns(ctx, param, value):
    """A click callback checking a (multiple) layer-pattern option's regular expressions."""
    try:
        compile_patterns(value, param.name)
    except OptionError as exc:
        raise bad_parameter(exc, ctx, param) from None
    return value
