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
from prunectl.core.weights.catalog import (
    Axes,
    WeightCounts,
    file_layer_configs,
    input_axes,
    keras_weight_entries,
    needs_config,
    tag_prunable,
)
from prunectl.core.weights.patterns import Pattern, pattern_fits, pattern_mask
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
        if self.pattern is not None:
            self._check_pattern(self.pattern)
        elif (self.threshold is None) == (self.sparsity is None):
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

    def _check_pattern(self, pattern: Pattern) -> None:
        """The rules a pattern adds: N:M sets the sparsity itself; blocks take one of threshold and sparsity."""
        option = "pattern" if pattern.kind == "nm" else "block"
        given = f"{{{option}}} {pattern.label}"
        if pattern.kind == "nm":
            for name in ("sparsity", "threshold"):
                if getattr(self, name) is not None:
                    raise OptionError(
                        f"an N:M pattern sets the sparsity ({pattern.a}/{pattern.b}); give no {{{name}}} with "
                        f"{{pattern}}. Received: {given} {{{name}}} {getattr(self, name)}",
                        "pattern",
                        name,
                    )
            if self.layers:
                raise OptionError(
                    "an N:M pattern sets every layer's sparsity, so a layer override cannot change it "
                    f"(exclude the layer to leave it whole). Received: {given} with layer override "
                    f"{self.layers[0][0]!r}",
                    "pattern",
                )
        elif (self.threshold is None) == (self.sparsity is None):
            raise OptionError(
                "{block} zeroes whole blocks up to a sparsity or below a mean magnitude: give exactly one of "
                f"{{sparsity}} and {{threshold}}. Received: {given} {{sparsity}} {self.sparsity} "
                f"{{threshold}} {self.threshold}",
                "block",
                "sparsity",
                "threshold",
            )
        if self.scope == "global":
            raise OptionError(
                "{scope} global ranks single weights across tensors, but a pattern prunes each tensor by its own "
                f"groups or blocks; use {{scope}} layer. Received: {{scope}} global {given}",
                "scope",
                option,
            )

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
    """What pruning did to one weight tensor.

    Attributes:
        pattern: the sparsity pattern the tensor now holds (``"2:4"``, ``"1x4"``), or None.
        left: why a tensor that the step selected could not hold the pattern and was left as it was.
    """

    key: str
    zeros_before: int
    zeros_after: int
    threshold: float
    pattern: str | None = None
    left: str | None = None


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
        axes: a weight's input axes, or None and why they are unknown (see
            :func:`~prunectl.core.weights.catalog.input_axes`); needed with a pattern.

    Raises:
        SelectionError: a layer override that matches no selected layer, or a pattern that no
            selected weight can hold.
    """

    def __init__(
        self,
        step: WeightPruning,
        entries: Sequence[WeightEntry],
        read: Callable[[WeightEntry], np.ndarray],
        others: Sequence[WeightEntry] = (),
        axes: Callable[[WeightEntry], Axes] | None = None,
    ):
        self.step = step
        self.entries = {e.key: e for e in entries}
        self.results: dict[str, WeightResult] = {}
        self._axes: dict[str, Axes] = {}
        if step.pattern is not None:
            self._axes = {e.key: _fitting(step.pattern, e, axes) for e in entries}
            if entries and all(reason for _, reason in self._axes.values()):
                shown = "; ".join(f"{key}: {reason}" for key, (_, reason) in list(self._axes.items())[:3])
                more = len(self._axes) - 3
                raise SelectionError(
                    f"no selected weight can hold the {step.pattern.label} pattern, so there is nothing to prune. "
                    f"Received: {shown}{f' (and {more} more)' if more > 0 else ''}"
                )
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
        if step.pattern is not None:
            axes, reason = self._axes[entry.key]
            if reason is not None or axes is None:
                self.results[entry.key] = WeightResult(entry.key, before, before, 0.0, left=reason)
                return tensor
            # Block and N:M masks come from the scores; a tensor's kept weights keep their values.
            mask = pattern_mask(np.abs(tensor), step.pattern, axes, sparsity, threshold)
            used = float(np.abs(tensor[mask]).max()) if mask.any() else 0.0
            tensor[mask] = 0
            self.results[entry.key] = WeightResult(
                entry.key, before, masks.count_zeros(tensor), used, pattern=step.pattern.label
            )
            return tensor
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


def _fitting(pattern: Pattern, entry: WeightEntry, axes: Callable[[WeightEntry], Axes] | None) -> Axes:
    """``entry``'s input axes where it can hold ``pattern``, else None and why not."""
    found, reason = axes(entry) if axes is not None else input_axes(entry, None)
    if found is None:
        return None, reason
    reason = pattern_fits(pattern, entry.shape, found)
    return (None, reason) if reason else (found, None)


def keras_only_layers(model: ModelFile, step: WeightPruning) -> list[str]:
    """The layers whose selected weights need Keras to place ``step``'s pattern, in model order.

    A nested EinsumDense (inside a MultiHeadAttention or a keras_hub block) sums over the
    axes its equation names, and a saved file holds only the owner's config, not the
    sub-layer's: the file engine cannot group its weights; the keras engine can.
    """
    if step.pattern is None:
        return []
    configs = file_layer_configs(model)
    entries = [e for e in tag_prunable(model.entries) if e.prunable]
    selected = select_weights(entries, step.include, step.exclude) if entries else []
    blind = [e.layer for e in selected if configs.get(e.key) is None and needs_config(e)]
    return list(dict.fromkeys(blind))


def prune_file(
    model: ModelFile,
    target: Path,
    step: WeightPruning,
    compression: str,
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
    configs = file_layer_configs(model)
    pruner = WeightPruner(
        step,
        selected,
        lambda entry: model.read(entry, reuse=True),
        counts.entries,
        lambda entry: input_axes(entry, configs.get(entry.key)),
    )
    write_model(model, target, compression, counts.counting(pruner.prune), keep_optimizer, progress)
    return pruner.results, counts


def prune_keras_model(keras_model, step: WeightPruning) -> dict[str, WeightResult]:
    """Prune a live Keras model's variables in place (the Keras engine).

    Raises:
        SelectionError, OptionError.
    """
    configs: dict[str, dict | None] = {}
    pairs = keras_weight_entries(keras_model, configs)
    selected = select_weights([e for e, _ in pairs], step.include, step.exclude)
    variables = {e.key: v for e, v in pairs}
    pruner = WeightPruner(
        step,
        selected,
        lambda e: variables[e.key].numpy(),
        [e for e, _ in pairs],
        lambda e: input_axes(e, configs.get(e.key)),
    )
    for entry in selected:
        variable = variables[entry.key]
        variable.assign(pruner.prune(entry, variable.numpy()))
    return pruner.results
