"""Pruning schedules: which sparsity the masks are recomputed to at which training step.

A schedule is a small class registered by name in :data:`SCHEDULES`. Called
with a step (0-based, counted over the whole fine-tuning run), it returns the
sparsity to prune to before that step, or ``None`` when the masks stay as they
are. Schedules are built for a known number of steps (:meth:`for_run`), so the
last update always falls inside the run: a short run ends exactly at the final
sparsity instead of skipping its last update.
"""

from __future__ import annotations

import math
from typing import Any

from prunectl.core.errors import OptionError
from prunectl.core.options import check_number, validate_sparsity
from prunectl.core.registry import Registered, Registry

SCHEDULES: Registry[Any] = Registry("schedule")
# Mask updates a polynomial schedule makes over its pruning window (fewer when the window is shorter).
DEFAULT_UPDATES = 20


@SCHEDULES.register("oneshot")
class OneShot(Registered):
    """Prune to the final sparsity before the first step; the masks never change after.

    Args:
        final_sparsity: the target sparsity.
    """

    def __init__(self, final_sparsity: float):
        self.final_sparsity = validate_sparsity(final_sparsity)

    @classmethod
    def for_run(cls, final_sparsity: float, total_steps: int, **window) -> OneShot:
        """The schedule for any run: one shot has no window, so ``total_steps`` and ``window`` are unused."""
        return cls(final_sparsity)

    def __call__(self, step: int) -> float | None:
        return self.final_sparsity if step == 0 else None

    def get_config(self) -> dict:
        return {"name": self.registered_name, "final_sparsity": self.final_sparsity}


@SCHEDULES.register("polynomial")
class PolynomialDecay(Registered):
    """Gradual magnitude pruning (Zhu & Gupta 2017) along a polynomial (cubic) curve.

    ``s(t) = s_f + (s_i - s_f) * (1 - (t - begin) / (end - begin)) ** power`` for
    ``begin <= t <= end``; the masks are recomputed every ``frequency`` steps from
    ``begin`` and always at ``end``, where ``s(end) = s_f`` exactly.

    Args:
        final_sparsity: ``s_f``, reached at ``end_step``.
        initial_sparsity: ``s_i``, applied at ``begin_step``.
        begin_step: first step that prunes.
        end_step: last step that prunes.
        frequency: steps between mask updates.
        power: the curve's exponent (3 in the paper).

    Raises:
        OptionError: a sparsity outside [0, 1), ``initial > final``, steps out of order
            or a frequency below 1.

    Example:
        >>> schedule = PolynomialDecay(0.8, begin_step=0, end_step=10, frequency=5)
        >>> [None if s is None else round(s, 6) for s in map(schedule, (0, 5, 7, 10, 11))]
        [0.0, 0.7, None, 0.8, None]
    """

    def __init__(
        self,
        final_sparsity: float,
        initial_sparsity: float = 0.0,
        begin_step: int = 0,
        end_step: int = 0,
        frequency: int = 1,
        power: float = 3.0,
    ):
        self.final_sparsity = validate_sparsity(final_sparsity)
        self.initial_sparsity = validate_sparsity(initial_sparsity, "initial_sparsity")
        if self.initial_sparsity > self.final_sparsity:
            raise OptionError(
                "{initial_sparsity} must not exceed the final {sparsity}. "
                f"Received: {{initial_sparsity}}={initial_sparsity}, {{sparsity}}={final_sparsity}",
                "initial_sparsity",
                "sparsity",
            )
        if not 0 <= begin_step <= end_step or frequency < 1:
            raise OptionError(
                "schedule steps need 0 <= begin_step <= end_step and frequency >= 1. "
                f"Received: begin_step={begin_step}, end_step={end_step}, frequency={frequency}"
            )
        self.begin_step, self.end_step, self.frequency = int(begin_step), int(end_step), int(frequency)
        self.power = float(power)

    @classmethod
    def for_run(
        cls,
        final_sparsity: float,
        total_steps: int,
        initial_sparsity: float = 0.0,
        begin: float = 0.0,
        end: float = 0.5,
        updates: int = DEFAULT_UPDATES,
    ) -> PolynomialDecay:
        """The schedule for a run of ``total_steps`` steps, its window given as fractions of the run.

        Args:
            final_sparsity: the target sparsity.
            total_steps: the real number of training steps of the run (at least 1).
            initial_sparsity: the sparsity at the window's start.
            begin: where pruning starts, as a fraction of the run.
            end: where it reaches ``final_sparsity``; the rest of the run recovers accuracy.
            updates: how many mask updates to spread over the window.

        Raises:
            OptionError: ``begin``/``end`` outside [0, 1] or ``begin > end``.
        """
        begin, end = check_number(begin, "prune_begin", 0, 1), check_number(end, "prune_end", 0, 1)
        if begin > end:
            raise OptionError(
                "{prune_begin} must not exceed {prune_end}. "
                f"Received: {{prune_begin}}={begin}, {{prune_end}}={end}",
                "prune_begin",
                "prune_end",
            )
        last = max(0, int(total_steps) - 1)
        begin_step, end_step = round(begin * last), round(end * last)
        frequency = max(1, math.ceil((end_step - begin_step) / max(1, updates)))
        return cls(final_sparsity, initial_sparsity, begin_step, end_step, frequency)

    def sparsity(self, step: int) -> float:
        """The curve's value at ``step`` (``s_i`` before the window, ``s_f`` after it)."""
        span = self.end_step - self.begin_step
        progress = 1.0 if span == 0 else min(1.0, max(0.0, (step - self.begin_step) / span))
        value = self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - progress) ** self.power
        return self.final_sparsity if progress == 1.0 else value

    def __call__(self, step: int) -> float | None:
        if not self.begin_step <= step <= self.end_step:
            return None
        if step == self.end_step or (step - self.begin_step) % self.frequency == 0:
            return self.sparsity(step)
        return None

    def get_config(self) -> dict:
        return {
            "name": self.registered_name,
            "final_sparsity": self.final_sparsity,
            "initial_sparsity": self.initial_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
            "power": self.power,
        }


LR_SCHEDULES: Registry[Any] = Registry("learning-rate schedule")


class LearningRateSchedule(Registered):
    """The learning rate at each fine-tuning step: a decay curve times a linear warm-up.

    The warm-up restarts at every step in ``restarts`` (step 0, where one-shot
    pruning happened, and optionally each mask update): right after a pruning
    step the gradients of the surviving weights are large and Adam's moment
    estimates are stale, so a full-size first update overshoots.

    Args:
        base: the optimizer's learning rate (the peak).
        total_steps: the run's training steps (at least 1).
        warmup_steps: steps of linear warm-up after each restart (0: none).
        restarts: steps where a warm-up starts.
    """

    def __init__(self, base: float, total_steps: int, warmup_steps: int = 0, restarts: tuple[int, ...] = (0,)):
        self.base = check_number(base, "learning_rate", 0, low_open=True)
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = int(check_number(warmup_steps, "warmup_steps", 0, integer=True))
        self.restarts = tuple(sorted({int(r) for r in restarts}))

    def decay(self, step: int) -> float:
        """The curve's factor in [0, 1] at ``step`` (1: the base rate)."""
        return 1.0

    def warmup(self, step: int) -> float:
        """The warm-up factor in (0, 1] at ``step``: ``(step - r + 1) / warmup_steps`` after the last restart ``r``."""
        started = [r for r in self.restarts if r <= step]
        if not self.warmup_steps or not started:
            return 1.0
        return min(1.0, (step - started[-1] + 1) / self.warmup_steps)

    def __call__(self, step: int) -> float:
        return self.base * self.decay(step) * self.warmup(step)

    def get_config(self) -> dict:
        return {
            "name": self.registered_name,
            "base": self.base,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "restarts": list(self.restarts),
        }


@LR_SCHEDULES.register("constant")
class ConstantRate(LearningRateSchedule):
    """The base rate throughout (after any warm-up)."""


@LR_SCHEDULES.register("cosine")
class CosineDecay(LearningRateSchedule):
    """Cosine decay from the base rate towards 0 over the run: ``base * (1 + cos(pi * step / total_steps)) / 2``.

    Example:
        >>> schedule = CosineDecay(1e-3, total_steps=100)
        >>> [round(schedule(s), 6) for s in (0, 50, 99)]
        [0.001, 0.0005, 0.0]
    """

    def decay(self, step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))
