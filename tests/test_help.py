"""Help a person can read: options in sections, examples that work, 80 columns, -v/-q on either side."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from prunectl.cli import help as helpmod
from prunectl.cli.common import gate_options
from prunectl.cli.main import cli
from prunectl.core.run.gates import GATES, Gate

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
COMMANDS = sorted(cli.commands)
PATHS = [pytest.param((), id="prunectl")] + [pytest.param((name,), id=name) for name in COMMANDS]


def _help(*path: str, width: int = 80) -> str:
    result = CliRunner().invoke(
        cli, [*path, "--help"], prog_name="prunectl", env={"COLUMNS": str(width)}, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def _sections(text: str) -> dict[str, list[str]]:
    """The option flags listed under each ``Heading:`` of a command's help."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if re.fullmatch(r"[A-Z][\w -]*:", line):
            current = sections.setdefault(line[:-1], [])
        elif current is not None and re.match(r"  -", line):
            current.extend(re.findall(r"(?:^|, )(--?[\w-]+)", line.strip().split("  ")[0]))
    return sections


def _examples(text: str) -> list[str]:
    """The example command lines in a help text, continuation lines joined."""
    block = text.split("Examples:", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _pipeline(line: str) -> list[list[str]]:
    """The prunectl invocations of an example line (a pipe's other programs and redirections left out)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars="|>")
    lexer.whitespace_split = True
    runs, current, tokens = [], [], iter(lexer)
    for token in tokens:
        if token == "|":
            runs.append(current)
            current = []
        elif token.startswith(">"):
            next(tokens)  # the redirection's file
        else:
            current.append(token)
    return [run for run in [*runs, current] if run and run[0] == "prunectl"]


# --- sections --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_is_filed_in_a_named_section(name):
    command = cli.commands[name]
    unfiled = [p.name for p in command.params if isinstance(p, click.Option) and helpmod.section_of(p) is None]
    assert unfiled == []
    assert {helpmod.section_of(p) for p in command.params if isinstance(p, click.Option)} <= set(helpmod.ORDER)
    assert "Other:" not in _help(name)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_lists_each_option_once_under_its_section_in_order(name):
    command = cli.commands[name]
    listed = _sections(_help(name))
    titles = [t for t in listed if t not in ("Usage", "Examples")]
    assert titles == sorted(titles, key=helpmod.ORDER.index)
    flags = [flag for t in titles for flag in listed[t]]
    assert len(flags) == len(set(flags)), flags
    for param in command.params:
        if isinstance(param, click.Option):
            for flag in param.opts:
                assert flag in listed[helpmod.section_of(param)], (flag, listed)
    assert listed["General"][-2:] == ["-h", "--help"]


def test_prune_groups_its_options_as_a_pipeline():
    listed = _sections(_help("prune"))
    assert list(listed)[:8] == [
        "Weight pruning",
        "Structural pruning",
        "Fine-tuning",
        "Data",
        "Quality gates",
        "Recipes",
        "Output",
        "General",
    ]
    assert {"--sparsity", "--threshold", "--scope"} <= set(listed["Weight pruning"])
    assert {"--neuron-ratio", "--dry-run"} <= set(listed["Structural pruning"])
    assert {"--finetune-epochs", "--schedule"} <= set(listed["Fine-tuning"])
    assert {"--data", "--val-split"} <= set(listed["Data"])
    assert {"--recipe", "--recipe-out", "--step"} == set(listed["Recipes"])
    assert {"--output", "--json", "--markdown"} <= set(listed["Output"])
    assert {"--quiet", "--verbose", "--force"} <= set(listed["General"])


@pytest.mark.parametrize("name", ["prune", "report"])
def test_every_registered_gate_is_an_option_in_the_gates_section(name):
    listed = _sections(_help(name))
    assert listed["Quality gates"] == [f"--{gate}" for gate in GATES.names()]


def test_a_newly_registered_gate_lands_in_the_gates_section(monkeypatch):
    class Fresh(Gate):
        """The fresh value must stay under X."""

    monkeypatch.setitem(GATES._items, "max-fresh", Fresh)

    @click.command(cls=helpmod.Command)
    @gate_options
    def command(**limits):
        pass

    option = next(p for p in command.params if p.name == "max_fresh")
    assert helpmod.section_of(option) == "Quality gates"
    result = CliRunner().invoke(command, ["--help"], catch_exceptions=False)
    assert re.search(r"^Quality gates:\n(  .*\n)*  --max-fresh X", result.stdout, re.MULTILINE), result.stdout


def test_an_unknown_section_is_refused():
    with pytest.raises(ValueError, match="Received: 'Gates'"):
        helpmod.section("Gates", click.option("--x"))


# --- summaries, examples, width --------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("width", [80, 100])
def test_help_fits_the_terminal(path, width):
    long = [line for line in _help(*path, width=width).splitlines() if len(line) > width]
    assert long == []


def test_the_command_list_shows_each_summary_whole():
    listed = _help().split("Commands:\n", 1)[1].split("\n\n", 1)[0]
    for name in COMMANDS:
        summary = cli.commands[name].help.split("\n\n")[0]
        assert re.search(rf"^  {name} +{re.escape(summary)}$", listed, re.MULTILINE), listed
    assert "..." not in listed


def test_the_top_level_summary_names_every_kind_of_pruning():
    summary = cli.help.split("\n\n")[0].lower()
    for words in ("neurons", "filters", "small weights", "fine-tune"):
        assert words in summary


@pytest.mark.parametrize("path", PATHS)
def test_help_has_a_paragraph_and_names_the_environment(path):
    text = _help(*path)
    paragraphs = text.split("\n\n")
    assert len(paragraphs[2].split()) >= 20, paragraphs[2]  # usage, summary, then a paragraph of prose
    assert "PRUNECTL_" in text


@pytest.mark.parametrize("path", PATHS)
def test_every_example_parses(path):
    examples = _examples(_help(*path))
    assert len(examples) >= 3
    for line in examples:
        runs = _pipeline(line)
        assert runs, line
        for args in runs:
            command = cli.commands[args[1]]
            with command.make_context(args[1], args[2:]) as ctx:
                assert ctx.params, line


def test_example_pipelines_keep_quoted_pipes():
    assert _pipeline("prunectl sensitivity m.h5 --json | jq '.a | .b'") == [
        ["prunectl", "sensitivity", "m.h5", "--json"]
    ]
    assert _pipeline("prunectl prune m.h5 --markdown - >> s.md") == [["prunectl", "prune", "m.h5", "--markdown", "-"]]


# --- -v and -q on either side of the command -------------------------------------------------------


@pytest.fixture
def model(tmp_path):
    shutil.copy(SAMPLES / "digits_mlp.h5", tmp_path / "m.h5")
    return tmp_path / "m.h5"


@pytest.mark.parametrize(
    "before, after",
    [((), ()), (("-q",), ()), ((), ("-q",)), ((), ("--quiet",))],
    ids=["plain", "-q before", "-q after", "--quiet after"],
)
def test_quiet_counts_on_either_side_of_the_command(model, before, after):
    args = [*before, "prune", str(model), "--threshold", "0.01", *after]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (result.stderr == "") == bool(before or after), result.stderr
    assert model.with_name("m.pruned.h5").is_file()


@pytest.mark.parametrize("name", ["report", "sensitivity"])
def test_quiet_is_also_an_option_of(name):
    flags = [flag for p in cli.commands[name].params for flag in p.opts]
    assert "-q" in flags and "-v" in flags


def test_report_quiet_prints_only_errors(model):
    result = CliRunner().invoke(cli, ["report", str(model), "-q"], catch_exceptions=False)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    result = CliRunner().invoke(cli, ["report", str(model), "-q", "--min-sparsity", "0.5"], catch_exceptions=False)
    assert result.exit_code == 3
    assert result.stderr.startswith("Error: gate min-sparsity failed"), result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "before, after, verbose",
    [((), (), False), (("-v",), (), True), ((), ("-v",), True), ((), ("--verbose",), True)],
    ids=["plain", "-v before", "-v after", "--verbose after"],
)
def test_verbose_counts_on_either_side_of_the_command(model, monkeypatch, before, after, verbose):
    import prunectl.cli.quiet
    import prunectl.core.run.job

    silenced = []
    monkeypatch.setattr(prunectl.cli.quiet, "silence_tensorflow", lambda: silenced.append(True))

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(prunectl.core.run.job, "run_prune", broken)
    args = [*before, "prune", str(model), "--threshold", "0.01", *after]
    result = CliRunner().invoke(cli, args)
    assert silenced == ([] if verbose else [True])
    if verbose:  # -v shows an internal error's traceback: the exception comes out of the command
        assert isinstance(result.exception, RuntimeError), result.output
    else:
        assert result.exit_code == 1
        assert result.stderr.strip() == "Error: unexpected RuntimeError: boom (run with -v for the traceback)"


def test_verbose_and_quiet_are_never_read_from_a_recipe(model, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("verbose = true\n[[step]]\nthreshold = 0.01\n")
    result = CliRunner().invoke(cli, ["prune", str(model), "--recipe", str(recipe)])
    assert result.exit_code == 2
    assert "verbose" in result.stderr, result.stderr


# --- the real executable and the sample models ------------------------------------------------------


def _executable() -> str:
    found = Path(sys.executable).with_name("prunectl")
    return str(found) if found.exists() else shutil.which("prunectl") or "prunectl"


@pytest.mark.slow
def test_help_never_imports_tensorflow():
    for path in ([], ["prune"], ["report"], ["sensitivity"]):
        env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "COLUMNS": "80"}
        done = subprocess.run([_executable(), *path, "--help"], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
        assert "click" in imported  # the profile was taken
        assert not imported & {"tensorflow", "keras"}, path
        assert "Examples:" in done.stdout


@pytest.mark.slow
def test_the_examples_run_on_the_sample_models(tmp_path, monkeypatch):
    """Every example of every command, in the order shown, on the sample CNN and its digits data."""
    for suffix in (".h5", ".keras"):
        shutil.copy(SAMPLES / f"digits_cnn{suffix}", tmp_path / f"model{suffix}")
    for name, source in (("train", "digits_train"), ("test", "digits_test"), ("val", "digits_test")):
        shutil.copy(SAMPLES / f"{source}.npz", tmp_path / f"{name}.npz")
    import h5py

    with np.load(SAMPLES / "digits_train.npz") as data, h5py.File(tmp_path / "train.h5", "w") as out:
        out["x"], out["y"] = data["x"], data["y"]
    monkeypatch.chdir(tmp_path)
    ran = 0
    for path in (("prune",), ("report",), ("sensitivity",), ()):
        for line in _examples(_help(*path)):
            piped = None
            for args in _pipeline(line):
                # --force: the examples write the same default outputs more than once.
                extra = ["--force"] if "--force" in {f for p in cli.commands[args[1]].params for f in p.opts} else []
                result = CliRunner().invoke(cli, [*args[1:], *extra], input=piped)
                gated = any(f"--{gate}" in args for gate in GATES.names())
                # A gate's verdict depends on the model (and on training): exit 3 is the command working.
                if gated and result.exit_code == 3:
                    assert "Error: gate " in result.stderr, (line, result.output)
                else:
                    assert result.exit_code == 0, (line, result.output, result.exception)
                piped = result.stdout
                ran += 1
    assert ran >= 20
