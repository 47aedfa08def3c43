"""Where fine-tuning runs: one device, all local devices, or several workers.

Strategies are small classes registered by name in :data:`STRATEGIES`. Each
builds a ``tf.distribute`` strategy; the Keras engine loads the model, creates
the masks and the optimizer inside its scope, so every variable (masks
included) is mirrored on every replica.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from prunectl.core.errors import OptionError
from prunectl.core.registry import Registered, Registry

STRATEGIES: Registry[Any] = Registry("strategy")


def cluster_workers(environ=None) -> int | None:
    """How many workers ``TF_CONFIG`` lists, or None when it is unset or empty.

    Args:
        environ: the environment to read (default: ``os.environ``).

    Raises:
        OptionError: ``TF_CONFIG`` is not JSON, or not ``{"cluster": {"worker": [...]}, ...}``.
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not text.strip():
        return None
    shown = text if len(text) <= 120 else text[:117] + "..."
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise OptionError(f"TF_CONFIG is not valid JSON ({exc}). Received: TF_CONFIG={shown!r}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    workers = cluster.get("worker", []) if isinstance(cluster, dict) else None
    if not isinstance(workers, list):
        raise OptionError(
            'TF_CONFIG must be an object {"cluster": {"worker": ["host:port", ...]}, "task": {...}}. '
            f"Received: TF_CONFIG={shown!r}"
        )
    return len(workers)


def check_cluster(strategy: str, environ=None) -> None:
    """Refuse, before TensorFlow is imported, a fine-tuning run that could only fail on a cluster.

    Keras 3's ``fit()`` fails under MultiWorkerMirroredStrategy with more than one worker
    ("Attempt to convert a value (PerReplica...)", keras-team/keras#20585), after the model
    is loaded; and TensorFlow reads ``TF_CONFIG`` whatever the strategy, so a cluster of
    workers is refused with any strategy, and ``multiworker`` needs ``TF_CONFIG``.

    Args:
        strategy: the strategy's name in :data:`STRATEGIES`.
        environ: the environment to read (default: ``os.environ``).

    Raises:
        OptionError: ``TF_CONFIG`` malformed, listing two or more workers, or missing under ``multiworker``.
    """
    workers = cluster_workers(environ)
    if workers is not None and workers > 1:
        raise OptionError(
            f"TF_CONFIG lists {workers} workers; prunectl fine-tunes on one worker until multi-worker training "
            "lands (Keras 3 cannot fit under MultiWorkerMirroredStrategy with more than one worker, "
            "keras-team/keras#20585): unset TF_CONFIG (and use {strategy} mirrored for the devices of one machine). "
            f"Received: TF_CONFIG with {workers} workers",
            "strategy",
        )
    if strategy == "multiworker" and not workers:
        raise OptionError(
            "{strategy} multiworker needs TF_CONFIG naming a cluster of workers and this task; see the README. "
            f"Received: TF_CONFIG={(environ if environ is not None else os.environ).get('TF_CONFIG', '')!r}",
            "strategy",
        )


@STRATEGIES.register("default")
class DefaultStrategy(Registered):
    """TensorFlow's default: one device (the first GPU if there is one, else the CPU)."""

    def build(self):
        import tensorflow as tf

        return tf.distribute.get_strategy()

    def get_config(self) -> dict:
        return {"name": self.registered_name}


@STRATEGIES.register("mirrored")
class Mirrored(Registered):
    """Synchronous data parallelism over every local GPU, or every logical CPU device where there is no GPU."""

    def build(self):
        import tensorflow as tf

        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])

    def get_config(self) -> dict:
        return {"name": self.registered_name}


@STRATEGIES.register("multiworker")
class MultiWorker(Registered):
    """Synchronous data parallelism over the workers that ``TF_CONFIG`` names (every worker runs the same command)."""

    def build(self):
        check_cluster(self.registered_name)  # also where a library caller skipped PruneRequest's check
        import tensorflow as tf

        return tf.distribute.MultiWorkerMirroredStrategy()

    def get_config(self) -> dict:
        return {"name": self.registered_name}


@contextlib.contextmanager
def strategy_scope(name: str):
    """Enter the scope of the strategy registered as ``name`` and yield the strategy.

    Raises:
        OptionError: an unknown name (from the registry).
        OptionError: a ``TF_CONFIG`` that :func:`check_cluster` refuses.
    """
    from prunectl.core.io.keras_io import import_keras

    import_keras()  # silences TensorFlow before its first import
    strategy = STRATEGIES.get(name)().build()
    with strategy.scope():
        yield strategy
