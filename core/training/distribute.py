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

from prunectl.core.errors import ClusterError, OptionError, first_line
from prunectl.core.registry import Registered, Registry
from prunectl.core.training.defaults import DEFAULT_WORKER_TIMEOUT

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


def _config(environ=None) -> dict | None:
    """``TF_CONFIG`` parsed, or None when it is unset or empty (its shape is checked by :func:`cluster_workers`)."""
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    return json.loads(text) if text.strip() else None


def _task(config: dict) -> tuple[str, int]:
    """The task ``config`` names for this process, as ``(type, index)``."""
    task = config.get("task") or {}
    return str(task.get("type", "worker")), int(task.get("index", 0))


def is_chief(environ=None) -> bool:
    """Whether this process writes the outputs: the cluster's leader (see :func:`_leader`), or no cluster at all."""
    config = _config(environ)
    return config is None or _task(config) == _leader(config.get("cluster") or {})


def task_name(environ=None) -> str:
    """This process's task as ``worker 1 of 2`` (``the chief of 3`` where the cluster names one)."""
    config = _config(environ)
    if config is None:
        return "the only worker"
    kind, index = _task(config)
    size = sum(len(v) for v in (config.get("cluster") or {}).values() if isinstance(v, list))
    return f"{kind} {index} of {size}" if kind != "chief" else f"the chief of {size}"


def check_cluster(strategy: str, environ=None) -> None:
    """Refuse, before TensorFlow is imported, a strategy that does not fit ``TF_CONFIG``.

    ``multiworker`` needs ``TF_CONFIG`` naming a cluster and this process's task;
    a cluster of two or more workers under another strategy would train one
    independent model per process, so it is refused too (``--strategy multiworker``
    is what was meant, or ``TF_CONFIG`` was left set).

    Args:
        strategy: the strategy's name in :data:`STRATEGIES`.
        environ: the environment to read (default: ``os.environ``).

    Raises:
        OptionError: ``TF_CONFIG`` malformed, missing under ``multiworker``, naming no task of the cluster,
            or listing two or more workers under another strategy.
    """
    environ = os.environ if environ is None else environ
    workers = cluster_workers(environ)
    if workers is not None and workers > 1 and strategy != "multiworker":
        raise OptionError(
            f"TF_CONFIG lists {workers} workers, but {{strategy}} is {strategy}: each process would train a "
            "model of its own. Give {strategy} multiworker to train together, or unset TF_CONFIG. "
            f"Received: TF_CONFIG with {workers} workers and {{strategy}} {strategy}",
            "strategy",
        )
    if strategy != "multiworker":
        return
    if not workers:
        raise OptionError(
            "{strategy} multiworker needs TF_CONFIG naming a cluster of workers and this task; see the README. "
            f"Received: TF_CONFIG={environ.get('TF_CONFIG', '')!r}",
            "strategy",
        )
    config = json.loads(environ["TF_CONFIG"])
    task = config.get("task")
    cluster = config["cluster"]
    kind = task.get("type") if isinstance(task, dict) else None
    index = task.get("index", 0) if isinstance(task, dict) else None
    members = cluster.get(kind) if isinstance(kind, str) else None
    if not isinstance(members, list) or not isinstance(index, int) or not 0 <= index < len(members):
        shown = json.dumps(task) if task is not None else "no task"
        raise OptionError(
            'TF_CONFIG\'s "task" must name this process in the cluster, e.g. {"type": "worker", "index": 0}. '
            f"Received: {shown} for a cluster with {', '.join(f'{len(v)} {k!r} tasks' for k, v in cluster.items())}",
            "strategy",
        )


def tf_strategy():
    """The ``tf.distribute`` strategy whose scope is active (TensorFlow's default one outside any)."""
    import tensorflow as tf

    return tf.distribute.get_strategy()


def strategy_section(name: str, strategy) -> dict:
    """The report's account of where fine-tuning ran."""
    section = {"name": name, "replicas": int(strategy.num_replicas_in_sync)}
    if name == "multiworker":
        section.update(task=task_name(), chief=is_chief(), workers=cluster_workers())
    return section


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
    """Synchronous data parallelism over the workers that ``TF_CONFIG`` names (every worker runs the same command).

    Args:
        worker_timeout: seconds to wait for the other workers to start, and for
            one that stops answering (TensorFlow's coordination-service heartbeat,
            at most :data:`HEARTBEAT_SECONDS`, within which a worker that dies or hangs is noticed).
    """

    def __init__(self, worker_timeout: float = DEFAULT_WORKER_TIMEOUT):
        self.worker_timeout = float(worker_timeout)

    def build(self):
        check_cluster(self.registered_name)  # also where a library caller skipped PruneRequest's check
        import tensorflow as tf

        config = json.loads(os.environ["TF_CONFIG"])
        cluster, leader = config["cluster"], _leader(config["cluster"])
        if _task(config) == leader:
            # The leader's strategy waits an hour, holding the interpreter, for a worker that never starts:
            # it starts only once every other worker is listening (each listens from its own start).
            _wait_for_peers(cluster, leader, self.worker_timeout)
        _configure_coordination(cluster, leader, self.worker_timeout)
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as exc:
            raise ClusterError(
                f"{task_name()} could not join the cluster: its leader, {leader[0]} {leader[1]} "
                f"({_address(cluster, leader)}), did not answer within {self.worker_timeout:g} s; run the same "
                "command on every task that TF_CONFIG lists, or raise --worker-timeout. "
                f"Received: {type(exc).__name__}: {_short(exc)}"
            ) from None

    def get_config(self) -> dict:
        return {"name": self.registered_name, "worker_timeout": self.worker_timeout}


# A worker that stops answering (hung, or its machine gone) is declared lost after this long at most.
HEARTBEAT_SECONDS = 10.0


def _leader(cluster: dict) -> tuple[str, int]:
    """The task that leads TensorFlow's coordination service and writes the outputs: the chief, else worker 0."""
    return ("chief", 0) if cluster.get("chief") else ("worker", 0)


def _address(cluster: dict, task: tuple[str, int]) -> str:
    return str(cluster[task[0]][task[1]])


def _wait_for_peers(cluster: dict, me: tuple[str, int], timeout: float) -> None:
    """Wait until every other task of ``cluster`` accepts a connection on its port.

    Raises:
        ClusterError: one did not within ``timeout`` seconds.
    """
    import socket
    import time

    deadline = time.monotonic() + timeout
    for kind, members in cluster.items():
        for index, address in enumerate(members):
            if (kind, index) == me:
                continue
            host, _, port = str(address).rpartition(":")
            while True:
                try:
                    socket.create_connection((host, int(port)), timeout=1).close()
                    break
                except (OSError, ValueError):
                    if time.monotonic() > deadline:
                        raise ClusterError(
                            f"{kind} {index} of the cluster ({address}) did not start within {timeout:g} s; "
                            "run the same command on every task that TF_CONFIG lists, or raise --worker-timeout. "
                            f"Received: TF_CONFIG naming {address}"
                        ) from None
                    time.sleep(0.2)


def _configure_coordination(cluster: dict, leader: tuple[str, int], timeout: float) -> None:
    """Bound TensorFlow's waits: registering with the leader, and a worker's silence while training."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=f"/job:{leader[0]}/replica:0/task:{leader[1]}",
        heartbeat_timeout_in_ms=int(1000 * min(timeout, HEARTBEAT_SECONDS)),
        cluster_register_timeout_in_ms=int(1000 * timeout),
        coordinated_jobs=[
            coordination_config_pb2.CoordinatedJob(name=kind, num_tasks=len(members))
            for kind, members in cluster.items()
            if isinstance(members, list) and members
        ],
    )


@contextlib.contextmanager
def cluster_errors(stage: str):
    """Turn TensorFlow's errors for a lost or absent worker into one :class:`ClusterError`.

    Outside a multi-worker run (no ``TF_CONFIG`` cluster) nothing is translated.
    """
    import tensorflow as tf

    lost = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError)
    try:
        yield
    except lost as exc:
        if not cluster_workers():
            raise
        raise ClusterError(
            f"{task_name()} lost contact with the other workers while {stage} (one stopped or cannot be "
            f"reached); nothing was written. Received: {type(exc).__name__}: {_short(exc)}"
        ) from None


def _short(exc: BaseException) -> str:
    """TensorFlow's message for ``exc`` on one line, shortened: what failed, without the graph's call stack."""
    lines = [line.strip() for line in str(exc).splitlines()]
    noise = ("Graph execution error", "Detected at node", "File ", "[[")
    kept = [line for line in lines if line and not line.startswith(noise)]
    detail = " ".join(" ".join(kept[:2]).split()) or first_line(exc)
    return detail if len(detail) <= 200 else detail[:197] + "..."


@contextlib.contextmanager
def strategy_scope(name: str, worker_timeout: float | None = None):
    """Enter the scope of the strategy registered as ``name`` and yield the strategy.

    Args:
        name: a name in :data:`STRATEGIES`.
        worker_timeout: the multi-worker strategy's wait for the other workers (default: its own).

    Raises:
        OptionError: an unknown name (from the registry).
        OptionError: a ``TF_CONFIG`` that :func:`check_cluster` refuses.
        ClusterError: the workers of a multi-worker run did not start together.
    """
    from prunectl.core.io.keras_io import import_keras

    import_keras()  # silences TensorFlow before its first import
    kind = STRATEGIES.get(name)
    waits = name == "multiworker" and worker_timeout is not None
    strategy = (kind(worker_timeout) if waits else kind()).build()
    with strategy.scope(), cluster_errors("fine-tuning"):
        yield strategy
