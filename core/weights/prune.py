"""Weight (unstructured) magnitude pruning of a saved model, through either engine.

:func:`prune_file` (the ``file`` engine) reads weights with h5py and writes the
pruned file directly; it never imports TensorFlow and holds one tensor in memory
at a time. :func:`prune_keras_model` (the ``keras`` engine) prunes a live Keras
model's variables; it is needed to change format and by steps that run the
model. Both use the same :class:`WeightPruner`, so they produce the same weights.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunectl.core.errors import OptionError, SelectionError
from prunectl.core.io.modelfile import ModelFile, WeightEntry
from prunectl.core.io.writer import Progress, write_model
from prunectl.core.options import SCOPES, compile_patterns, validate_sparsity, validate_threshold
from prunectl.core.weights import masks
from prunectl.core.weights.catalog import WeightCounts, keras_weight_entries
from prunectl.core.weights.patterns import Pattern
from prunectl.core.weights.selection import select_weights, shown_layers


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
        layers: per-layer overrides, ``(regex, threshold, sparsity)`` with one of
            the two set: the first pattern found in a layer's name gives that
            layer its own threshold or (layer-scope) sparsity; with global scope
            the shared cut runs over the other layers only.
        pattern: where the zeros may go (N:M groups or blocks, see
            :mod:`prunectl.core.weights.patterns`); None: anywhere.
        criterion: how weights are scored: ``"magnitude"`` (``|w|``, no data) or a
            data-aware criterion that reads calibration data.
        calibration_samples: how many calibration inputs a data-aware criterion reads
            (None: its default).

    Raises:
        OptionError: on a missing, conflicting or out-of-range value.
    """

    threshold: float | None = None
    sparsity: float | None = None
    scope: str = "layer"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    layers: tuple[tuple[str, float | None, float | None], ...] = ()
    pattern: Pattern | None = None
    criterion: str = "magnitude"
    calibration_samples: int | None = None

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
        if self.calibration_samples is not None and self.calibration_samples < 1:
            raise OptionError(
                f"calibration samples must be at least 1. Received: calibration_samples={self.calibration_samples}"
            )
        if self.scope not in SCOPES:
            raise OptionError(f"scope must be one of {', '.join(SCOPES)}. Received: scope={self.scope!r}")
        for pattern, threshold, sparsity in self.layers:
            compile_patterns([pattern], "a layer override")
            if (threshold is None) == (sparsity is None):
                raise OptionError(
                    f"a layer override gives exactly one of threshold and sparsity. "
                    f"Received: {pattern!r}: threshold={threshold}, sparsity={sparsity}"
                )
            validate_threshold(threshold) if threshold is not None else validate_sparsity(sparsity)

    def override_for(self, layer: str) -> tuple[float | None, float | None] | None:
        """The ``(threshold, sparsity)`` override for ``layer``, or None."""
        for pattern, threshold, sparsity in self.layers:
            if re.search(pattern, layer):
                return threshold, sparsity
        return None

    def get_config(self) -> dict:
        """The step keyed by the prune command's option names (``weight_criterion``, ``pattern``, ``block``)."""
        skip = ("layers", "pattern", "criterion", "calibration_samples")
        config = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k not in skip}
        config["weight_criterion"] = self.criterion
        if self.calibration_samples is not None:
            config["calibration_samples"] = self.calibration_samples
        nm = self.pattern is not None and self.pattern.kind == "nm"
        config["pattern"] = self.pattern.label if nm and self.pattern else None
        config["block"] = self.pattern.label if self.pattern is not None and not nm else None
        config["layers"] = {p: ({"threshold": t} if t is not None else {"sparsity": s}) for p, t, s in self.layers}
        return config

    @classmethod
    def from_config(cls, config: dict) -> WeightPruning:
        """The step :meth:`get_config` describes.

        Raises:
            OptionError: as the constructor, or both a ``pattern`` and a ``block``.
        """
        skip = ("layers", "pattern", "block", "weight_criterion")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k not in skip}
        layers = tuple((p, o.get("threshold"), o.get("sparsity")) for p, o in (config.get("layers") or {}).items())
        return cls(
            **values,
            layers=layers,
            pattern=pattern_of(config.get("pattern"), config.get("block")),
            criterion=config.get("weight_criterion") or "magnitude",
        )


def pattern_of(nm: str | None, block: str | None) -> Pattern | None:
    """The pattern that ``--pattern N:M`` or ``--block RxC`` gives, or None for neither.

    Raises:
        OptionError: both given, or a malformed one.
    """
    if nm and block:
        raise OptionError(
            f"give only one of {{pattern}} and {{block}}. Received: {{pattern}} {nm} {{block}} {block}",
            "pattern",
            "block",
        )
    if nm:
        return Pattern.parse_nm(nm)
    return Pattern.parse_block(block) if block else None


@dataclass(frozen=True)
class WeightResult:
    """What pruning did to one weight tensor."""

    key: str
    zeros_before: int
    zeros_after: int
    threshold: float


def _layers(selected: Sequence[WeightEntry], others: Sequence[WeightEntry]) -> str:
    """The layers a per-layer override could name: the selected prunable ones, then the model's others."""
    chosen = list(dict.fromkeys(e.layer for e in selected))
    rest = [name for name in dict.fromkeys(e.layer for e in others) if name not in chosen]
    listed = f"selected prunable layers: {shown_layers(chosen)}"
    return listed + (f"; other layers: {shown_layers(rest)}" if rest else "")


class WeightPruner:
    """Applies a :class:`WeightPruning` to the tensors of ``entries``.

    For global sparsity the cut is found up front by reading the tensors through
    ``read`` (twice, tensor by tensor), and its ties are allotted in entry order,
    so the result does not depend on the order tensors are later pruned in.

    Args:
        step: the pruning step.
        entries: the selected weights, in model order.
        read: returns a weight's current values.
        others: the model's other weights, whose layers an error lists after the selected ones.
    """

    def __init__(
        self,
        step: WeightPruning,
        entries: Sequence[WeightEntry],
        read: Callable[[WeightEntry], np.ndarray],
        others: Sequence[WeightEntry] = (),
    ):
        self.step = step
        self.entries = {e.key: e for e in entries}
        self.results: dict[str, WeightResult] = {}
        self._cut: masks.Cut | None = None
        self._ties: dict[str, int] = {}
        self._overrides = {e.key: step.override_for(e.layer) for e in entries}
        for pattern, _, _ in step.layers:
            if not any(re.search(pattern, e.layer) for e in entries):
                raise SelectionError(
                    f"layer override pattern matches no selected prunable layer ({_layers(entries, others)}). "
                    f"Received: {pattern!r}"
                )
        entries = [e for e in entries if self._overrides[e.key] is None]
        if step.sparsity is not None and step.scope == "global" and entries:
            dtypes = {np.dtype(e.dtype) for e in entries}
            if len(dtypes) > 1:
                raise OptionError(
                    f"global scope needs all selected weights in one dtype. Received: {sorted(str(d) for d in dtypes)}"
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
        step, override = self.step, self._overrides[entry.key]
        threshold, sparsity = override or (step.threshold, step.sparsity)
        if threshold is not None:
            masks.apply_threshold(tensor, threshold)
            used = threshold
        elif step.scope == "global" and override is None:
            used = 0.0
            if self._cut is not None:
                masks.apply_cut(tensor, self._cut, self._ties[entry.key])
                used = self._cut.magnitude
        else:
            assert sparsity is not None  # WeightPruning holds exactly one of threshold and sparsity
            cut = masks.prune_to_sparsity([tensor], sparsity)
            used = cut.magnitude if cut else 0.0
        self.results[entry.key] = WeightResult(entry.key, before, masks.count_zeros(tensor), used)
        return tensor


def prune_file(
    model: ModelFile,
    target: Path,
    step: WeightPruning,
    level: int,
    keep_optimizer: bool = False,
    progress: Progress | None = None,
) -> tuple[dict[str, WeightResult], WeightCounts]:
    """The file engine: prune ``model``'s weights while writing them to ``target``.

    Reads one tensor at a time with h5py, never imports TensorFlow.

    Returns:
        Per-weight results and the zero counts of everything written.

    Raises:
        SelectionError, OptionError, ModelFileError.
    """
    counts = WeightCounts.of(model)
    selected = select_weights(counts.entries, step.include, step.exclude)
    pruner = WeightPruner(step, selected, lambda entry: model.read(entry, reuse=True), counts.entries)
    write_model(model, target, level, counts.counting(pruner.prune), keep_optimizer, progress)
    return pruner.results, counts


def prune_keras_model(keras_model, step: WeightPruning) -> dict[str, WeightResult]:
    """Prune a live Keras model's variables in place (the Keras engine).

    Raises:
        SelectionError, OptionError.
    """
    pairs = keras_weight_entries(keras_model)
    selected = select_weights([e for e, _ in pairs], step.include, step.exclude)
    variables = {e.key: v for e, v in pairs}
    pruner = WeightPruner(step, selected, lambda e: variables[e.key].numpy(), [e for e, _ in pairs])
    for entry in selected:
        variable = variables[entry.key]
        variable.assign(pruner.prune(entry, variable.numpy()))
    return pruner.results
