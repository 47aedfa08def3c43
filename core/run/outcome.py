"""What one prune run produced, as read by the report: shared by ``job`` and ``report``."""

from __future__ import annotations

from dataclasses import dataclass, field

from prunectl.core.training.evaluation import Evaluation
from prunectl.core.weights.catalog import WeightCounts
from prunectl.core.weights.prune import WeightResult


@dataclass
class PruneOutcome:
    """Everything a report needs about one prune run."""

    engine: str
    results: dict[str, WeightResult]
    counts: WeightCounts
    seconds: float
    notes: list[str] = field(default_factory=list)
    finetune: dict | None = None
    structural: dict | None = None
    benchmark: dict | None = None
    evaluation: Evaluation | None = None
    weight_criterion: dict | None = None  # a data-aware criterion's calibration and per-layer output errors
    steps: list[dict] | None = None  # each step's outcome, in order, when the pipeline has more than one
    search: dict | None = None  # how a --target search chose the steps
    fold: dict | None = None  # the BatchNormalization layers --fold-batchnorm folded, and how far outputs moved
