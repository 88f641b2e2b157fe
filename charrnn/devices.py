"""Device placement: turns a `--device` value into a TensorFlow device name that exists here."""

from __future__ import annotations

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
    wanted = device.strip().lstrip("/").upper().replace("DEVICE:", "")
    for d in logical:
        short = d.name.upper().split("DEVICE:")[-1]
        if wanted in (short, d.name.upper().lstrip("/")):
            return d.name
    names = ", ".join(d.name.split("device:")[-1] for d in logical)
    raise CharRNNError(f"--device {device!r} is not a device of this machine; use auto or one of: {names}")
