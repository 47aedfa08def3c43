"""Fine-tuning defaults chosen by measurement (no heavy imports: the CLI's help shows them).

The table behind each value: ``benchmarks/finetune_sweep.py``, results in
``benchmarks/RESULTS-finetune-sweep.md``.
"""

# Weight of the distillation term for a classifier when --distill is not given (other losses: 0).
DEFAULT_DISTILL = 0.0
DEFAULT_TEMPERATURE = 2.0
DEFAULT_LR_SCHEDULE = "constant"
# Without --learning-rate, fine-tune at this multiple of the model's own rate.
DEFAULT_LR_SCALE = 3.0
# Fraction of the run's steps of linear learning-rate warm-up after the pruning at step 0.
DEFAULT_WARMUP = 0.0
# Whether the warm-up restarts after every mask update of a gradual schedule (not only at step 0).
WARMUP_AFTER_UPDATES = False

# How long a multi-worker run waits for the other workers, at start and at every collective, before it stops
# with an error: long enough for a cluster's processes to start minutes apart, short of an idle night.
DEFAULT_WORKER_TIMEOUT = 300.0
