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
        figure, axes = pyplot.subplots(figsize=(6, 4))
        epochs = np.arange(1, len(history["loss"]) + 1)
        for key, label in (("loss", "training"), ("val_loss", "validation")):
            if key in history:
                axes.plot(epochs, history[key], marker="o", label=label)
        axes.set(xlabel="epoch", ylabel="loss", title="Fine-tuning loss")
        axes.legend()
        written.append(_save(pyplot, figure, folder / "loss.png"))
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


def _save(pyplot, figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return str(path)
