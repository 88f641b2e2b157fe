"""Device placement: turns a `--device` value into a TensorFlow device name that exists here,
and picks the precision the hardware computes fastest without losing accuracy (`auto`)."""

from __future__ import annotations

import functools

import tensorflow as tf

from charrnn.errors import CharRNNError


def resolve_device(device: str) -> str:
    """`auto` gives the first GPU, else the CPU; any other value must name a local device.

    Accepts short (`/GPU:1`, `gpu:1`) and full (`/job:localhost/replica:0/task:0/device:GPU:1`)
    names; returns the full logical device name.
    """
    logical = tf.config.list_logical_devices()
    if device == "auto":
        gpus = [d for d in logical if d.device_type == "GPU"]
        return (gpus or [d for d in logical if d.device_type == "CPU"])[0].name
    # This process's own job prefix (a strategy's device names carry it) names a local device.
    wanted = device.strip().upper().replace("/JOB:LOCALHOST/REPLICA:0/TASK:0", "").lstrip("/").replace("DEVICE:", "")
    for d in logical:
        short = d.name.upper().split("DEVICE:")[-1]
        if wanted in (short, d.name.upper().lstrip("/").replace("DEVICE:", "")):
            return d.name
    names = ", ".join(d.name.split("device:")[-1] for d in logical)
    raise CharRNNError(f"--device {device!r} is not a device of this machine; use auto or one of: {names}")


def choose_precision(device: str, tpu: bool = False) -> tuple[str, str]:
    """The precision policy `--mixed_precision=auto` picks for `device` (a resolved name), and why.

    bfloat16 where the hardware multiplies it natively (TPUs; CPUs with AVX512_BF16 or AMX),
    float16 with loss scaling on GPUs with tensor cores (compute capability 7.0 or more),
    float32 elsewhere. On the CPU preset, bfloat16 reached a lower validation loss in the
    same time than float32 (benchmarks/RESULTS.md).
    """
    if tpu:
        return "mixed_bfloat16", "a TPU multiplies bfloat16 natively"
    if ":GPU:" in device.upper():
        index = int(device.rsplit(":", 1)[-1])
        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[index])
        capability = details.get("compute_capability")
        if capability and tuple(capability) >= (7, 0):
            return "mixed_float16", (f"a GPU of compute capability {capability[0]}.{capability[1]} has "
                                     "float16 tensor cores")
        return "float32", "a GPU without float16 tensor cores (compute capability below 7.0)"
    native = {"avx512_bf16", "amx_bf16"} & cpu_flags()
    if native:
        return "mixed_bfloat16", f"this CPU multiplies bfloat16 natively ({', '.join(sorted(native))})"
    return "float32", "this CPU has no native bfloat16 (no avx512_bf16 or amx_bf16)"


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere: float32 is then chosen)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()
