"""What a person sees: the real ``prunectl`` executable run under a pseudo-terminal (see ``tests/terminal.py``).

One run per command family, at 80 columns: its plan, table, summary or error
lines reach the terminal, no value is cut short with ``…``, and the cursor is
shown again at the end. TensorFlow is allowed to log (``TF_CPP_MIN_LOG_LEVEL=0``)
so that a silencer that lets its noise through, or swallows prunectl's own
lines with it, shows here.
"""

from __future__ import annotations

import io
import signal
import sys
import textwrap

import pytest
from conftest import run
from rich.console import Console
from terminal import run_in_terminal

from prunectl.cli import render
from prunectl.cli.render import fold_name

# Lines TensorFlow writes to file descriptor 2 at import and first use, whatever TF_CPP_MIN_LOG_LEVEL says.
TF_NOISE = ("absl::InitializeLog", "cudart_stub", "oneDNN custom operations")


def _check(screen, code: int = 0, columns: int = 80) -> str:
    text = screen.text
    assert screen.code == code, text
    assert screen.cursor_shown, screen.raw[-300:]
    assert "…" not in text, text
    # rich fits its lines to the width; an Error line is one line, however long (the terminal wraps it).
    assert all(len(line) <= columns for line in text.splitlines() if not line.startswith("Error: ")), text
    assert not any(noise in text for noise in TF_NOISE), text
    assert "Traceback" not in text, text
    return text


@pytest.mark.slow
def test_weight_prune_shows_its_table_and_summary(samples):
    text = _check(run_in_terminal(["prune", "digits_cnn.h5", "--sparsity", "0.8"], cwd=samples))
    assert "Pruned digits_cnn.h5" in text
    assert "│ fc1 " in text and "80.0%" in text
    assert "Wrote digits_cnn.pruned.h5:" in text
    assert "Report: digits_cnn.pruned.h5.report.json" in text


@pytest.mark.slow
def test_conversion_to_keras_shows_its_table_and_summary(samples):
    args = ["prune", "digits_cnn.h5", "--sparsity", "0.8", "-o", "small.keras"]
    text = _check(run_in_terminal(args, cwd=samples))
    assert "│ conv2 " in text
    assert "Wrote small.keras:" in text and "engine keras" in text.replace("\n", " ")
    assert "Report: small.keras.report.json" in text


@pytest.mark.slow
def test_structural_dry_run_shows_its_plan(samples):
    text = _check(run_in_terminal(["prune", "digits_cnn.h5", "--neuron-ratio", "0.5", "--dry-run"], cwd=samples))
    assert "Structural plan for digits_cnn.h5" in text
    assert "32 -> 16" in text
    assert "Removed 50.0% of the" in text
    assert text.rstrip().endswith("Dry run: no model or report written.")
    assert not (samples / "digits_cnn.pruned.h5").exists()


@pytest.mark.slow
def test_fine_tune_shows_the_plan_before_its_epochs_then_the_tables(samples):
    args = ["prune", "digits_cnn.h5", "--neuron-ratio", "0.5", "--sparsity", "0.5", "--finetune-epochs", "1"]
    args += ["--data", "digits_train.npz", "--val-data", "digits_test.npz", "-o", "ft.h5"]
    text = _check(run_in_terminal(args, cwd=samples))
    order = ["Structural plan for digits_cnn.h5", "epoch 1/1:", "Pruned digits_cnn.h5", "Wrote ft.h5:"]
    order += ["Evaluation on the validation data", "after finetuning", "Report: ft.h5.report.json"]
    positions = [text.find(line) for line in order]
    assert -1 not in positions and positions == sorted(positions), text


@pytest.mark.slow
def test_sensitivity_shows_its_tables(samples):
    args = ["sensitivity", "digits_mlp.h5", "--data", "digits_test.npz", "--sparsities", "0.5,0.9"]
    text = _check(run_in_terminal(args, cwd=samples))
    assert "when one layer alone is pruned" in text
    assert "│ fc2 " in text and "90%" in text
    assert "Fragile layers: drop at 90% sparsity" in text


@pytest.mark.slow
def test_a_failing_gate_shows_its_error_line(samples):
    args = ["prune", "digits_mlp.h5", "--sparsity", "0.9", "--min-sparsity", "0.95"]
    text = _check(run_in_terminal(args, cwd=samples), code=3)
    assert "Report: digits_mlp.pruned.h5.report.json" in text
    assert text.rstrip().splitlines()[-1] == "Error: gate min-sparsity failed: measured 0.9000, limit >= 0.9500"


@pytest.mark.slow
def test_an_error_before_any_work_shows_no_bar(samples):
    screen = run_in_terminal(["prune", "missing.h5", "--sparsity", "0.5", "-o", "x.keras"], cwd=samples)
    text = _check(screen, code=1)
    assert text.strip().startswith("Error: ") and "missing.h5" in text
    assert "\x1b[?25l" not in screen.raw  # no live display was ever started


@pytest.mark.slow
def test_an_error_after_the_bar_started_leaves_one_line_and_the_cursor_shown(samples):
    args = ["prune", "digits_mlp.h5", "--sparsity", "0.5", "--finetune-epochs", "1", "--data", "regression_train.npz"]
    text = _check(run_in_terminal(args, cwd=samples), code=1)
    assert text.strip().splitlines() == [
        "Error: training data x shape (800, 8) does not fit the model input (None, 8, 8, 1). Received: x shape (800, 8)"
    ]
    assert not (samples / "digits_mlp.pruned.h5").exists()


@pytest.mark.slow
def test_tables_fit_60_columns_without_cutting_a_value(samples):
    screen = run_in_terminal(["prune", "digits_cnn.h5", "--sparsity", "0.8", "-o", "p.h5"], cwd=samples, columns=60)
    text = _check(screen, columns=60)
    for value in ("conv2", "131,072", "80.0%", "0.07539", "prunable total"):
        assert value in text, text
    screen = run_in_terminal(["report", "p.h5", "--baseline", "digits_cnn.h5"], cwd=samples, columns=60)
    assert "+80.2 pts" in _check(screen, columns=60)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("send", "code", "line"),
    [("\x03", 130, "Error: interrupted."), (signal.SIGTERM, 143, "Error: terminated.")],
    ids=["ctrl-c", "sigterm"],
)
def test_a_signal_during_fine_tuning_exits_with_the_cursor_shown(samples, send, code, line):
    args = ["prune", "digits_mlp.h5", "--sparsity", "0.5", "--finetune-epochs", "40", "--data", "digits_train.npz"]
    screen = run_in_terminal(args, cwd=samples, send=("fine-tuning epoch", send))
    text = _check(screen, code=code)
    assert text.rstrip().splitlines()[-1] == line
    assert not (samples / "digits_mlp.pruned.h5").exists()


NOISY = textwrap.dedent(
    """
    import os, sys
    import prunectl.core.run.job as job
    from prunectl.cli.main import main

    write = job.prune_report

    def noisy(*args, **kwargs):
        # What TensorFlow and absl may do mid-run: restore the original stderr and write to fd 2.
        sys.stderr = sys.__stderr__
        print("NOISE-PY", file=sys.stderr, flush=True)
        os.write(2, b"NOISE-FD\\n")
        return write(*args, **kwargs)

    job.prune_report = noisy
    sys.argv[0] = "prunectl"
    main()
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True], ids=["silenced", "verbose"])
def test_output_survives_a_library_resetting_stderr_mid_run(samples, verbose):
    script = samples / "noisy.py"
    script.write_text(NOISY)
    args = [*(["-v"] if verbose else []), "prune", "digits_cnn.h5", "--sparsity", "0.8"]
    screen = run_in_terminal(args, cwd=samples, program=[sys.executable, str(script)])
    text = screen.text
    assert screen.code == 0 and screen.cursor_shown, text
    assert "Pruned digits_cnn.h5" in text and "Wrote digits_cnn.pruned.h5:" in text
    assert "Report: digits_cnn.pruned.h5.report.json" in text
    # Silenced, fd 2 goes nowhere; with -v nothing is silenced.
    assert ("NOISE-FD" in text) is verbose and ("NOISE-PY" in text) is verbose, text


# Table layout, without a terminal: what a person sees at 80 and 60 columns, for a real architecture's names.
RESNET_ROWS = [
    ("conv1_conv", "Conv2D", "kernel", [7, 7, 3, 64]),
    ("conv5_block3_3_conv", "Conv2D", "kernel", [1, 1, 512, 2048]),
    ("conv4_block6_2_conv", "Conv2D", "kernel", [3, 3, 256, 256]),
    ("conv5_block3_3_bn", "BatchNormalization", "moving_variance", [2048]),
    ("predictions", "Dense", "kernel", [2048, 1000]),
]


def _report(kind: str = "prune") -> dict:
    layers = []
    for layer, cls, weight, shape in RESNET_ROWS:
        count = 1
        for n in shape:
            count *= n
        layers.append(
            {
                "layer": layer,
                "class": cls,
                "weight": weight,
                "shape": shape,
                "count": count,
                "zeros": count // 2,
                "sparsity": 0.5,
                "pruned": cls != "BatchNormalization",
                "threshold": 0.012345,
            }
        )
    total = {"count": sum(r["count"] for r in layers), "zeros": sum(r["zeros"] for r in layers), "sparsity": 0.5}
    return {"kind": kind, "layers": layers, "totals": {"prunable": total, "all": total}}


def _plan() -> dict:
    rows = [
        {
            "layer": layer,
            "class_name": cls,
            "group": i,
            "units_before": shape[-1],
            "units_after": shape[-1] // 2,
            "params_before": 2_359_296,
            "params_after": 589_824,
            "flops_before": 115_605_504,
            "flops_after": 28_901_376,
        }
        for i, (layer, cls, _, shape) in enumerate(RESNET_ROWS)
    ]
    pair = {"before": 25_636_712, "after": 6_409_178, "removed": 0.75, "prunable": 26_560, "ratio": 4.0}
    return {
        "criterion": {"name": "l1"},
        "groups": [{"id": i, "frozen": i == 4} for i in range(5)],
        "layers": rows,
        "totals": {"units": pair, "params": pair, "flops": pair},
        "boundaries": [],
        "notes": [],
    }


def _rendered(width: int, build) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(build(console))
    return console.file.getvalue()


def _comparison(console):
    rows = [
        {"layer": r["layer"], "weight": r["weight"], "count": r["count"], "sparsity_before": 0.0, "sparsity_after": 0.5}
        for r in _report()["layers"]
    ]
    return render.comparison_table(rows, "resnet50.h5 -> resnet50.pruned.h5", console)


@pytest.mark.parametrize("width", [80, 60])
@pytest.mark.parametrize(
    "build",
    [
        lambda console: render.sparsity_table(_report(), "Pruned resnet50.h5", console),
        lambda console: render.sparsity_table(_report("report"), "resnet50.h5", console),
        lambda console: render.plan_table(_plan(), "Structural plan for resnet50.h5 (l1)", console),
        _comparison,
    ],
    ids=["prune", "report", "plan", "baseline"],
)
def test_tables_fit_the_width_and_cut_no_value(width, build):
    text = _rendered(width, build)
    assert "…" not in text, text
    assert max(map(len, text.splitlines())) <= width, text
    for layer, *_ in RESNET_ROWS:  # a long name may be folded after "_", never cut
        for part in layer.split("_"):
            assert part in text, (part, text)
    assert "2,359,296" in text or "1,048,576" in text, text


def test_a_roomy_table_keeps_every_column():
    text = _rendered(200, lambda console: render.sparsity_table(_report(), "Pruned resnet50.h5", console))
    header = next(line for line in text.splitlines() if "Layer" in line)
    for column in ("Class", "Weight", "Shape", "Params", "Zeros", "Sparsity", "Threshold"):
        assert column in header
    assert "conv5_block3_3_conv" in text and "1x1x512x2048" in text and "BatchNormalization" in text


@pytest.mark.parametrize(
    ("name", "width", "lines"),
    [
        ("conv5_block3_3_conv", 12, ["conv5_", "block3_3_", "conv"]),
        ("conv5_block3_3_conv", 40, ["conv5_block3_3_conv"]),
        ("averylongnamewithoutbreaks", 8, ["averylongnamewithoutbreaks"]),
        ("1x1x512x2048", 6, ["1x1x", "512x", "2048"]),
    ],
)
def test_fold_name_breaks_only_after_a_separator(name, width, lines):
    assert fold_name(name, width, "x" if "x512" in name else "_/.").split("\n") == lines


def test_off_a_terminal_lines_are_not_broken_at_120_columns(models):
    folder = models / ("a" * 70) / ("b" * 70)
    folder.mkdir(parents=True)
    output = folder / "sequential.pruned.h5"
    result = run("prune", models / "sequential.h5", "--sparsity", "0.5", "-o", output)
    wrote = [line for line in result.stderr.splitlines() if line.startswith("Wrote ")]
    assert len(wrote) == 1 and str(output) in wrote[0], result.stderr
    assert any(
        line.startswith("Report: ") and line.endswith("sequential.pruned.h5.report.json")
        for line in result.stderr.splitlines()
    ), result.stderr
