"""What a person sees: the real ``prunectl`` executable run under a pseudo-terminal (see ``tests/terminal.py``).

One run per command family, at 80 columns: its plan, table, summary or error
lines reach the terminal, no value is cut short with ``…``, and the cursor is
shown again at the end. TensorFlow is allowed to log (``TF_CPP_MIN_LOG_LEVEL=0``)
so that a silencer that lets its noise through, or swallows prunectl's own
lines with it, shows here.
"""

from __future__ import annotations

import signal
import sys
import textwrap

import pytest
from terminal import run_in_terminal

pytestmark = pytest.mark.slow

# Lines TensorFlow writes to file descriptor 2 at import and first use, whatever TF_CPP_MIN_LOG_LEVEL says.
TF_NOISE = ("absl::InitializeLog", "cudart_stub", "oneDNN custom operations")


def _check(screen, code: int = 0, columns: int = 80) -> str:
    text = screen.text
    assert screen.code == code, text
    assert screen.cursor_shown, screen.raw[-300:]
    assert "…" not in text, text
    assert max(map(len, text.splitlines())) <= columns, text
    assert not any(noise in text for noise in TF_NOISE), text
    assert "Traceback" not in text, text
    return text


def test_weight_prune_shows_its_table_and_summary(samples):
    text = _check(run_in_terminal(["prune", "digits_cnn.h5", "--sparsity", "0.8"], cwd=samples))
    assert "Pruned digits_cnn.h5" in text
    assert "│ fc1 " in text and "80.0%" in text
    assert "Wrote digits_cnn.pruned.h5:" in text
    assert "Report: digits_cnn.pruned.report.json" in text


def test_conversion_to_keras_shows_its_table_and_summary(samples):
    args = ["prune", "digits_cnn.h5", "--sparsity", "0.8", "-o", "small.keras"]
    text = _check(run_in_terminal(args, cwd=samples))
    assert "│ conv2 " in text
    assert "Wrote small.keras:" in text and "engine keras" in text.replace("\n", " ")
    assert "Report: small.report.json" in text


def test_structural_dry_run_shows_its_plan(samples):
    text = _check(run_in_terminal(["prune", "digits_cnn.h5", "--neuron-ratio", "0.5", "--dry-run"], cwd=samples))
    assert "Structural plan for digits_cnn.h5" in text
    assert "32 -> 16" in text
    assert "Removed 50.0% of the" in text
    assert text.rstrip().endswith("Dry run: no model or report written.")
    assert not (samples / "digits_cnn.pruned.h5").exists()


def test_fine_tune_shows_the_plan_before_its_epochs_then_the_tables(samples):
    args = ["prune", "digits_cnn.h5", "--neuron-ratio", "0.5", "--sparsity", "0.5", "--finetune-epochs", "1"]
    args += ["--data", "digits_train.npz", "--val-data", "digits_test.npz", "-o", "ft.h5"]
    text = _check(run_in_terminal(args, cwd=samples))
    order = ["Structural plan for digits_cnn.h5", "epoch 1/1:", "Pruned digits_cnn.h5", "Wrote ft.h5:"]
    order += ["Evaluation on the validation data", "after finetuning", "Report: ft.report.json"]
    positions = [text.find(line) for line in order]
    assert -1 not in positions and positions == sorted(positions), text


def test_sensitivity_shows_its_tables(samples):
    args = ["sensitivity", "digits_mlp.h5", "--data", "digits_test.npz", "--sparsities", "0.5,0.9"]
    text = _check(run_in_terminal(args, cwd=samples))
    assert "when one layer alone is pruned" in text
    assert "│ fc2 " in text and "90%" in text
    assert "Fragile layers: drop at 90% sparsity" in text


def test_a_failing_gate_shows_its_error_line(samples):
    args = ["prune", "digits_mlp.h5", "--sparsity", "0.9", "--min-sparsity", "0.95"]
    text = _check(run_in_terminal(args, cwd=samples), code=3)
    assert "Report: digits_mlp.pruned.report.json" in text
    assert text.rstrip().splitlines()[-1] == "Error: gate min-sparsity failed: measured 0.9000, limit >= 0.9500"


def test_an_error_before_any_work_shows_no_bar(samples):
    screen = run_in_terminal(["prune", "missing.h5", "--sparsity", "0.5", "-o", "x.keras"], cwd=samples)
    text = _check(screen, code=1)
    assert text.strip().startswith("Error: ") and "missing.h5" in text
    assert "\x1b[?25l" not in screen.raw  # no live display was ever started


def test_tables_fit_60_columns_without_cutting_a_value(samples):
    screen = run_in_terminal(["prune", "digits_cnn.h5", "--sparsity", "0.8", "-o", "p.h5"], cwd=samples, columns=60)
    text = _check(screen, columns=60)
    for value in ("conv2", "131,072", "80.0%", "0.07539", "prunable total"):
        assert value in text, text
    screen = run_in_terminal(["report", "p.h5", "--baseline", "digits_cnn.h5"], cwd=samples, columns=60)
    assert "+80.2 pts" in _check(screen, columns=60)


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


@pytest.mark.parametrize("verbose", [False, True], ids=["silenced", "verbose"])
def test_output_survives_a_library_resetting_stderr_mid_run(samples, verbose):
    script = samples / "noisy.py"
    script.write_text(NOISY)
    args = [*(["-v"] if verbose else []), "prune", "digits_cnn.h5", "--sparsity", "0.8"]
    screen = run_in_terminal(args, cwd=samples, program=[sys.executable, str(script)])
    text = screen.text
    assert screen.code == 0 and screen.cursor_shown, text
    assert "Pruned digits_cnn.h5" in text and "Wrote digits_cnn.pruned.h5:" in text
    assert "Report: digits_cnn.pruned.report.json" in text
    # Silenced, fd 2 goes nowhere; with -v nothing is silenced.
    assert ("NOISE-FD" in text) is verbose and ("NOISE-PY" in text) is verbose, text
