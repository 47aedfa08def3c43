"""Neuron criteria: how important each unit of a group is (low scores are removed first).

Criteria are small classes registered by name in :data:`CRITERIA`. Weight criteria
(``l1``, ``l2``) score a unit by the norm of its weights in each producer of its
group. Activation criteria (``activation``, ``apoz``) score it by what the layers
after it receive on calibration data: :func:`calibrate` measures every producer's
input once, and a unit's score averages over those inputs, their positions and
their samples.

A group's score is the **mean** over its producers (weight criteria) or the layers
reading it (activation criteria), so a threshold means the same for a lone layer
and for five layers coupled by residual adds. Raw scores are not comparable across
groups (an l1 norm grows with fan-in), so a global cut ranks :func:`lamp` scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prunectl.core.registry import Registry

if TYPE_CHECKING:
    import numpy as np

    from prunectl.core.structure.graph import ChannelGraph

# numpy and the graph are imported inside the functions: the CLI builds its
# --neuron-criterion choices from this registry, and --help must stay instant.

CRITERIA: Registry[Any] = Registry("neuron criterion")


@dataclass(frozen=True)
class Stats:
    """Per-feature statistics of one layer's input over the calibration data.

    Attributes:
        mean: mean value, over samples and positions.
        mean_abs: mean absolute value.
        positive: fraction of values above zero (non-zero after a ReLU).
    """

    mean: np.ndarray
    mean_abs: np.ndarray
    positive: np.ndarray


def calibrate(graph: ChannelGraph, x: np.ndarray, batch_size: int = 256) -> dict[str, Stats]:
    """Run ``x`` through the model and measure every producer's input.

    Args:
        graph: the model's channel graph.
        x: calibration inputs.
        batch_size: rows per inference call.

    Returns:
        :class:`Stats` by producer layer name.
    """
    import numpy as np

    from prunectl.core.io.keras_io import import_keras
    from prunectl.core.structure.inner import contributions

    keras = import_keras()
    consumers = [info for info in graph.layers if info.observed is not None]
    if not consumers:
        return {key: Stats(s, s, s) for key, s in contributions(graph, x, batch_size).items()}
    probe = keras.Model(graph.inputs, [info.observed for info in consumers])
    sums = [np.zeros((3, int(info.observed.shape[-1])), dtype=np.float64) for info in consumers]
    for start in range(0, len(x), batch_size):
        outputs = probe.predict_on_batch(x[start : start + batch_size])
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for total, out in zip(sums, outputs):
            flat = np.asarray(out, dtype=np.float64).reshape(-1, out.shape[-1])
            total += (flat.sum(0), np.abs(flat).sum(0), (flat > 0).sum(0))
    stats = {}
    for info, total in zip(consumers, sums):
        # Inputs of different layers have different positions per sample.
        rows = len(x) * int(np.prod(info.observed.shape[1:-1]))
        stats[info.name] = Stats(*(total / max(rows, 1)))
    # Units inside a layer (attention heads) are measured by their contribution where the layer combines them.
    for key, score in contributions(graph, x, batch_size).items():
        stats[key] = Stats(score, score, score)
    return stats


def lamp(scores: np.ndarray) -> np.ndarray:
    """LAMP scores of one group (Lee et al. 2021): ``s_i^2 / sum(s_j^2 for s_j >= s_i)``.

    Scale-free, so groups of different fan-in and criteria of different units compare:
    a group's best unit always scores 1 and its ranking is unchanged. Ties share a score.

    Example:
        >>> lamp(np.array([1.0, 2.0, 3.0]))  # 1/14, 4/13, 9/9
        array([0.07142857, 0.30769231, 1.        ])

    Args:
        scores: one group's unit scores (>= 0).

    Returns:
        One LAMP score per unit in [0, 1]; 0 for a group whose scores are all 0.
    """
    import numpy as np

    squared = np.asarray(scores, dtype=np.float64) ** 2
    ascending = np.sort(squared)
    # tail[k] = the sum of ascending[k:], the squares of every unit ranked at or above position k
    tail = np.cumsum(ascending[::-1])[::-1]
    denominator = tail[np.searchsorted(ascending, squared, side="left")]
    return np.divide(squared, denominator, out=np.zeros_like(squared), where=denominator > 0)


class WeightNorm:
    """Norm of each unit's weights, averaged over the producers of its group; no data needed."""

    needs_data = False
    order = 1

    def get_config(self) -> dict:
        return {}

    def scores(self, graph: ChannelGraph, stats: dict[str, Stats] | None = None) -> dict[int, np.ndarray]:
        """Score every unfrozen group's units.

        Returns:
            One score per unit, by group id.
        """
        import numpy as np

        from prunectl.core.structure.inner import unit_norms
        from prunectl.core.structure.layout import segment_features

        sums: dict[int, np.ndarray] = {}
        counts: dict[int, int] = {}
        for info in graph.layers:
            for inner, gid in info.inner:
                if not graph.groups[gid].frozen:
                    sums[gid], counts[gid] = unit_norms(info, inner, graph.groups[gid].size, self.order), 1
            if info.out_layout is None or info.rule is None:
                continue
            segments = [(g, f[0]) for g, f in segment_features(info.out_layout) if not graph.groups[g].frozen]
            if not segments:
                continue
            weight, axis = info.rule.out_axes[0]
            kernel = next(v.numpy() for v in info.layer.weights if v.name == weight)
            kernel = np.moveaxis(np.abs(kernel), axis, 0).reshape(kernel.shape[axis], -1)
            norm = (kernel**self.order).sum(1) ** (1 / self.order)
            # A producer split between groups (a residual add of a concatenation) scores each part in its group.
            for gid, units in segments:
                sums[gid] = sums.get(gid, 0) + norm[units]
                counts[gid] = counts.get(gid, 0) + 1
        return {gid: sums[gid] / counts[gid] for gid in sums}


@CRITERIA.register("l1")
class L1Norm(WeightNorm):
    """Sum of absolute weights of each unit."""

    order = 1


@CRITERIA.register("l2")
class L2Norm(WeightNorm):
    """Euclidean norm of each unit's weights."""

    order = 2


class ActivationCriterion:
    """A statistic of each unit's activation where the next layers receive it; needs data."""

    needs_data = True
    statistic = "mean_abs"

    def __init__(self, batch_size: int = 256):
        self.batch_size = int(batch_size)

    def get_config(self) -> dict:
        return {"batch_size": self.batch_size}

    def scores(self, graph: ChannelGraph, stats: dict[str, Stats]) -> dict[int, np.ndarray]:
        """Score every unfrozen group's units from the statistics of :func:`calibrate`.

        Returns:
            One score per unit, by group id; a group no layer reads scores zero.
        """
        import numpy as np

        from prunectl.core.structure.inner import inner_key
        from prunectl.core.structure.layout import segment_features

        sums: dict[int, np.ndarray] = {}
        counts: dict[int, int] = {}
        for info in graph.layers:
            for inner, gid in info.inner:
                # A unit inside a layer scores its measured contribution, whatever the statistic.
                if not graph.groups[gid].frozen and inner_key(info.name, inner) in stats:
                    sums[gid], counts[gid] = stats[inner_key(info.name, inner)].mean_abs, 1
            if info.name not in stats or info.in_layout is None:
                continue
            values = getattr(stats[info.name], self.statistic)
            for gid, features in segment_features(info.in_layout):
                if graph.groups[gid].frozen:
                    continue
                sums[gid] = sums.get(gid, 0) + values[features].mean(0)
                counts[gid] = counts.get(gid, 0) + 1
        return {
            group.id: sums[group.id] / counts[group.id] if group.id in sums else np.zeros(group.size)
            for group in graph.groups
            if not group.frozen
        }


@CRITERIA.register("activation")
class MeanActivation(ActivationCriterion):
    """Mean absolute activation; a unit that stays near zero is dead."""

    statistic = "mean_abs"


@CRITERIA.register("apoz")
class NonZeroActivation(ActivationCriterion):
    """1 - APoZ (Hu et al. 2016): the fraction of activations above zero, so the units most often zero go first."""

    statistic = "positive"
