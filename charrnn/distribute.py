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
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from charrnn.callbacks import Callback
from charrnn.config import TrainConfig
from charrnn.devices import resolve_device
from charrnn.errors import CharRNNError
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

    def __init__(self, config: TrainConfig):
        if config.num_cpu_devices is not None:
            configure_cpu_devices(config.num_cpu_devices)
        self.name = config.strategy
        self.multi_worker = config.strategy == "multi_worker"
        # With `default`: no strategy of ours, the caller's scope if any, else one device.
        self.own_strategy = config.strategy != "default"
        if self.own_strategy:
            self.strategy = _make_strategy(config.strategy, config.devices, config.tpu, config.cluster_timeout)
            # Evaluation and sampling run on one device: the first of the strategy's.
            self.device = self.strategy.extended.worker_devices[0]
        else:
            self.strategy = tf.distribute.get_strategy()
            self.device = resolve_device(config.device)
        self.num_replicas = self.strategy.num_replicas_in_sync
        if config.batch_size % self.num_replicas:
            raise CharRNNError(f"--batch_size={config.batch_size} is the global batch and must divide evenly among "
                               f"the strategy's {self.num_replicas} replicas; use a multiple of {self.num_replicas}")
        self.is_chief = _is_chief(self.strategy)

    def describe(self) -> str:
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


def describe(error: tf.errors.OpError) -> str:
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


def _make_strategy(name: str, devices: str | None = None, tpu: str | None = None,
                  cluster_timeout: float = 300.0) -> tf.distribute.Strategy:
    """The strategy `name` (one of config.STRATEGIES but `default`, which is no strategy of
    ours: see Distribution); `devices` is a comma-separated device list.

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
        with _Watchdog(cluster_timeout):
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


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: always, except on non-chief workers."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    # Without a "chief" task, worker 0 is the chief (as in TensorFlow's multi-worker guide).
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


# Run by _Watchdog in a process of its own: TensorFlow waits for the other workers inside
# one C++ call that holds the GIL and catches SIGTERM itself, so nothing in this process
# can act while it waits. Ctrl-C (SIGINT to the process group), SIGTERM to the process group
# and the timeout reach the watchdog, which prints one line and kills the waiting process.
_WATCHDOG = """
import os, select, signal, sys
pid, timeout = int(sys.argv[1]), float(sys.argv[2])
def stop(line):
    print("charrnn: " + line, file=sys.stderr, flush=True)
    os.kill(pid, signal.SIGKILL)
    os._exit(0)
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda signum, frame: stop(f"stopped by {signal.Signals(signum).name} while waiting for the "
                  "other workers; nothing was trained; run the same command again on every worker"))
if not select.select([sys.stdin], [], [], timeout)[0]:
    stop(f"error: not every worker of TF_CONFIG came up within {timeout:g} s (--cluster_timeout); start every "
         "worker with the same TF_CONFIG, then run the same command again")
"""


class _Watchdog:
    """While active, ends this process if the cluster is not up within `timeout` seconds
    or if Ctrl-C or a SIGTERM to the process group comes (see _WATCHDOG)."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> _Watchdog:
        self._process = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.timeout)],
                                         stdin=subprocess.PIPE)
        return self

    def __exit__(self, *exc: object) -> None:
        process = self._process
        assert process is not None and process.stdin is not None  # __enter__ started it
        process.stdin.close()  # end of input: the watchdog exits
        process.wait()
