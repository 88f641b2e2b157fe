"""`Distribution`: where a run computes (its `tf.distribute` strategy), and logical CPU devices.

`--strategy` picks TensorFlow's own engine: `default` (no strategy: one device, the
`--device` one, or whatever strategy scope the caller entered), `one_device`, `mirrored`
(synchronous data parallelism over the devices of one machine), `multi_worker` (the same
over several machines, described by the TF_CONFIG environment variable) or `tpu`.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from charrnn.errors import CharRNNError
from charrnn.nn.devices import resolve_device
from charrnn.training.callbacks import Callback
from charrnn.training.watchdog import ClusterWatchdog
from charrnn.validate import check_tf_config

# What a collective op raises when a peer worker died or became unreachable.
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
               tf.errors.DeadlineExceededError, tf.errors.InternalError)


class Distribution:
    """Where a run computes, and what follows from it: the strategy, the device of
    single-device work (evaluation, sampling), the replicas, whether this process writes
    the run's files, which signals stop it, and how its batches and failures are handled.

    The one place that knows which strategy is which; built once per trainer.
    """

    def __init__(self, *, strategy: str = "default", device: str = "auto", devices: str | None = None,
                 tpu: str | None = None, cluster_timeout: float = 300.0, num_cpu_devices: int | None = None,
                 batch_size: int = 1):
        """`strategy` is one of config.STRATEGIES; `device` places `default`; `devices` (a
        comma-separated list) picks a strategy's devices; `batch_size` is the global batch,
        which must divide among the replicas. See TrainConfig for the rest."""
        if num_cpu_devices is not None:
            configure_cpu_devices(num_cpu_devices)
        self.name = strategy
        self.multi_worker = strategy == "multi_worker"
        # With `default`: no strategy of ours, the caller's scope if any, else one device.
        self.own_strategy = strategy != "default"
        self.strategy, self.device = _make_strategy(strategy, device, devices, tpu, cluster_timeout)
        self.num_replicas = self.strategy.num_replicas_in_sync
        if batch_size % self.num_replicas:
            raise CharRNNError(f"--batch_size={batch_size} is the global batch and must divide evenly among "
                               f"the strategy's {self.num_replicas} replicas; use a multiple of {self.num_replicas}")

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run's files: always, except on non-chief workers."""
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if resolver is None or not resolver.task_type or resolver.task_type == "chief":
            return True
        # Without a "chief" task, worker 0 is the chief (as in TensorFlow's multi-worker guide).
        return (resolver.task_type == "worker" and resolver.task_id == 0
                and "chief" not in resolver.cluster_spec().as_dict())

    def where(self) -> str:
        """Where the run computes, in words: its strategy and replicas, or its device."""
        return f"strategy {self.name}, {self.num_replicas} replicas" if self.own_strategy else f"device {self.device}"

    def placement(self) -> contextlib.AbstractContextManager:
        """The device scope for the default strategy; other strategies place ops themselves."""
        return contextlib.nullcontext() if self.own_strategy else tf.device(self.device)

    def distribute(self, batches: tf.data.Dataset) -> Any:
        """Global batches as the strategy consumes them: split among the replicas (and,
        across workers, sharded by data)."""
        if not self.own_strategy:
            return batches
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return self.strategy.experimental_distribute_dataset(batches.with_options(options))

    def stop_signals(self) -> tuple[int, ...]:
        """The signals that stop training with a checkpoint: under multi_worker, SIGTERM belongs
        to TensorFlow's preemption handler (see preemption_observer)."""
        return (signal.SIGINT,) if self.multi_worker else (signal.SIGTERM, signal.SIGINT)

    def preemption_observer(self, manager: tf.train.CheckpointManager, exit_fn: Callable[[], None]) -> Callback | None:
        """Under multi_worker, the observer through which a worker that gets SIGTERM (a
        preempted machine) tells the others; all of them save a checkpoint at the same step,
        then `exit_fn` runs (it ends the run). None under other strategies."""
        if not self.multi_worker:
            return None
        return _PreemptionCheckpoint(tf.distribute.experimental.PreemptionCheckpointHandler(
            self.strategy.cluster_resolver, manager,
            termination_config=tf.distribute.experimental.TerminationConfig(exit_fn=exit_fn, grace_period=0)))

    def lost_worker(self, error: BaseException) -> bool:
        """Whether `error` means that a worker of the cluster died or became unreachable."""
        return self.multi_worker and isinstance(error, PEER_ERRORS)


class _PreemptionCheckpoint(Callback):
    def __init__(self, handler: tf.distribute.experimental.PreemptionCheckpointHandler):
        self.handler = handler

    def on_chunk_end(self, step: int, logs: dict[str, float]) -> None:
        # After the other observers (it is the last): a preemption ends the run here.
        self.handler.save_checkpoint_if_preempted(checkpoint_number=step)


def first_line(error: BaseException) -> str:
    """The first line of a TensorFlow error's message, shortened."""
    lines = (getattr(error, "message", "") or str(error) or type(error).__name__).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


def configure_cpu_devices(count: int) -> None:
    """Splits the host CPU into `count` logical devices, to run `mirrored` without GPUs.

    Must happen before TensorFlow initialises its devices (its first op or device query).
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        current = len(tf.config.list_logical_devices("CPU"))
        if current != count:
            raise CharRNNError(f"--num_cpu_devices={count}: TensorFlow already runs with {current} CPU device(s); "
                               "it can only be set before TensorFlow starts (use it in a fresh process)") from None


def _make_strategy(name: str, device: str, devices: str | None, tpu: str | None,
                   cluster_timeout: float) -> tuple[tf.distribute.Strategy, str]:
    """The strategy `name` (one of config.STRATEGIES) and the device of single-device work
    (evaluation, sampling): `device` under `default`, else the first of the strategy's."""
    if name == "default":  # no strategy of ours: the caller's scope if any, else one device
        return tf.distribute.get_strategy(), resolve_device(device)
    strategy = _own_strategy(name, devices, tpu, cluster_timeout)
    return strategy, strategy.extended.worker_devices[0]


def _own_strategy(name: str, devices: str | None, tpu: str | None, cluster_timeout: float) -> tf.distribute.Strategy:
    """The strategy `name` but `default`; `devices` is a comma-separated device list.

    `multi_worker` waits for every worker of TF_CONFIG, at most `cluster_timeout` seconds.
    """
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(resolve_device(devices or "auto"))
    if name == "mirrored":
        if devices:
            names = [resolve_device(d) for d in devices.split(",") if d.strip()]
        else:  # every GPU, else every (logical) CPU device
            logical = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
            names = [d.name for d in logical]
        return tf.distribute.MirroredStrategy(names)
    if name == "multi_worker":
        check_tf_config(os.environ.get("TF_CONFIG"))
        with ClusterWatchdog(cluster_timeout):
            return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            return tf.distribute.TPUStrategy(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as e:
            where = f"at {tpu}" if tpu else "on this machine"
            raise CharRNNError(f"--strategy=tpu: no TPU found {where} ({str(e).strip().splitlines()[0][:150]}); "
                               "run on a TPU VM, pass --tpu=<address>, or pick another --strategy") from None
    raise ValueError(f"unknown strategy {name!r}")  # TrainConfig admits only STRATEGIES

