"""The loss figure: whole-number epoch ticks and a log-scale loss axis when the loss spans decades.

The figure objects are inspected (tick values, axis scale, labels); nothing is trained.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from prunectl.core.training.plots import loss_figure, write_plots  # noqa: E402


def _visible_ticks(axes) -> list[float]:
    axes.figure.canvas.draw()
    low, high = axes.get_xlim()
    return [float(t) for t in axes.get_xticks() if low <= t <= high]


@pytest.fixture
def close_figures():
    from matplotlib import pyplot

    yield
    pyplot.close("all")


@pytest.mark.parametrize("epochs", [1, 2, 3, 7, 12, 100])
def test_epoch_ticks_are_whole_numbers_within_the_run(epochs, close_figures):
    axes = loss_figure({"loss": list(np.linspace(1.0, 0.5, epochs))}).axes[0]
    ticks = _visible_ticks(axes)
    assert ticks, f"no epoch tick for {epochs} epochs"
    assert all(t == int(t) and 1 <= t <= epochs for t in ticks), ticks
    if epochs <= 7:  # a short run labels every epoch
        assert ticks == list(range(1, epochs + 1))


def test_loss_spanning_more_than_a_decade_is_drawn_on_a_log_scale(close_figures):
    axes = loss_figure({"loss": [2.0, 0.1, 0.05], "val_loss": [1.5, 0.2, 0.06]}).axes[0]
    assert axes.get_yscale() == "log"
    assert axes.get_ylabel() == "loss (log scale)"
    assert [line.get_label() for line in axes.get_lines()] == ["training", "validation"]


@pytest.mark.parametrize(
    "history",
    [
        {"loss": [0.3, 0.25, 0.2]},  # less than a decade
        {"loss": [0.3, 0.25], "val_loss": [0.04, 0.035]},  # both curves together span 0.3 / 0.035 < 10x
        {"loss": [5.0, -1.0, -2.0]},  # not all positive (a loss can be negative): no log scale
        {"loss": [float("nan")]},
    ],
)
def test_loss_within_a_decade_or_not_positive_stays_linear(history, close_figures):
    axes = loss_figure(history).axes[0]
    assert axes.get_yscale() == "linear"
    assert axes.get_ylabel() == "loss"


def test_validation_loss_counts_toward_the_span(close_figures):
    axes = loss_figure({"loss": [0.5, 0.4], "val_loss": [0.04, 0.03]}).axes[0]  # 0.5 / 0.03 > 10
    assert axes.get_yscale() == "log"


def test_write_plots_writes_the_loss_figure(tmp_path):
    written = write_plots(tmp_path, {"loss": [1.0, 0.5]}, {}, {})
    assert written == [str(tmp_path / "loss.png")]
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
