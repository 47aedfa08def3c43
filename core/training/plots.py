"""PNG figures of a fine-tuning run: loss curves and per-layer weight-magnitude histograms.

matplotlib is an optional extra (``pip install 'prunectl[plots]'``); it is
imported only here, with the non-interactive Agg backend.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np

from prunectl.core.errors import SetupError


def require_matplotlib() -> None:
    """Raise unless matplotlib can be imported.

    Raises:
        SetupError: matplotlib is not installed; the message names the extra.
    """
    if importlib.util.find_spec("matplotlib") is None:
        raise SetupError("--plots needs matplotlib: pip install 'prunectl[plots]'. Received: matplotlib not installed")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


def write_plots(folder: Path, history: dict, before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> list[str]:
    """Write ``loss.png`` (training and validation loss per epoch) and one ``weights_<layer>_<weight>.png``
    per pruned tensor (histograms of nonzero magnitudes before and after, log scale).

    Args:
        folder: created if missing; existing figures of the same name are replaced.
        history: Keras' per-epoch history (``loss``, ``val_loss``, ...).
        before, after: weight tensors by key (``layer/weight``) before pruning and after fine-tuning.

    Returns:
        The paths written.
    """
    pyplot = _pyplot()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if history.get("loss"):
        written.append(_save(pyplot, loss_figure(history), folder / "loss.png"))
    for key, dense in before.items():
        figure, axes = pyplot.subplots(figsize=(6, 4))
        values = [np.abs(dense[dense != 0]).ravel(), np.abs(after[key][after[key] != 0]).ravel()]
        low = min((v.min() for v in values if v.size), default=1e-8)
        high = max((v.max() for v in values if v.size), default=1.0)
        bins = np.geomspace(max(low, 1e-12), max(high, low * 1.0001), 60)
        for magnitudes, tensor, label in zip(values, (dense, after[key]), ("before", "after")):
            zeros = 100 * (1 - magnitudes.size / tensor.size)
            axes.hist(magnitudes, bins=bins, alpha=0.6, label=f"{label} ({zeros:.1f}% zeros)")
        axes.set(xscale="log", xlabel="|w| (nonzero)", ylabel="count", title=f"{key} weight magnitudes")
        axes.legend()
        written.append(_save(pyplot, figure, folder / f"weights_{_slug(key)}.png"))
    return written


#: A loss whose largest value is more than this many times its smallest is drawn on a log scale.
LOG_SCALE_SPAN = 10.0


def loss_figure(history: dict):
    """The loss curves of ``history`` as a matplotlib figure (the caller saves and closes it).

    Epochs are whole numbers on the x axis, however few there are. The y axis is logarithmic
    when every loss is positive and they span more than :data:`LOG_SCALE_SPAN` times (a
    fine-tuning run's first epoch often dwarfs the rest), and its label says so.

    Args:
        history: Keras' per-epoch history; ``loss`` (and ``val_loss`` if present) are drawn.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    from matplotlib.ticker import MaxNLocator

    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(6, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    names = (("loss", "training"), ("val_loss", "validation"))
    curves = [(history[key], label) for key, label in names if key in history]
    for values, label in curves:
        axes.plot(epochs, values, marker="o", label=label)
    values = np.concatenate([np.asarray(v, dtype=float) for v, _ in curves])
    values = values[np.isfinite(values)]
    log = values.size > 0 and values.min() > 0 and values.max() > LOG_SCALE_SPAN * values.min()
    if log:
        axes.set_yscale("log")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ylabel = "loss (log scale)" if log else "loss"
    axes.set(xlabel="epoch", ylabel=ylabel, title="Fine-tuning loss", xlim=_epoch_limits(epochs))
    axes.legend()
    return figure


def _epoch_limits(epochs: np.ndarray) -> tuple[float, float]:
    # A single epoch would otherwise get fractional ticks around it (0.96 ... 1.04) or none at all.
    return (0.5, max(1.5, epochs[-1] + 0.5))


def _save(pyplot, figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return str(path)
