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
import textwrap

import click
from click.core import ParameterSource

from prunectl import __version__
from prunectl.cli import checks, render
from prunectl.core.errors import OptionError, PrunectlError, Terminated, first_line
from prunectl.core.io.atomic import remove_leftovers
from prunectl.core.run.gates import GATES


def _exit_codes() -> str:
    """The exit codes and environment variables, for ``prunectl --help`` (the gates named from their registry)."""
    gates = ", ".join(f"--{name}" for name in GATES.names())
    failed = textwrap.fill(
        "3  a quality gate failed (the outputs are written): " + gates,
        78,  # click indents the epilog by two columns: 80 in all
        initial_indent="  ",
        subsequent_indent="     ",
        break_on_hyphens=False,  # never split a flag name
    )
    return f"""\b
Exit codes:
  0  success
  1  error (bad model file, bad report, output not writable)
  2  usage error (bad option, value or combination)
{failed}
  130  interrupted (Ctrl-C); 143  terminated (SIGTERM): no temporary file is
       left

\b
Every option can also come from the environment: PRUNECTL_<COMMAND>_<OPTION>,
e.g. PRUNECTL_PRUNE_SPARSITY=0.8 or PRUNECTL_REPORT_MIN_SPARSITY=0.8.
Options given on the command line win over the environment."""


def _command_ctx(ctx: click.Context) -> click.Context | None:
    """The running subcommand's context (kept in ``ctx.meta`` by :class:`_CommandContext`), if it was made."""
    return ctx.meta.get(_COMMAND_CTX)


def _envvar(ctx: click.Context, param: click.Parameter) -> str | None:
    """The environment variable ``param``'s value came from, or None when it came from elsewhere."""
    if ctx.get_parameter_source(param.name) != ParameterSource.ENVIRONMENT:
        return None
    names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
    if isinstance(param, click.Option) and param.allow_from_autoenv and ctx.auto_envvar_prefix:
        names.append(f"{ctx.auto_envvar_prefix}_{param.name.upper()}")
    return next((name for name in names if os.environ.get(name)), None)


def _flag_namer(group: click.Group, ctx: click.Context):
    """Name a library field as the user gave it: the running command's flag (``neuron_ratio`` ->
    ``--neuron-ratio``), the ``PRUNECTL_*`` variable its value came from, or the recipe key that set it."""
    from prunectl.cli.recipe import RECIPE_SOURCES

    sub = _command_ctx(ctx)
    command = sub.command if sub else group.get_command(ctx, ctx.invoked_subcommand or "")
    flags = checks.flags(command)
    params = {p.name: p for p in (command.params if command else ())}
    recipe = ctx.meta.get(RECIPE_SOURCES, {})

    def name(field: str) -> str:
        variable = _envvar(sub, params[field]) if sub is not None and field in params else None
        return variable or recipe.get(field) or flags.get(field, "--" + field.replace("_", "-"))

    return name


def _from_environment(exc: click.BadParameter) -> click.BadParameter:
    """``exc`` naming the ``PRUNECTL_*`` variable its value came from (and the flag it sets), when it did.

    ``Invalid value for PRUNECTL_PRUNE_SPARSITY (--sparsity): ... Received: '1.5'``: the variable as the
    user wrote it, and its text as given, not as a flag and the value click converted it to.
    """
    ctx, param = exc.ctx, exc.param
    variable = _envvar(ctx, param) if ctx is not None and param is not None and param.name else None
    if variable is None:
        return exc
    message = exc.message.rsplit(" Received: ", 1)[0].rstrip()
    message = message if message.endswith(".") else message + "."
    shown = f"{variable} ({max(param.opts, key=len)})" if isinstance(param, click.Option) else variable
    return click.BadParameter(f"{message} Received: {os.environ[variable]!r}", ctx, param, param_hint=shown)


_COMMAND_CTX = "prunectl.command_ctx"


class _CommandContext(click.Context):
    """A subcommand's context that leaves itself in ``meta`` (shared with the group's), so that the group,
    translating an error once click has closed that context, can still tell where each option's value came from."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.meta[_COMMAND_CTX] = self


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
        except click.BadParameter as exc:
            raise _from_environment(exc) from None
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
    epilog=_exit_codes(),
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "PRUNECTL"},
)
@click.version_option(__version__, "--version", prog_name="prunectl")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Show TensorFlow's logs and tracebacks of internal errors (also after COMMAND).",
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on stderr but errors (also after COMMAND).")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Prune saved Keras 3 models: remove neurons and filters, zero small weights, fine-tune, report sparsity.

    Structural pruning removes whole units and filters, so the model gets
    smaller and faster; weight pruning zeroes the smallest weights, so the
    compressed file gets smaller; fine-tuning recovers the accuracy lost.
    Run "prunectl COMMAND --help" for a command's options and examples.

    \b
    Examples:
      prunectl prune model.h5 --threshold 0.01
      prunectl prune model.keras --sparsity 0.8 --scope global -o small.keras
      prunectl prune model.keras --neuron-ratio 0.5 --finetune-epochs 4 \\
          --data train.npz --val-data test.npz
      prunectl report model.pruned.h5
      prunectl export model.pruned.keras --format litert --benchmark
    """
    # TensorFlow is silenced (or not) when the command starts (help.Command), once its own -v is known too.
    ctx.ensure_object(dict).update(verbose=verbose, quiet=quiet)


def _register() -> None:
    from prunectl.cli.export import export
    from prunectl.cli.prune import prune
    from prunectl.cli.report import report
    from prunectl.cli.sensitivity import sensitivity

    for command in (prune, report, sensitivity, export):
        command.context_class = _CommandContext
        cli.add_command(command)


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
