"""Weight (unstructured) magnitude pruning of a saved model, through either engine.

The ``file`` engine reads weights with h5py and writes the pruned file directly;
it never imports TensorFlow and holds one tensor in memory at a time. The
``keras`` engine loads the model in Keras, prunes its variables and saves it; it
is needed to change format and by steps that run the model. Both use the same
:class:`WeightPruner`, so they produce the same weights.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from prunectl.core import masks
from prunectl.core.errors import OptionError
from prunectl.core.modelfile import ModelFile, WeightEntry, model_format, open_model_file
from prunectl.core.modelwriter import write_model
from prunectl.core.options import ENGINES, SCOPES, validate_sparsity, validate_threshold
from prunectl.core.selection import select_weights

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class WeightPruning:
    """One weight-pruning step: exactly one of ``threshold`` and ``sparsity``.

    Attributes:
        threshold: zero every selected weight with ``|w| < threshold``.
        sparsity: zero the fraction ``sparsity`` of smallest-magnitude weights.
        scope: ``"layer"`` (each weight tensor reaches ``sparsity``) or
            ``"global"`` (one magnitude cut over all selected tensors).
        include: layer-name patterns to prune (default: all prunable layers).
        exclude: layer-name patterns to leave alone.

    Raises:
        OptionError: on a missing, conflicting or out-of-range value.
    """

    threshold: float | None = None
    sparsity: float | None = None
    scope: str = "layer"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        if (self.threshold is None) == (self.sparsity is None):
            raise OptionError(
                "give exactly one of threshold and sparsity. "
                f"Received: threshold={self.threshold}, sparsity={self.sparsity}"
            )
        if self.threshold is not None:
            validate_threshold(self.threshold)
        if self.sparsity is not None:
            validate_sparsity(self.sparsity)
        if self.scope not in SCOPES:
            raise OptionError(f"scope must be one of {', '.join(SCOPES)}. Received: scope={self.scope!r}")

    def get_config(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class WeightResult:
    """What pruning did to one weight tensor."""

    key: str
    zeros_before: int
    zeros_after: int
    threshold: float


class WeightPruner:
    """Applies a :class:`WeightPruning` to the tensors of ``entries``.

    For global sparsity the cut is found up front by reading the tensors through
    ``read`` (twice, tensor by tensor), and its ties are allotted in entry order,
    so the result does not depend on the order tensors are later pruned in.

    Args:
        step: the pruning step.
        entries: the selected weights, in model order.
        read: returns a weight's current values.
    """

    def __init__(self, step: WeightPruning, entries: Sequence[WeightEntry],
                 read: Callable[[WeightEntry], np.ndarray]):
        self.step = step
        self.entries = {e.key: e for e in entries}
        self.results: dict[str, WeightResult] = {}
        self._cut: masks.Cut | None = None
        self._ties: dict[str, int] = {}
        if step.sparsity is not None and step.scope == "global":
            dtypes = {np.dtype(e.dtype) for e in entries}
            if len(dtypes) > 1:
                raise OptionError(
                    "global scope needs all selected weights in one dtype. "
                    f"Received: {sorted(str(d) for d in dtypes)}"
                )
            k = masks.zeros_for(step.sparsity, sum(e.size for e in entries))
            if k:
                tensors = lambda: (read(e) for e in entries)  # noqa: E731
                self._cut = masks.find_cut(tensors, k, dtypes.pop())
                shares = masks.allocate_ties(tensors, self._cut)
                self._ties = {e.key: n for e, n in zip(entries, shares)}

    def prune(self, entry: WeightEntry, tensor: np.ndarray) -> np.ndarray:
        """Prune ``tensor`` (the values of ``entry``) in place and return it."""
        if entry.key not in self.entries:
            return tensor
        tensor = np.asarray(tensor)
        before = masks.count_zeros(tensor)
        step = self.step
        if step.threshold is not None:
            masks.apply_threshold(tensor, step.threshold)
            used = step.threshold
        elif step.scope == "global":
            used = 0.0
            if self._cut is not None:
                masks.apply_cut(tensor, self._cut, self._ties[entry.key])
                used = self._cut.magnitude
        else:
            cut = masks.prune_to_sparsity([tensor], step.sparsity)
            used = cut.magnitude if cut else 0.0
        self.results[entry.key] = WeightResult(entry.key, before, masks.count_zeros(tensor), used)
        return tensor


@dataclass
class WeightCounts:
    """Zero counts of every weight written, collected while the output is written."""

    entries: list[WeightEntry]
    zeros: dict[str, int] = field(default_factory=dict)


def _counting(model: ModelFile, then: Callable[[WeightEntry, np.ndarray], np.ndarray] | None,
              progress: Progress | None) -> tuple[Callable, WeightCounts]:
    by_path = {e.dataset: e for e in model.entries}
    counts = WeightCounts(model.entries)
    done = [0]

    def transform(path: str, data: np.ndarray) -> np.ndarray:
        entry = by_path.get(path)
        if entry is None:
            return data
        if then is not None:
            data = then(entry, data)
        counts.zeros[entry.key] = masks.count_zeros(data)
        done[0] += 1
        if progress:
            progress(entry.key, done[0], len(by_path))
        return data

    return transform, counts


def choose_engine(engine: str, source: Path, target: Path) -> str:
    """Resolve ``auto``: the file engine unless the format changes."""
    if engine not in ENGINES:
        raise OptionError(f"engine must be one of {', '.join(ENGINES)}. Received: engine={engine!r}")
    converting = model_format(source) != model_format(target)
    if engine == "file" and converting:
        raise OptionError(
            "the file engine cannot convert between .h5 and .keras; use --engine keras or auto. "
            f"Received: {source.suffix} -> {target.suffix}"
        )
    if engine == "auto":
        return "keras" if converting else "file"
    return engine


@dataclass
class PruneOutcome:
    """Everything a report needs about one prune run."""

    engine: str
    selected: list[WeightEntry]
    results: dict[str, WeightResult]
    counts: WeightCounts
    seconds: float
    notes: list[str] = field(default_factory=list)


def prune_weights(model: ModelFile, target: Path, step: WeightPruning, level: int,
                  engine: str = "auto", unsafe: bool = False, keep_optimizer: bool = False,
                  progress: Progress | None = None) -> PruneOutcome:
    """Prune ``model``'s weights and write the result to ``target`` atomically.

    Args:
        model: the open input model (never modified).
        target: output path; its suffix picks the output format.
        step: what to prune.
        level: gzip level for the output's weights (0 = none).
        engine: ``"auto"``, ``"file"`` or ``"keras"``.
        unsafe: let the Keras engine deserialize Lambda layers.
        keep_optimizer: keep the optimizer's saved state (file engine only; the
            Keras engine loads without it).
        progress: called as ``progress(weight_key, done, total)`` while writing.

    Returns:
        A :class:`PruneOutcome`.

    Raises:
        SelectionError, OptionError, ModelFileError, UnsafeModelError.
    """
    start = time.perf_counter()
    engine = choose_engine(engine, model.path, target)
    selected = select_weights(model.entries, step.include, step.exclude)
    if engine == "file":
        pruner = WeightPruner(step, selected, model.read)
        transform, counts = _counting(model, pruner.prune, progress)
        write_model(model, target, level, transform, keep_optimizer)
        return PruneOutcome(engine, selected, pruner.results, counts, time.perf_counter() - start)
    notes = ["optimizer state is not carried by the keras engine"] if keep_optimizer else []
    return _prune_with_keras(model, target, step, level, unsafe, selected, progress, start, notes)


def keras_weight_entries(keras_model) -> list[tuple[WeightEntry, object]]:
    """List a live Keras model's weights as entries paired with their variables."""
    from prunectl.core.registry import prunable_spec_by_name

    pairs = []

    def walk(layers, order):
        for layer in layers:
            inner = getattr(layer, "layers", None)
            if inner and layer.__class__.__name__ in ("Sequential", "Functional", "Model"):
                walk(inner, order)
                continue
            class_name = layer.__class__.__name__
            for variable in layer.weights:
                spec = prunable_spec_by_name(class_name, variable.name)
                entry = WeightEntry(layer.name, class_name, variable.name, variable.path,
                                    tuple(variable.shape), np.dtype(variable.dtype).str,
                                    spec is not None and np.dtype(variable.dtype).kind == "f", len(order))
                pairs.append((entry, variable))
            order.append(layer.name)

    walk(keras_model.layers, [])
    return pairs


def _prune_with_keras(model: ModelFile, target: Path, step: WeightPruning, level: int, unsafe: bool,
                      file_selected: list[WeightEntry], progress: Progress | None,
                      start: float, notes: list[str]) -> PruneOutcome:
    from prunectl.core import keras_io

    loaded = keras_io.load_model(model, unsafe=unsafe)
    pairs = keras_weight_entries(loaded.model)
    wanted = {e.key for e in file_selected}
    selected = [e for e, _ in pairs if e.key in wanted]
    variables = {e.key: v for e, v in pairs}
    pruner = WeightPruner(step, selected, lambda e: variables[e.key].numpy())
    for entry in selected:
        variable = variables[entry.key]
        variable.assign(pruner.prune(entry, variable.numpy()))
    fd, raw_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    raw = Path(raw_name)
    try:
        keras_io.save_model(loaded.model, raw)
        with open_model_file(raw) as saved:
            transform, counts = _counting(saved, None, progress)
            write_model(saved, target, level, transform)
    finally:
        raw.unlink(missing_ok=True)
    return PruneOutcome("keras", selected, pruner.results, counts, time.perf_counter() - start,
                        notes + loaded.notes)
