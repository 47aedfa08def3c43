"""Turn a library value check into a click callback, so a bad value exits 2 with the check's message."""

from __future__ import annotations

import click

from prunectl.core.errors import OptionError
from prunectl.core.options import compile_patterns


def checked(validate):
    """A click callback running ``validate`` on a given value; its OptionError becomes click.BadParameter."""

    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            return validate(value)
        except OptionError as exc:
            raise click.BadParameter(exc.render(lambda field: "--" + field.replace("_", "-")), ctx, param) from None

    return callback


def patterns(ctx, param, value):
    """A click callback checking a (multiple) layer-pattern option's regular expressions."""
    try:
        compile_patterns(value, f"--{param.name}")
    except OptionError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    return value
