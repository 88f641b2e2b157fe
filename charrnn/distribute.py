"""Distribution: the `tf.distribute` strategy a run trains under, and logical CPU devices.

`--strategy` picks TensorFlow's own engine: `default` (no strategy: one device, the
`--device` one, or whatever strategy scope the caller entered), `one_device`, `mirrored`
(synchronous data parallelism over the devices of one machine), `multi_worker` (the same
over several machines, described by the TF_CONFIG environment variable) or `tpu`.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from charrnn.config import STRATEGIES
from charrnn.devices import resolve_device
from charrnn.errors import CharRNNError


# What a collective op raises when a peer worker died or became unreachable.
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
               tf.errors.DeadlineExceededError, tf.errors.InternalError)


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


def make_strategy(name: str, devices: str | None = None, tpu: str | None = None) -> tf.distribute.Strategy:
    """The strategy `name` (one of STRATEGIES); `devices` is a comma-separated device list."""
    if name == "default":
        return tf.distribute.get_strategy()
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
        if "TF_CONFIG" not in os.environ:
            raise CharRNNError("--strategy=multi_worker needs the TF_CONFIG environment variable describing the "
                               "cluster and this worker's task (see the README)")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except ValueError as e:
            raise CharRNNError(f"TF_CONFIG is not valid JSON ({e})") from None
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
    raise CharRNNError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: always, except on non-chief workers."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    # Without a "chief" task, worker 0 is the chief (as in TensorFlow's multi-worker guide).
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()
