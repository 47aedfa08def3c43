"""Bad input to `prunectl` fails the same way everywhere.

Every failure prints exactly one line, ``Error: <what was wrong>. Received: <what
was given>``, on stderr, nothing on stdout, no traceback, and exits 1 (a bad
file, report or output path) or 2 (a bad option or option value). It writes
nothing: the folder holding the input is compared byte for byte before and after
each run, so a new output, report, temporary file or a changed input all fail.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import invoke

from prunectl.cli.main import cli

FORMATS = [".h5", ".keras"]
MODELS = ["sequential.h5", "sequential.keras", "functional.h5", "functional.keras"]
# Prunable layers of the fixture models, in the order error messages list them.
PRUNABLE = {"sequential": "d1, d2", "functional": "conv, fc, head"}
THRESHOLD = ("--threshold", "0.1")


# --- helpers ---------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` (hidden ones included) with its content hash."""
    return {
        str(p.relative_to(folder)): "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


def received(path) -> str:
    return f"Received: {str(path)!r}"


def assert_error(result, code: int, line: str | None = None, contains=(), pattern: str | None = None) -> str:
    """Assert ``result`` is a clean failure: one ``Error:`` line on stderr, ``code``, no traceback."""
    shown = f"exit {result.exit_code}\n--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    assert "Traceback" not in result.output, shown
    assert result.exc_info is not None and result.exc_info[0] is SystemExit, (
        f"escaped exception {result.exception!r}\n{shown}"
    )
    assert result.stdout == "", shown
    lines = result.stderr.splitlines()
    assert len(lines) == 1, shown
    assert lines[0].startswith("Error: "), shown
    if line is not None:
        assert lines[0] == line, shown
    for text in contains:
        assert text in lines[0], shown
    if pattern is not None:
        assert re.fullmatch(pattern, lines[0]), shown
    assert result.exit_code == code, shown
    return lines[0]


def fails(
    folder: Path, *args, code: int = 1, line: str | None = None, contains=(), pattern: str | None = None, input=None
) -> str:
    """Run ``prunectl *args``, assert a clean failure and that nothing under ``folder`` changed."""
    before = snapshot(folder)
    result = invoke(*args, input=input)
    shown = assert_error(result, code, line, contains, pattern)
    assert snapshot(folder) == before, f"files created, changed or left behind after: {shown}"
    return shown


def stem(name: str) -> str:
    return name.split(".")[0]


# --- bad model files -------------------------------------------------------------------------
# Each maker turns the private model folder into one bad input and returns its path and the
# expected error: an exact line, or a pattern where part of the wording comes from h5py.


def exact(line: str) -> dict:
    return {"line": line}


def invalid(path: Path, what: str) -> dict:
    """The line for a damaged or crafted file: ``Error: <path> is not a valid Keras model: <what>``."""
    return exact(f"Error: {path} is not a valid Keras model: {what}")


def invalid_matching(path: Path, what: str) -> dict:
    """As :func:`invalid`, where ``what`` is a pattern (part of the wording comes from h5py)."""
    return {"pattern": rf"Error: {re.escape(str(path))} is not a valid Keras model: {what}"}


def matching(prefix: str, path: Path) -> dict:
    """A line that starts with ``prefix``, then h5py's reason in parentheses, then what was received."""
    return {"pattern": rf"{prefix} \(.+\)\. {re.escape(received(path))}"}


def _missing(folder, fmt):
    path = folder / f"missing{fmt}"
    return path, exact(f"Error: model file not found. {received(path)}")


def _directory(folder, fmt):
    path = folder / f"folder{fmt}"
    path.mkdir()
    (path / "saved_model.pb").write_bytes(b"\0")
    return path, exact(f"Error: model path is a directory, not a file. {received(path)}")


def _truncated(folder, fmt):
    path = folder / f"truncated{fmt}"
    data = (folder / f"functional{fmt}").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    if fmt == ".h5":
        return path, invalid_matching(path, r"(not a readable HDF5 file|cannot read weight \S+) \(.+\)")
    return path, invalid(path, "not a zip archive, as a .keras file is")


def _random_bytes(folder, fmt):
    path = folder / f"random{fmt}"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    if fmt == ".h5":
        return path, invalid_matching(path, r"not a readable HDF5 file \(.+\)")
    return path, invalid(path, "not a zip archive, as a .keras file is")


def _h5_renamed_keras(folder, fmt):
    """A legacy HDF5 model renamed to .keras, a common mistake: a .keras that is not a zip."""
    path = folder / "renamed.keras"
    shutil.copy(folder / "sequential.h5", path)
    return path, invalid(path, "an HDF5 file, not a zip archive (rename it .h5)")


def weights_only_error(path: Path) -> dict:
    return exact(
        "Error: file holds only weights, not a model: save it with model.save(...), "
        f"not model.save_weights(...). {received(path)}"
    )


def _legacy_weights_only(folder, fmt):
    """Keras 2's ``save_weights('w.h5')`` layout: ``layer_names`` at the root, no ``model_config``."""
    import h5py

    path = folder / "legacy_weights.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"d1"]
        group = f.create_group("d1")
        group.attrs["weight_names"] = [b"d1/kernel:0"]
        group["d1/kernel:0"] = np.ones((2, 2), "float32")
    return path, weights_only_error(path)


def _plain_hdf5(folder, fmt):
    import h5py

    path = folder / "data.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(4)
    return path, exact(f"Error: HDF5 file is not a saved Keras model (no model_config). {received(path)}")


def _zip_without_weights(folder, fmt):
    path = folder / "no_weights.keras"
    with zipfile.ZipFile(folder / "sequential.keras") as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            if name != "model.weights.h5":
                dst.writestr(name, src.read(name))
    return path, invalid(path, "archive lacks model.weights.h5")


def _unsupported_suffix(folder, fmt):
    path = folder / "model.txt"
    shutil.copy(folder / "sequential.h5", path)
    return path, exact(f"Error: unsupported model file type; expected .h5, .hdf5 or .keras. {received(path)}")


BAD_MODELS = [
    pytest.param(_missing, ".h5", id="missing-h5"),
    pytest.param(_missing, ".keras", id="missing-keras"),
    pytest.param(_directory, ".h5", id="directory-h5"),
    pytest.param(_directory, ".keras", id="directory-keras"),
    # A TF SavedModel folder, what Keras 2's model.save("name") wrote.
    pytest.param(_directory, "", id="directory-no-suffix"),
    pytest.param(_truncated, ".h5", id="truncated-h5"),
    pytest.param(_truncated, ".keras", id="truncated-keras"),
    pytest.param(_random_bytes, ".h5", id="random-bytes-h5"),
    pytest.param(_random_bytes, ".keras", id="random-bytes-keras"),
    pytest.param(_h5_renamed_keras, ".keras", id="keras-not-a-zip"),
    pytest.param(_legacy_weights_only, ".h5", id="legacy-weights-only-h5"),
    pytest.param(_plain_hdf5, ".h5", id="hdf5-not-a-model"),
    pytest.param(_zip_without_weights, ".keras", id="keras-zip-without-weights"),
]
COMMANDS = [
    pytest.param(lambda path: ("prune", path, *THRESHOLD), id="prune"),
    pytest.param(lambda path: ("report", path), id="report"),
    pytest.param(lambda path: ("report", path, "--json"), id="report-json"),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("make, fmt", BAD_MODELS)
def test_bad_model_file(models, make, fmt, command):
    path, expected = make(models, fmt)
    fails(models, *command(path), code=1, **expected)


@pytest.mark.parametrize("command", [pytest.param(COMMANDS[0].values[0], id="prune"), *COMMANDS[1:]])
def test_unsupported_model_suffix(models, command):
    path, expected = _unsupported_suffix(models, ".txt")
    fails(models, *command(path), code=1, **expected)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """A tiny model's weights saved with ``model.save_weights`` (Keras 3 needs ``.weights.h5``)."""
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
    path = tmp_path_factory.mktemp("weights") / "w.weights.h5"
    model.save_weights(path)
    return path


@pytest.mark.parametrize("command", COMMANDS)
def test_weights_only_h5(models, weights_file, command):
    path = models / "weights_only.h5"
    shutil.copy(weights_file, path)
    fails(models, *command(path), code=1, **weights_only_error(path))


def _corrupt_last_kernel(h5file: Path) -> None:
    """Rewrite the last model kernel gzip-chunked, then overwrite its chunk: the file opens, that read fails."""
    import h5py

    with h5py.File(h5file, "a") as f:
        names = []
        f.visititems(
            lambda n, o: (
                names.append(n) if isinstance(o, h5py.Dataset) and o.ndim >= 2 and "optimizer" not in n else None
            )
        )
        name = sorted(names)[-1]
        data, attrs = f[name][()], dict(f[name].attrs)
        del f[name]
        dataset = f.create_dataset(name, data=data, chunks=data.shape, compression="gzip")
        dataset.attrs.update(attrs)
        chunk = dataset.id.get_chunk_info(0)
    with open(h5file, "r+b") as raw:
        raw.seek(chunk.byte_offset)
        raw.write(b"\xff" * chunk.size)


def corrupt_weights(source: Path, path: Path) -> Path:
    """A copy of ``source`` at ``path`` whose last kernel cannot be read back."""
    if path.suffix == ".h5":
        shutil.copy(source, path)
        _corrupt_last_kernel(path)
        return path
    weights = path.with_name("weights.tmp.h5")
    with zipfile.ZipFile(source) as src:
        weights.write_bytes(src.read("model.weights.h5"))
        _corrupt_last_kernel(weights)
        with zipfile.ZipFile(path, "w") as dst:
            for name in src.namelist():
                dst.writestr(name, weights.read_bytes() if name == "model.weights.h5" else src.read(name))
    weights.unlink()
    return path


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(COMMANDS[0].values[0], id="prune-threshold"),
        pytest.param(lambda path: ("prune", path, "--sparsity", "0.5", "--scope", "global"), id="prune-global"),
        *COMMANDS[1:],
    ],
)
@pytest.mark.parametrize("name", MODELS)
def test_unreadable_weight_data(models, name, command):
    """The file opens; reading one kernel fails part-way through the run, after output has begun."""
    path = corrupt_weights(models / name, models / f"corrupt{Path(name).suffix}")
    fails(
        models,
        *command(path),
        code=1,
        **invalid_matching(path, r"cannot read weight \S+/kernel \(.+\)"),
    )


@pytest.mark.parametrize("make, fmt", [(_missing, ".h5"), (_h5_renamed_keras, ".keras")])
def test_verbose_adds_no_traceback_for_bad_input(models, make, fmt):
    """-v shows tracebacks of faults in prunectl itself, never of a bad file."""
    path, expected = make(models, fmt)
    fails(models, "-v", "prune", path, *THRESHOLD, code=1, **expected)


def test_report_baseline_is_checked_too(models):
    path, expected = _random_bytes(models, ".h5")
    fails(models, "report", models / "sequential.h5", "--baseline", path, code=1, **expected)


# --- option values: usage errors, exit 2 -----------------------------------------------------


def _invalid(option: str, message: str) -> str:
    return f"Error: Invalid value for '{option}': {message}"


BAD_OPTIONS = [
    pytest.param(
        ["--threshold", "-0.1"],
        _invalid("--threshold", "--threshold must be a finite number >= 0. Received: --threshold=-0.1"),
        id="negative-threshold",
    ),
    pytest.param(
        ["--threshold=-1e-3"],
        _invalid("--threshold", "--threshold must be a finite number >= 0. Received: --threshold=-0.001"),
        id="negative-threshold-equals",
    ),
    pytest.param(
        ["--threshold", "nan"],
        _invalid("--threshold", "--threshold must be a finite number >= 0. Received: --threshold=nan"),
        id="nan-threshold",
    ),
    pytest.param(
        ["--threshold", "inf"],
        _invalid("--threshold", "--threshold must be a finite number >= 0. Received: --threshold=inf"),
        id="inf-threshold",
    ),
    pytest.param(
        ["--threshold", "abc"], _invalid("--threshold", "'abc' is not a valid float."), id="threshold-not-a-number"
    ),
    pytest.param(
        ["--sparsity", "1"],
        _invalid("--sparsity", "--sparsity must be a finite number in [0, 1). Received: --sparsity=1.0"),
        id="sparsity-1",
    ),
    pytest.param(
        ["--sparsity", "1.2"],
        _invalid("--sparsity", "--sparsity must be a finite number in [0, 1). Received: --sparsity=1.2"),
        id="sparsity-1.2",
    ),
    pytest.param(
        ["--sparsity", "-0.1"],
        _invalid("--sparsity", "--sparsity must be a finite number in [0, 1). Received: --sparsity=-0.1"),
        id="negative-sparsity",
    ),
    pytest.param(
        ["--sparsity", "nan"],
        _invalid("--sparsity", "--sparsity must be a finite number in [0, 1). Received: --sparsity=nan"),
        id="nan-sparsity",
    ),
    pytest.param(
        ["--threshold", "0.1", "--sparsity", "0.5"],
        "Error: give only one of --threshold and --sparsity. Received: --threshold 0.1 --sparsity 0.5",
        id="threshold-and-sparsity",
    ),
    pytest.param(
        [],
        "Error: give a pruning step: --threshold, --sparsity, --neuron-threshold or --neuron-ratio "
        "(or a --recipe). Received: none",
        id="neither",
    ),
    pytest.param(
        [*THRESHOLD, "--scope", "row"], _invalid("--scope", "'row' is not one of 'layer', 'global'."), id="bad-scope"
    ),
    pytest.param(
        [*THRESHOLD, "--engine", "torch"],
        _invalid("--engine", "'torch' is not one of 'auto', 'file', 'keras'."),
        id="bad-engine",
    ),
    pytest.param(
        [*THRESHOLD, "--compression", "max"],
        _invalid("--compression", "'max' is not one of 'none', 'fast', 'balanced', 'strong'."),
        id="bad-compression",
    ),
    pytest.param([*THRESHOLD, "--xyzzy"], "Error: No such option '--xyzzy'.", id="unknown-option"),
]


@pytest.mark.parametrize("args, line", BAD_OPTIONS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_option_value(models, fmt, args, line):
    fails(models, "prune", models / f"sequential{fmt}", *args, code=2, line=line)


def test_missing_model_argument(models):
    fails(models, "prune", *THRESHOLD, code=2, line="Error: Missing argument 'MODEL'.")


@pytest.mark.parametrize("command", ["prune", "report"])
def test_option_errors_come_before_file_errors(models, command):
    """A usage error is reported as such even when the model is missing too."""
    option = "--threshold=-1" if command == "prune" else "--bogus"
    shown = fails(models, command, models / "missing.h5", option, code=2)
    assert "not found" not in shown


# --- layer selection -------------------------------------------------------------------------


@pytest.fixture(params=MODELS + ["functional.deflated.keras"])
def model(request, models) -> Path:
    """Each fixture model; ``*.deflated.keras`` has its weights member deflated (read via a temp copy)."""
    path = models / request.param
    if request.param.endswith(".deflated.keras"):
        with (
            zipfile.ZipFile(models / "functional.keras") as src,
            zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst,
        ):
            for name in src.namelist():
                dst.writestr(name, src.read(name))
    return path


def test_include_matching_nothing(model):
    layers = PRUNABLE[stem(model.name)]
    fails(
        model.parent,
        "prune",
        model,
        *THRESHOLD,
        "--include",
        "^nomatch$",
        code=1,
        line=f"Error: --include pattern matches no prunable layer (prunable layers: {layers}). Received: '^nomatch$'",
    )


def test_exclude_matching_nothing(model):
    layers = PRUNABLE[stem(model.name)]
    fails(
        model.parent,
        "prune",
        model,
        "--sparsity",
        "0.5",
        "--exclude",
        "nomatch",
        code=1,
        line=f"Error: --exclude pattern matches no prunable layer (prunable layers: {layers}). Received: 'nomatch'",
    )


def test_exclude_everything(model):
    layers = PRUNABLE[stem(model.name)]
    fails(
        model.parent,
        "prune",
        model,
        *THRESHOLD,
        "--exclude",
        ".",
        code=1,
        line=f"Error: no prunable weights selected (prunable layers: {layers}). Received: include=[], exclude=['.']",
    )


@pytest.mark.parametrize("option, pattern", [("--include", "("), ("--exclude", "[a-")])
def test_invalid_regex(model, option, pattern):
    fails(
        model.parent,
        "prune",
        model,
        *THRESHOLD,
        option,
        pattern,
        code=2,
        contains=(f"{option} is not a valid regular expression (", f"Received: {pattern!r}"),
    )


# --- output paths ----------------------------------------------------------------------------


OUTPUT_CASES = {
    # name: (extra args, expected line) built from (folder, input path)
    "output-in-missing-dir": lambda d, m: (
        ["-o", d / "nodir" / f"out{m.suffix}"],
        f"Error: output directory does not exist. {received(d / 'nodir' / f'out{m.suffix}')}",
    ),
    "report-in-missing-dir": lambda d, m: (
        ["-o", d / f"out{m.suffix}", "--report", d / "nodir" / "r.json"],
        f"Error: output directory does not exist. {received(d / 'nodir' / 'r.json')}",
    ),
    "output-is-a-directory": lambda d, m: (
        ["-o", _mkdir(d / f"out{m.suffix}")],
        f"Error: output path is a directory. {received(d / f'out{m.suffix}')}",
    ),
    "output-is-input": lambda d, m: (["-o", m], f"Error: output would overwrite the input model. {received(m)}"),
    "output-is-input-force": lambda d, m: (
        ["-o", m, "--force"],
        f"Error: output would overwrite the input model. {received(m)}",
    ),
    "output-is-input-other-spelling": lambda d, m: (
        ["-o", d / "." / m.name, "--force"],
        f"Error: output would overwrite the input model. {received(d / '.' / m.name)}",
    ),
    "report-is-input-force": lambda d, m: (
        ["-o", d / f"out{m.suffix}", "--report", m, "--force"],
        f"Error: output would overwrite the input model. {received(m)}",
    ),
    "report-is-output": lambda d, m: (
        ["-o", d / f"out{m.suffix}", "--report", d / f"out{m.suffix}"],
        f"Error: report path is the output model's path. {received(d / f'out{m.suffix}')}",
    ),
    "unsupported-output-suffix": lambda d, m: (
        ["-o", d / "out.txt"],
        f"Error: output must end in .h5, .hdf5 or .keras. {received(d / 'out.txt')}",
    ),
    "existing-default-output": lambda d, m: (
        [],
        f"Error: output file exists; pass --force to overwrite it. "
        f"{received(_touch(m.with_name(f'{m.stem}.pruned{m.suffix}')))}",
    ),
    "existing-output": lambda d, m: (
        ["-o", _touch(d / f"out{m.suffix}")],
        f"Error: output file exists; pass --force to overwrite it. {received(d / f'out{m.suffix}')}",
    ),
    "existing-report": lambda d, m: (
        ["-o", d / f"out{m.suffix}", "--report", _touch(d / "r.json")],
        f"Error: output file exists; pass --force to overwrite it. {received(d / 'r.json')}",
    ),
}


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _touch(path: Path) -> Path:
    path.write_bytes(b"an existing file that must stay as it is\n")
    return path


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
@pytest.mark.parametrize("name", MODELS)
def test_bad_output_path(models, name, case):
    args, line = OUTPUT_CASES[case](models, models / name)
    fails(models, "prune", models / name, *THRESHOLD, *args, code=1, line=line)


@pytest.mark.parametrize("name", MODELS)
def test_file_engine_cannot_convert(models, name):
    source = models / name
    output = models / ("out.keras" if source.suffix == ".h5" else "out.h5")
    fails(
        models,
        "prune",
        source,
        *THRESHOLD,
        "--engine",
        "file",
        "-o",
        output,
        code=2,
        line="Error: the file engine cannot convert between .h5 and .keras; use --engine keras or auto. "
        f"Received: {source.suffix} -> {output.suffix}",
    )


# --- `prunectl report` on things that are not reports ----------------------------------------


NOT_REPORTS = [
    pytest.param(
        "{}", "Error: JSON file is not a prunectl report (no schema_version). Received: {path!r}", id="empty-object"
    ),
    pytest.param(
        '[{"schema_version": 1}]',
        "Error: JSON file is not a prunectl report (no schema_version). Received: {path!r}",
        id="list",
    ),
    pytest.param(
        '{"name": "a keras config", "layers": []}',
        "Error: JSON file is not a prunectl report (no schema_version). Received: {path!r}",
        id="other-json",
    ),
    pytest.param(
        '{"schema_version": 99, "layers": []}',
        "Error: unsupported report schema_version (this prunectl reads 1). Received: schema_version=99",
        id="future-schema",
    ),
    pytest.param(
        "not json at all", "Error: report is not valid JSON (Expecting value). Received: {path!r}", id="not-json"
    ),
    pytest.param('{"schema_version": 1, "layers": [}', None, id="broken-json"),
    pytest.param('{"schema_version": 1, "layers": []}', None, id="schema-but-no-totals"),
]


@pytest.mark.parametrize("text, line", NOT_REPORTS)
@pytest.mark.parametrize("json_flag", [(), ("--json",)], ids=["table", "json"])
def test_report_of_a_json_that_is_not_a_report(models, text, line, json_flag):
    path = models / "notes.json"
    path.write_text(text, encoding="utf-8")
    if line is None:
        fails(
            models,
            "report",
            path,
            *json_flag,
            code=1,
            pattern=r"Error: (JSON file is not a prunectl report|"
            rf"report is not valid JSON) .*{re.escape(received(path))}",
        )
    else:
        fails(models, "report", path, *json_flag, code=1, line=line.format(path=str(path)))


def test_report_of_a_missing_json(models):
    path = models / "missing.report.json"
    fails(models, "report", path, code=1, line=f"Error: report file not found. {received(path)}")


def test_report_of_stdin_that_is_not_a_report(models):
    fails(
        models,
        "report",
        "-",
        code=1,
        input="hello\n",
        line="Error: report is not valid JSON (Expecting value). Received: '<stdin>'",
    )


# --- help --------------------------------------------------------------------------------------


COMMAND_PATHS = [pytest.param((), id="prunectl")] + [pytest.param((name,), id=name) for name in sorted(cli.commands)]


@pytest.mark.parametrize("path", COMMAND_PATHS)
def test_help_has_summary_and_examples(path):
    command = cli
    for name in path:
        command = command.commands[name]
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="prunectl", catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = (command.help or "").strip().split("\n\n")[0]
    assert summary and "\n" not in summary, f"help must open with a one-line summary: {command.help!r}"
    assert summary in " ".join(result.stdout.split()), result.stdout
    examples = result.stdout.split("Examples:", 1)
    assert len(examples) == 2, result.stdout
    first = examples[1].strip().splitlines()[0]
    assert first.startswith(" ".join(("prunectl", *path))), result.stdout


def test_help_lists_exit_codes():
    result = CliRunner().invoke(cli, ["--help"], prog_name="prunectl", catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Exit codes:" in result.stdout, result.stdout
    block = result.stdout.split("Exit codes:", 1)[1]
    for code, meaning in (("0", "success"), ("1", "error"), ("2", "usage error")):
        assert re.search(rf"^\s+{code}\s+{meaning}", block, re.MULTILINE), result.stdout


def test_help_is_listed_for_every_command():
    result = CliRunner().invoke(cli, ["--help"], prog_name="prunectl", catch_exceptions=False)
    for name in cli.commands:
        assert re.search(rf"^\s+{name}\s+\S", result.stdout, re.MULTILINE), result.stdout
