"""Knowledge distillation while fine-tuning: the pruned student learns from the dense model it came from.

The loss is ``(1 - alpha) * task + alpha * term``. For a classifier (a
cross-entropy loss) the term is ``T**2 * KL(teacher_T || student_T)`` between
the outputs softened by the temperature ``T`` (Hinton et al. 2015; the ``T**2``
keeps the gradients' scale independent of ``T``); for any other loss it is the
mean squared error to the teacher's outputs. The teacher is frozen.

prunectl's training loop (:mod:`prunectl.core.training.loop`) adds the term to
the student's task loss on each replica; the teacher's variables are never
trained, so masks, schedules and strategies work as without distillation, and
the saved model is the student alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prunectl.core.errors import OptionError

# Probabilities are clipped before their log: far below Keras's 1e-7, whose flat region would stop the
# gradient of every class the student already rules out, and those are what a softened target teaches.
_EPSILON = 1e-30


@dataclass(frozen=True)
class DistillTerm:
    """What the distillation term compares.

    Attributes:
        kind: ``softmax`` (categorical cross-entropy), ``sigmoid`` (binary
            cross-entropy) or ``mse`` (any other loss: a regressor).
        from_logits: whether the model's outputs are logits (else probabilities).
    """

    kind: str
    from_logits: bool = False


def distill_term(loss) -> DistillTerm:
    """How to distil a model compiled with ``loss`` (a name, a Keras loss object or a loss function)."""
    config: dict[str, Any] = {}
    if isinstance(loss, str):
        name = loss
    else:
        name = getattr(loss, "name", None) or getattr(loss, "__name__", "") or type(loss).__name__
        config = loss.get_config() if hasattr(loss, "get_config") else {}
    name = name.lower().replace("_", "")
    from_logits = bool(config.get("from_logits", False))
    if name.endswith("categoricalcrossentropy") or name in ("categoricalfocalcrossentropy",):
        return DistillTerm("softmax", from_logits)
    if name.endswith("binarycrossentropy") or name == "binaryfocalcrossentropy":
        return DistillTerm("sigmoid", from_logits)
    return DistillTerm("mse")


def soft_loss(ops, student, teacher, term: DistillTerm, temperature: float):
    """The distillation term for one batch (a scalar), without ``alpha``.

    Args:
        ops: ``keras.ops``.
        student, teacher: the two models' outputs for the same batch.
        term: what to compare (see :func:`distill_term`).
        temperature: ``T`` (> 0); unused by ``mse``.
    """
    if term.kind == "mse":
        return ops.mean(ops.square(student - teacher))
    t = float(temperature)
    if term.kind == "softmax":
        if not term.from_logits:
            # p^(1/T), normalized, is softmax(log(p) / T): soften probabilities through their logs.
            student = ops.log(ops.clip(student, _EPSILON, 1.0))
            teacher = ops.log(ops.clip(teacher, _EPSILON, 1.0))
        target = ops.softmax(teacher / t, axis=-1)
        log_target = ops.log_softmax(teacher / t, axis=-1)
        kl = ops.sum(target * (log_target - ops.log_softmax(student / t, axis=-1)), axis=-1)
        return t * t * ops.mean(kl)
    if not term.from_logits:
        student, teacher = _logit(ops, student), _logit(ops, teacher)
    target = ops.sigmoid(teacher / t)
    # KL between two Bernoulli distributions, per output unit, through log-sigmoids for stability.
    log_s, log_not_s = ops.log_sigmoid(student / t), ops.log_sigmoid(-student / t)
    log_t, log_not_t = ops.log_sigmoid(teacher / t), ops.log_sigmoid(-teacher / t)
    kl = target * (log_t - log_s) + (1 - target) * (log_not_t - log_not_s)
    return t * t * ops.mean(kl)


@dataclass(frozen=True)
class Distillation:
    """Distillation from a frozen teacher: the loss ``(1 - alpha) * task + alpha * term``.

    Attributes:
        teacher: the model before pruning, same inputs and outputs, not trainable.
        alpha: the term's weight in (0, 1] (0 trains exactly as without distillation).
        temperature: the softening temperature (> 0).
        term: what the term compares (see :func:`distill_term`).
    """

    teacher: Any
    alpha: float
    temperature: float
    term: DistillTerm

    def loss(self, ops, task, x, y_pred):
        """The distilled loss of one batch, given its task loss and the student's outputs."""
        if not self.alpha:
            return task
        target = ops.stop_gradient(self.teacher(x, training=False))
        return (1.0 - self.alpha) * task + self.alpha * soft_loss(ops, y_pred, target, self.term, self.temperature)


def distillation(student, teacher, alpha: float, temperature: float) -> Distillation:
    """Distil ``student`` (compiled) from ``teacher``, which is frozen here.

    Args:
        student: the compiled model being fine-tuned; its loss decides the term.
        teacher: the model before pruning, same inputs and outputs.
        alpha: the distillation term's weight in [0, 1].
        temperature: the softening temperature (> 0).

    Raises:
        OptionError: a model with more than one output.
    """
    if len(student.outputs) != 1:
        raise OptionError(
            "{distill} needs a model with one output. "
            f"Received: a model with {len(student.outputs)} outputs and {{distill}} {alpha}",
            "distill",
        )
    teacher.trainable = False
    return Distillation(teacher, float(alpha), float(temperature), distill_term(student.loss))


def _logit(ops, p):
    # 1 - 1e-30 is 1 in float32: a sigmoid output's logit needs a representable margin on both sides.
    p = ops.clip(p, 1e-7, 1 - 1e-7)
    return ops.log(p) - ops.log(1 - p)
