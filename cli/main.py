"""The ``prunectl`` command group: global options, exit codes, error translation.

Exit codes (also in ``prunectl --help`` and the README):
  0  success
  1  error: a bad model file, a bad report, an output that cannot be written
  2  usage error: a bad option, option value or combination of options
  3  a quality gate failed (the outputs are written; the report lists every gate)
  130  interrupted (SIGINT, Ctrl-C): no temporary file is left; outputs already complete stay
  143  terminated (SIGTERM, e.g. a cancelled CI job or ``docker stop``): as for 130

Every error is one line, ``Error: ...``, on stderr; a traceback is shown only
with ``-v`` and only for a fault in prunectl itself.
"""

from __future__ import annotations

import os
import signal
import sys

import click

from prunectl import __version__
from prunectl.cli import render
from prunectl.core.errors import OptionError, PrunectlError, Terminated, first_line
from prunectl.core.io.atomic import remove_leftovers

EXIT_CODES = """\b
Exit codes:
  0  success
  1  error (bad model file, bad report, output not writable)
  2  usage error (bad option, value or combination)
  3  a quality gate failed (--min-sparsity, --max-params, --max-size, --max-accuracy-drop)
  130  interrupted (Ctrl-C); 143  terminated (SIGTERM): no temporary file is left

\b
Every option can also come from the environment: PRUNECTL_<COMMAND>_<OPTION>,
e.g. PRUNECTL_PRUNE_SPARSITY=0.8 or PRUNECTL_REPORT_MIN_SPARSITY=0.8."""


def _flag_namer(group: click.Group, ctx: click.Context):
    """Name a library field as the running command's flag (``neuron_ratio`` -> ``--neuron-ratio``)."""
    command = group.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
    flags = {p.name: max(p.opts, key=len) for p in (command.params if command else ()) if isinstance(p, click.Option)}

    def name(field: str) -> str:
        return flags.get(field, "--" + field.replace("_", "-"))

    return name


class PrunectlGroup(click.Group):
    """A group that translates library errors in one place and prints them as one line."""

    def invoke(self, ctx: click.Context):
        from prunectl.cli import signals

        try:
            return self._translated(ctx)
        except click.ClickException:
            # A signal can surface as another error (inside TensorFlow's import, a KeyboardInterrupt comes
            # out as an ImportError): after one, the run was interrupted, whatever it failed with.
            if signals.received():
                if signals.first() == signal.SIGINT:
                    raise _Interrupted from None
                raise Terminated(signals.first()) from None
            raise

    def _translated(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OptionError as exc:
            raise click.UsageError(exc.render(_flag_namer(self, ctx)), ctx) from None
        except PrunectlError as exc:
            raise click.ClickException(str(exc)) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            # Out of click's reach: it would print a blank line and turn it into Abort.
            raise _Interrupted from None
        except OSError as exc:
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            where = f" Received: {exc.filename!r}" if exc.filename else ""
            text = exc.strerror or first_line(exc)
            raise click.ClickException(f"{text.rstrip('.')}.{where}") from None
        except Exception as exc:
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            first = (str(exc).strip().splitlines() or [""])[0]
            first = first if len(first) <= 300 else first[:300] + "..."
            raise click.ClickException(
                f"unexpected {type(exc).__name__}: {first} (run with -v for the traceback)"
            ) from None

    def main(self, args=None, prog_name=None, **extra):
        extra.pop("standalone_mode", None)
        try:
            try:
                code = super().main(args, prog_name, standalone_mode=False, **extra)
            finally:
                remove_leftovers()  # what a signal kept from being removed where it was created
        except click.ClickException as exc:
            render.echo_error(f"Error: {exc.format_message()}")
            sys.exit(exc.exit_code)
        except click.Abort as exc:
            if isinstance(exc.__context__, KeyboardInterrupt):
                _stop("interrupted", 130)
            render.echo_error("Error: aborted.")
            sys.exit(1)
        except (KeyboardInterrupt, _Interrupted):
            _stop("interrupted", 130)
        except Terminated as exc:
            _stop("terminated", 128 + exc.signum)
        sys.exit(code if isinstance(code, int) else 0)


class _Interrupted(BaseException):
    """KeyboardInterrupt, carried past click (which would print a blank line and raise Abort)."""


def _stop(what: str, code: int) -> None:
    render.echo_error(f"Error: {what}.")
    sys.exit(code)


@click.group(
    cls=PrunectlGroup,
    epilog=EXIT_CODES,
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "PRUNECTL"},
)
@click.version_option(__version__, "--version", prog_name="prunectl")
@click.option("-v", "--verbose", is_flag=True, help="Show TensorFlow's logs and tracebacks of internal errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Prune saved Keras 3 models: zero small weights, write them compressed, report sparsity.

    \b
    Examples:
      prunectl prune model.h5 --threshold 0.01
      prunectl prune model.keras --sparsity 0.8 --scope global -o small.keras
      prunectl report model.pruned.h5
    """
    ctx.ensure_object(dict)["verbose"] = verbose
    if not verbose and ctx.invoked_subcommand is not None:
        from prunectl.cli.quiet import silence_tensorflow

        silence_tensorflow()


def _register() -> None:
    from prunectl.cli.prune import prune
    from prunectl.cli.report import report
    from prunectl.cli.sensitivity import sensitivity

    cli.add_command(prune)
    cli.add_command(report)
    cli.add_command(sensitivity)


_register()


def main() -> None:
    """Console-script entry point: installs the SIGINT/SIGTERM handlers, then runs the command."""
    from prunectl.cli import signals

    render.terminal_stream()  # pinned before TensorFlow or anything else can touch file descriptor 2
    signals.install()
    try:
        try:
            cli(prog_name="prunectl")
        except KeyboardInterrupt:  # the signal came after the command's own error handling, on the way out
            remove_leftovers()
            _stop("interrupted", 130)
        except Terminated as exc:
            remove_leftovers()
            _stop("terminated", 128 + exc.signum)
    except SystemExit as exc:
        if not signals.received():
            raise
        # Interrupted: everything of ours is cleaned up, so leave now. Python's own shutdown would run
        # TensorFlow's (seconds), and CPython kills itself with SIGINT at exit (status -2, not 130) once a
        # KeyboardInterrupt has escaped code run through PyRun_String, as TensorFlow's import does.
        signals.ignore()
        render.stop_live()  # the cursor shown again: os._exit runs no cleanup of rich's
        code = exc.code if isinstance(exc.code, int) else 1
        for stream in (sys.stdout, sys.stderr, render.terminal_stream()):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    finally:
        # Python restores the default handlers when it shuts down (TensorFlow's can take a second),
        # and a SIGTERM then would kill the process with no exit code of ours; ignored ones stay ignored.
        signals.ignore()
