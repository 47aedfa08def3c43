"""Help a person can read: options listed in named sections, and the options every command shares.

An option joins a section where it is declared (:func:`section` wraps its click
decorators), so a new option, or a new gate from the GATES registry, lands in
its section without a second list to keep in step. :class:`Command` writes the
sections in :data:`ORDER`, and decides, once every option is parsed, whether
TensorFlow's logging is silenced: ``-v``/``-q`` count before the command's name
(``prunectl -v prune``) and after it (``prunectl prune m.h5 -v``) alike.
"""

from __future__ import annotations

import click

#: The sections' order in ``--help``; ``General`` also holds ``-h/--help``.
ORDER = (
    "Export",
    "Weight pruning",
    "Structural pruning",
    "Search",
    "Trials",
    "Comparison",
    "Fine-tuning",
    "Data",
    "Quality gates",
    "Recipes",
    "Output",
    "General",
)
GENERAL = "General"
_ATTRIBUTE = "help_section"


def section(title: str, *options):
    """A decorator adding ``options`` (``click.option(...)`` decorators) to a command, filed under ``title``.

    Args:
        title: the section's heading in ``--help``, one of :data:`ORDER`.
        *options: click option decorators, in the order they are listed.

    Raises:
        ValueError: ``title`` is not one of :data:`ORDER`.
    """
    if title not in ORDER:
        raise ValueError(f"unknown help section {title!r}; known: {', '.join(ORDER)}. Received: {title!r}")

    def decorate(command):
        for option in reversed(options):
            command = option(command)
            params = command.params if isinstance(command, click.Command) else command.__click_params__
            setattr(params[-1], _ATTRIBUTE, title)
        return command

    return decorate


def section_of(param: click.Parameter) -> str | None:
    """The section ``param`` was filed under by :func:`section`, or None."""
    return getattr(param, _ATTRIBUTE, None)


def general_options(quiet_help: str):
    """``-q/--quiet`` and ``-v/--verbose``, in the General section; ``quiet_help`` says what -q keeps."""
    return section(
        GENERAL,
        click.option("-q", "--quiet", is_flag=True, help=quiet_help),
        click.option("-v", "--verbose", is_flag=True, help="Show TensorFlow's logs and tracebacks of internal errors."),
    )


class Command(click.Command):
    """A command whose ``--help`` lists its options by section and which honours ``-v``/``-q`` on either side."""

    def get_help_option(self, ctx: click.Context):
        option = super().get_help_option(ctx)
        if option is not None:
            setattr(option, _ATTRIBUTE, GENERAL)
        return option

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if record is not None:
                # Unfiled options still show, under a heading tests look for: none should be there.
                sections.setdefault(section_of(param) or "Other", []).append(record)
        titles = [t for t in ORDER if t in sections] + [t for t in sections if t not in ORDER]
        for title in titles:
            with formatter.section(title):
                formatter.write_dl(sections[title])

    def invoke(self, ctx: click.Context):
        shared = ctx.ensure_object(dict)
        # A flag given before the command's name (the group's) or after it counts; the command's
        # function never sees -v, and -q reaches it as its `quiet` parameter either way.
        own = bool(ctx.params.pop("verbose", False))  # popped first: `or` would skip it after a group -v
        shared["verbose"] = bool(shared.get("verbose")) or own
        if "quiet" in ctx.params:
            ctx.params["quiet"] = bool(shared.get("quiet")) or ctx.params["quiet"]
        if not shared["verbose"]:
            # Here, not in the group's callback: only now is the command's own -v known, and still
            # nothing has imported TensorFlow (option parsing never does).
            from prunectl.cli.quiet import silence_tensorflow

            silence_tensorflow()
        return super().invoke(ctx)
