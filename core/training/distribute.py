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

from prunectl.core.errors import SetupError
from prunectl.core.registry import Registered, Registry

STRATEGIES: Registry[Any] = Registry("strategy")


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
        import tensorflow as tf

        try:
            config = json.loads(os.environ.get("TF_CONFIG", ""))
            workers = config["cluster"]["worker"]
        except (ValueError, KeyError, TypeError):
            raise SetupError(
                "the multiworker strategy needs TF_CONFIG with a cluster of workers and this task; "
                f"see the README. Received: TF_CONFIG={os.environ.get('TF_CONFIG', '')!r}"
            ) from None
        if len(workers) > 1:
            # Keras 3's fit() fails under this strategy with 2+ workers ("Attempt to convert a value
            # (PerReplica...)", keras-team/keras#20585); refuse up front rather than after loading.
            raise SetupError(
                "Keras 3 cannot fit under MultiWorkerMirroredStrategy with more than one worker "
                f"(keras-team/keras#20585). Received: {len(workers)} workers in TF_CONFIG"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()

    def get_config(self) -> dict:
        return {"name": self.registered_name}


@contextlib.contextmanager
def strategy_scope(name: str):
    """Enter the scope of the strategy registered as ``name`` and yield the strategy.

    Raises:
        OptionError: an unknown name (from the registry).
        SetupError: ``multiworker`` without a usable ``TF_CONFIG``.
    """
    from prunectl.core.io.keras_io import import_keras

    import_keras()  # silences TensorFlow before its first import
    strategy = STRATEGIES.get(name)().build()
    with strategy.scope():
        yield strategy
